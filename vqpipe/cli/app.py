"""The ``vqpipe`` parser, built from the command modules of :data:`COMMANDS`, and ``main``:
usage mistakes with a "did you mean", user and job errors as one line, Ctrl-C as an exit code."""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import Any, NoReturn

from vqpipe.cli.options import RAW, add_console_flags
from vqpipe.cli.runtime import sigterm_interrupts
from vqpipe.errors import JobError, UserError

COMMANDS: tuple[str, ...] = (
    "demo",
    "score",
    "filter",
    "eval",
    "train",
    "bench",
    "scorers",
    "pairs",
    "compare",
    "calibrate",
    "fuse",
    "cascade",
    "serve",
    "version",
)
"""Module names under ``vqpipe.cli``, in the order ``vqpipe --help`` lists the commands."""

MAIN_EPILOG = """\
examples:
  vqpipe demo                                    # synthetic corpus, scored and evaluated
  vqpipe score ./images --out ./quality          # Gamma (bundled demo checkpoint), local Ray
  vqpipe filter ./quality --where "gamma_score >= 0.6" --out keep.parquet
  vqpipe eval ./quality --mos mos.csv --out report/
  vqpipe pairs ./quality --group prompt_id --score gamma_score --out pairs/
  vqpipe compare pairs.parquet --scorer compare2score --out compared/
  vqpipe calibrate ./quality --mos mos.csv --out calib.json
  vqpipe fuse ./quality --calibration calib.json --out fused/
  vqpipe scorers                                 # what can score, and with which options
  vqpipe scorers gamma                           # one scorer's --scorer keys

`vqpipe COMMAND --help` shows each command's options and examples.
"""


def build_parser() -> argparse.ArgumentParser:
    """The ``vqpipe`` parser: the global flags, then each command module's ``add_parser``."""
    from vqpipe import __version__

    parser = _Parser(
        prog="vqpipe",
        description="Score the visual quality of image and video corpora on Ray.",
        epilog=MAIN_EPILOG,
        formatter_class=RAW,
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks (also VQPIPE_DEBUG=1)"
    )
    parser.add_argument("--version", action="version", version=f"vqpipe {__version__}")
    add_console_flags(parser, on_subcommand=False)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"vqpipe.cli.{name}").add_parser(sub)
    return parser


class _Parser(argparse.ArgumentParser):
    """Usage mistakes as one line (``vqpipe: error: …``), like every other user error, with a
    "did you mean" for a misspelled subcommand, choice or option."""

    def error(self, message: str) -> NoReturn:  # type: ignore[override]
        if message.startswith("the following arguments are required"):
            # argparse checks required options before it reports unknown ones: `--ouput x`
            # would read as "--out is required", so the misspelling is named first.
            unknown = self._unknown_options(self._seen)
            if unknown:
                message = self._unrecognized(unknown)
        where = self.prog.removeprefix("vqpipe").strip()
        raise UserError(f"{where + ': ' if where else ''}{message} (see {self.prog} --help)")

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._seen = list(sys.argv[1:] if args is None else args)
        namespace, extras = super().parse_known_args(self._seen, namespace)
        if extras and not self._has_subcommands():
            # a subcommand reports its own unknown options (the top-level parser only knows
            # that *some* argument was not recognized, not of which command)
            self.error(self._unrecognized(extras))
        return namespace, extras

    def _check_value(self, action: argparse.Action, value: Any) -> None:
        if action.choices is not None and value not in action.choices:
            choices = [str(c) for c in action.choices]
            hint = _did_you_mean(str(value), choices, quote=True)
            raise argparse.ArgumentError(
                action, f"invalid choice: {value!r}{hint} (choose from {', '.join(choices)})"
            )

    def _has_subcommands(self) -> bool:
        return any(isinstance(a, argparse._SubParsersAction) for a in self._actions)

    def _unknown_options(self, args: Sequence[str]) -> list[str]:
        """The option-like words of ``args`` that name none of this parser's options."""
        known = self._option_string_actions
        unknown = []
        for word in args:
            if word == "--":
                break
            if not word.startswith("-") or word == "-" or self._negative_number_matcher.match(word):
                continue
            name = word.split("=", 1)[0]
            if name in known or (not name.startswith("--") and name[:2] in known):
                continue  # an option, or short flags run together (-qv) / -xVALUE
            if name.startswith("--") and [o for o in known if o.startswith(name)]:
                continue  # an abbreviation argparse resolves (or reports as ambiguous)
            unknown.append(name)
        return unknown

    def _unrecognized(self, extras: Sequence[str]) -> str:
        options = [o for o in self._option_string_actions if o.startswith("--")]
        names = [w.split("=", 1)[0] for w in extras if w.startswith("-")] or list(extras)
        hints = "".join(_did_you_mean(n, options) for n in names if n.startswith("-"))
        return f"unrecognized arguments: {' '.join(names)}{hints}"


def _did_you_mean(word: str, candidates: Sequence[str], quote: bool = False) -> str:
    """``"; did you mean X?"`` for the closest of ``candidates`` (difflib), else ``""``."""
    bare = {c.lstrip("-"): c for c in candidates}  # "--" alone would make --bogus ~ --out
    close = difflib.get_close_matches(word.lstrip("-"), list(bare), n=1, cutoff=0.6)
    if not close:
        return ""
    best = bare[close[0]]
    return f"; did you mean {best!r}?" if quote else f"; did you mean {best}?"


def _debug(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get("VQPIPE_DEBUG", "") not in ("", "0")


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error prints one line and returns 2 (``--debug`` or
    ``VQPIPE_DEBUG=1`` show the traceback)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        args = build_parser().parse_args(argv)
        with sigterm_interrupts():
            return args.func(args)
    except KeyboardInterrupt as exc:  # a command that does not say more about it (score does)
        if debug:
            traceback.print_exc()
        print("vqpipe: interrupted", file=sys.stderr, flush=True)
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    except UserError as exc:
        if debug:
            traceback.print_exc()
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"vqpipe: error: {message}", file=sys.stderr)
        return 2
    except JobError as exc:
        if debug:
            traceback.print_exc()
        print(f"vqpipe: error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 1
