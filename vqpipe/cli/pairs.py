"""``vqpipe pairs``: (chosen, rejected) preference pairs within groups of a quality table."""

from __future__ import annotations

import argparse
from typing import Any

from vqpipe.cli.options import RAW, add_ray_arguments, add_seed, add_table, storage_options
from vqpipe.cli.runtime import on_ray

EPILOG = """\
examples:
  vqpipe pairs ./quality --group prompt_id --score gamma_score --out ./pairs/
  vqpipe pairs s3://lake/quality/ --group prompt_id --score qalign_score --strategy all \\
      --margin 0.25 --max-pairs-per-group 8 --seed 1 --carry prompt --out s3://lake/pairs/

Within a group, rows are ranked by --score (ties by uri); a pair is made only when
score_chosen - score_rejected > --margin (the default 0 skips exact ties). Rows with an error,
a NULL score or a NULL group are left out and counted. Output: a Parquet dataset directory
(part-*.parquet) with group, uri_chosen, uri_rejected, score_chosen, score_rejected, margin and
<col>_chosen, <col>_rejected for each --carry column; _pairs.json holds options and counts.
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "pairs",
        help="(chosen, rejected) preference pairs within groups of a quality table",
        description="Make preference pairs within each group of a quality table (or any "
        "Parquet file / dataset) by a score column, as a distributed group-by on Ray Data.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    add_table(parser)
    parser.add_argument("--group", required=True, help="the group column, e.g. a prompt id")
    parser.add_argument("--score", required=True, help="the score column, e.g. gamma_score")
    parser.add_argument("--out", required=True, help="output Parquet dataset directory or URI")
    parser.add_argument(
        "--strategy",
        choices=("best-worst", "all", "adjacent"),
        default="best-worst",
        help="best-worst: the top row against the bottom one; all: every pair; adjacent: each "
        "row against the nearest lower row that passes --margin (default: %(default)s)",
    )
    parser.add_argument(
        "--margin",
        type=float,
        default=0.0,
        help="make a pair only when score_chosen - score_rejected > MARGIN (default: 0: "
        "ties are skipped)",
    )
    parser.add_argument(
        "--max-pairs-per-group",
        type=int,
        default=None,
        metavar="N",
        help="keep N pairs per group drawn at random (default: all of them)",
    )
    add_seed(parser, "seed of --max-pairs-per-group (default: 0)")
    parser.add_argument(
        "--carry",
        action="append",
        metavar="COLUMN",
        help="a column to carry as COLUMN_chosen / COLUMN_rejected, repeatable (default: none)",
    )
    add_ray_arguments(parser)
    parser.set_defaults(func=_cmd_pairs)


def _cmd_pairs(args: argparse.Namespace) -> int:
    from vqpipe.rewards.pairs import PairOptions, PairsJob

    options = PairOptions(
        group=args.group,
        score=args.score,
        strategy=args.strategy,
        margin=args.margin,
        max_pairs_per_group=args.max_pairs_per_group,
        seed=args.seed,
        carry=list(dict.fromkeys(args.carry or [])),
    )
    job = PairsJob(args.table, args.out, options, storage_options(args.storage_options))
    result = on_ray(args, "pairs", job.run, out=args.out)
    print(
        f"{result['pairs']} pairs from {result['rows']} rows → {result['out']} "
        f"(left out: {result['error_rows']} error rows, {result['null_scores']} NULL scores, "
        f"{result['null_groups']} NULL groups)"
    )
    return 0
