"""``vqpipe bench``: run the scripts of benchmarks/ into bench.json and bench.md."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from vqpipe.cli.options import RAW

EPILOG = """\
examples:
  vqpipe bench --quick                           # every script of benchmarks/, small settings
  vqpipe bench --only small_job --only pipeline --out bench/
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "bench",
        help="run benchmarks/ and write bench.json + bench.md",
        description="Run the scripts of benchmarks/ one after another and collect their "
        "figures into bench.json and a markdown table.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument(
        "--quick", action="store_true", help="the scripts' small settings (default: full size)"
    )
    parser.add_argument(
        "--only",
        action="append",
        metavar="SCRIPT",
        help="script name without .py, repeatable (default: every script)",
    )
    parser.add_argument("--dir", default=None, help="benchmarks directory (default: ./benchmarks)")
    parser.add_argument("--out", default="bench", help="output directory (default: %(default)s)")
    parser.set_defaults(func=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from vqpipe.bench import run_benchmarks, write_bench

    report = run_benchmarks(args.dir, quick=args.quick, only=args.only, progress=sys.stderr)
    _, markdown = write_bench(report, args.out)
    print(markdown.read_text())
    return 1 if any("error" in b for b in report["benchmarks"]) else 0
