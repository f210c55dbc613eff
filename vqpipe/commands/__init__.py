"""Subcommands that live in their own module (``vqpipe/cli.py`` keeps the core ones).

Each module named in :data:`COMMANDS` exposes ``add_parser(sub) -> None``: it registers one
subcommand on the ``vqpipe`` subparsers (``formatter_class=argparse.RawDescriptionHelpFormatter``,
an ``examples:`` epilog, ``set_defaults(func=handler)``). Building the parser must stay cheap:
handlers import torch, Ray and the heavy modules inside their body. A handler returns the exit
code and raises :class:`vqpipe.errors.UserError` (one line, exit 2) for a user's mistake.
"""

COMMANDS: tuple[str, ...] = ("pairs", "compare", "calibrate", "fuse", "cascade")
"""Module names under ``vqpipe.commands``, in the order ``vqpipe --help`` lists them."""
