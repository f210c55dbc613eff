"""``vqpipe scorers``: the registered scorers, or one scorer's ``--scorer`` keys."""

from __future__ import annotations

import argparse
from typing import Any

from vqpipe.cli.options import RAW

EPILOG = """\
examples:
  vqpipe scorers                                 # one row per scorer
  vqpipe scorers gamma                           # gamma's --scorer keys and their defaults
"""


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "scorers",
        help="list the registered scorers, or one scorer's options",
        description="List the registered scorers (name, media, score range, default "
        "checkpoint), or the --scorer keys of one with their defaults.",
        epilog=EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument(
        "name", nargs="?", default=None, help="a scorer: list its options (default: list all)"
    )
    parser.set_defaults(func=_cmd_scorers)


def _cmd_scorers(args: argparse.Namespace) -> int:
    from vqpipe.catalog import format_scorer, format_table

    print(format_scorer(args.name) if args.name else format_table())
    return 0
