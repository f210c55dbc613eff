"""``vqpipe version``: the vqpipe version (also ``vqpipe --version``)."""

from __future__ import annotations

import argparse
from typing import Any

from vqpipe.cli.options import RAW


def add_parser(sub: Any) -> None:
    parser = sub.add_parser(
        "version",
        help="print the vqpipe version",
        description="Print the vqpipe version (also vqpipe --version).",
        epilog="examples:\n  vqpipe version\n",
        formatter_class=RAW,
    )
    parser.set_defaults(func=_cmd_version)


def _cmd_version(args: argparse.Namespace) -> int:
    import vqpipe

    print(vqpipe.__version__)
    return 0
