"""``vqpipe eval``: SRCC / KRCC / PLCC of a quality table against MOS, and a report."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vqpipe.cli.options import RAW, add_mos_root, add_storage_options, storage_options
from vqpipe.errors import UserError

EPILOG = """\
examples:
  vqpipe eval ./quality --mos mos.csv --out report/
  vqpipe eval ./quality --mos mos.parquet --out report/ --by dataset --by media_type
  vqpipe eval preds.parquet --mos s3://lake/mos.csv --out report/ --bootstrap 1000 \\
      --storage-options '{"anon": true}'
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "eval",
        help="SRCC/KRCC/PLCC of a quality table against MOS + report",
        description="Correlate a quality table with MOS: SRCC, KRCC, PLCC (after a monotone "
        "logistic fit) with bootstrap intervals, per group, with plots and report.md.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument(
        "predictions", help="quality table: a job's output dir or a Parquet/CSV file"
    )
    parser.add_argument(
        "--mos", required=True, help="MOS table (uri or path) with uri, mos[, dataset] columns"
    )
    parser.add_argument("--out", required=True, help="report directory")
    add_mos_root(parser)
    parser.add_argument(
        "--by",
        action="append",
        metavar="COLUMN",
        help="group by a column of the MOS or quality table; repeat or comma-separate for "
        "several (default: dataset)",
    )
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        help="resamples for 95%% intervals (default: %(default)s)",
    )
    add_storage_options(parser)
    parser.set_defaults(func=_cmd_eval)


def _cmd_eval(args: argparse.Namespace) -> int:
    from vqpipe.eval.inputs import check_report_dir, read_input
    from vqpipe.eval.report import format_value, write_report
    from vqpipe.rewards.fuse import fuse_record

    storage = storage_options(args.storage_options)
    check_report_dir(args.out)
    pred = read_input(args.predictions, "the quality table", storage)
    mos = read_input(args.mos, "--mos", storage)
    try:
        record = write_report(
            pred,
            mos,
            args.out,
            by=args.by or "dataset",
            bootstrap=args.bootstrap,
            mos_root=args.mos_root,
            fused=fuse_record(args.predictions, storage),
        )
    except ValueError as exc:  # a missing column, no match: one line, not a traceback
        raise UserError(f"eval: {exc}") from None
    for warning in record["warnings"]:
        print(f"vqpipe eval: warning: {warning}", file=sys.stderr)
    for row in record["metrics"]:
        flag = f"  ⚠ {row['note']}" if row["note"] else ""  # n < 10, undefined, fit fallback
        print(
            f"{row['scorer']:<16}{row['group']:<20}n={row['n']:<6}"
            f"SRCC {format_value(row['srcc'])}  KRCC {format_value(row['krcc'])}  "
            f"PLCC {format_value(row['plcc'])}{flag}"
        )
    join = record["join"]
    print(
        f"matched {join['matched']}, {join['missing_predictions']} MOS rows without prediction, "
        f"{join['without_mos']} predictions without MOS → {args.out}/report.md"
    )
    rules = record["matched_by"] or {}
    by = ", ".join(f"{n} by {rule}" for rule, n in rules.items() if n)
    ambiguous = record["ambiguous_basenames"]
    if by and (join["missing_predictions"] or ambiguous or rules.get("uri") != join["matched"]):
        extra = f"; {ambiguous} MOS keys with a file name held by several rows" * bool(ambiguous)
        print(f"matched {by}{extra}")
    return 0
