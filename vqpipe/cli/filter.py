"""``vqpipe filter``: the keep list of a quality table (``--where``, ``--percentile``)."""

from __future__ import annotations

import argparse
from typing import Any

from vqpipe.cli.options import RAW, add_storage_options, storage_options

EPILOG = """\
examples:
  vqpipe filter ./quality --where "gamma_score >= 0.6" --out keep.parquet
  vqpipe filter ./quality --percentile gamma_score:80 --out ./lists/      # → ./lists/keep.parquet
  vqpipe filter ./quality --where "media_type == 'image' and width >= 512" --out keep.parquet
  vqpipe filter ./quality --normalize group-zscore --group prompt_id \
      --where "gamma_normalized > 1" --out keep.parquet     # per-prompt reward normalisation
  vqpipe filter s3://lake/quality/ --where "qalign_score > 3.5 or gamma_score.isna()" \\
      --out s3://lake/keep.parquet --storage-options '{"profile": "curation"}'

The keep list has every column of the table and its `vqpipe.job` metadata (plus
`vqpipe.filter`: source, --where, --percentile and threshold). Rows with an error are left
out; a condition on a NULL is not true, so NULL scores are never kept (`COL.isna()` selects
them explicitly).
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "filter",
        help="write the keep list of a quality table",
        description="Write the rows of a quality table that pass --where and --percentile to "
        "one Parquet file, with every column and the table's metadata.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument(
        "table", help="a quality table: the --out of vqpipe score (dir or URI), or a Parquet file"
    )
    parser.add_argument(
        "--where",
        metavar="EXPR",
        help='condition in pandas-query syntax, e.g. "gamma_score >= 0.6 and width > 512"; '
        "and/or/not, comparisons, in [...], + - * /, COL.isna(), COL.notna() (default: all "
        "rows without an error)",
    )
    parser.add_argument(
        "--percentile",
        metavar="COLUMN:P",
        help="keep rows at or above the P-th percentile of COLUMN, among the rows --where keeps "
        "(default: no percentile cut)",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="output Parquet file; an existing directory or a trailing '/' writes "
        "DIR/keep.parquet (no default)",
    )
    parser.add_argument(
        "--normalize",
        choices=("group-zscore", "group-rank"),
        default=None,
        help="add <scorer>_normalized for every <scorer>_score, per --group: z-score or rank "
        "in [0, 1] (before --where / --percentile, which may use it; default: none)",
    )
    parser.add_argument(
        "--group", metavar="COLUMN", help="the group column of --normalize (default: none)"
    )
    add_storage_options(parser)
    parser.set_defaults(func=_cmd_filter)


def _cmd_filter(args: argparse.Namespace) -> int:
    from vqpipe.pipeline.filtering import filter_table

    result = filter_table(
        args.table,
        args.out,
        where=args.where,
        percentile=args.percentile,
        storage_options=storage_options(args.storage_options),
        normalize=args.normalize,
        group=args.group,
    )
    threshold = (
        f", {args.percentile} threshold {result['threshold']:.4g}" if args.percentile else ""
    )
    failed = f", {result['failed']} failed rows left out" if result["failed"] else ""
    print(f"kept {result['kept']} of {result['rows']} rows{failed}{threshold} → {result['out']}")
    return 0
