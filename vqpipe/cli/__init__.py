"""The ``vqpipe`` command line: one module per command, the shared options in one module.

Layout:

- :mod:`vqpipe.cli.app`: the parser, ``main`` (dispatch; user errors, job errors and Ctrl-C
  as one line and an exit code) and :data:`~vqpipe.cli.app.COMMANDS`, the registry.
- :mod:`vqpipe.cli.options`: every option more than one command takes, defined once as an
  ``add_*(parser, ...)`` function, and their resolution (``verbosity``, ``storage_options``,
  ``media_limits``, ``pool_defaults``).
- :mod:`vqpipe.cli.runtime`: running a command's work (SIGTERM and Ctrl-C as interrupts,
  ``on_ray``: a Ray job started and stopped around it, ``shutdown_ray``).
- one module per command: ``demo``, ``score``, ``filter``, ``eval``, ``train``, ``bench``,
  ``scorers``, ``pairs``, ``compare``, ``calibrate``, ``fuse``, ``version``.

A command module exposes ``add_parser(sub) -> None``: it registers one subcommand on the
``vqpipe`` subparsers (``formatter_class=options.RAW``, an ``examples:`` epilog, a help text
for every option with its default, ``set_defaults(func=handler)``). It imports only
:mod:`vqpipe.cli.options`, :mod:`vqpipe.cli.runtime`, :mod:`vqpipe.errors` and the standard
library at module level: building the parser must stay cheap (``vqpipe --help`` imports no
torch, Ray or pandas), so handlers import what they run inside their body. A handler returns
the exit code and raises :class:`vqpipe.errors.UserError` (one line, exit 2) for a user's
mistake. To add a command, put its module here and its name into ``COMMANDS`` at the place
``vqpipe --help`` should list it. No command module imports ``app`` or another command.
"""

from vqpipe.cli.app import COMMANDS, build_parser, main
from vqpipe.cli.runtime import sigterm_interrupts as _sigterm_interrupts
from vqpipe.cli.score import _score_outputs, job_config_from_args

__all__ = [
    "COMMANDS",
    "_score_outputs",
    "_sigterm_interrupts",
    "build_parser",
    "job_config_from_args",
    "main",
]
