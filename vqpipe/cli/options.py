"""The options several commands share, each defined once, and their resolution.

``add_*`` functions add one option (or one group of options) to a command's parser; where
commands word an option's help differently (what ``--limit`` counts, what ``--no-resume``
replaces), the command passes its words and the option's name, type and default stay here.
The resolution helpers turn the parsed values into what the jobs take (``verbosity``,
``storage_options``, ``media_limits``, ``pool_defaults``, ``since``). Importing this module
stays cheap: heavy modules are imported inside the functions.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from vqpipe.errors import UserError

RAW = argparse.RawDescriptionHelpFormatter
"""Every command's ``formatter_class``: the ``examples:`` epilogs keep their line breaks."""


def add_console_flags(parser: argparse.ArgumentParser, on_subcommand: bool) -> None:
    """``-q/--quiet`` and ``-v/--verbose`` (read by :func:`verbosity`)."""
    # On a subcommand the flags default to SUPPRESS, so that `vqpipe --quiet score` is not
    # undone by the subcommand's own default.
    default = argparse.SUPPRESS if on_subcommand else False
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default,
        help="no status line or notices, only errors and the result (default: off)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default,
        help="show Ray's own logs and progress on the terminal (default: off: they go to Ray's "
        "log directory, /tmp/ray/session_latest/logs)",
    )


def verbosity(args: argparse.Namespace) -> int:
    """:data:`vqpipe.console.QUIET`, ``NORMAL`` or ``VERBOSE`` from ``-q`` / ``-v``."""
    from vqpipe.console import NORMAL, QUIET, VERBOSE

    if getattr(args, "quiet", False) and getattr(args, "verbose", False):
        raise UserError("--quiet and --verbose exclude each other")
    if getattr(args, "quiet", False):
        return QUIET
    return VERBOSE if getattr(args, "verbose", False) else NORMAL


def add_address(parser: argparse.ArgumentParser) -> None:
    """``--address``: the Ray cluster (checked by ``vqpipe.pipeline.validate``)."""
    parser.add_argument(
        "--address",
        default=None,
        help="Ray cluster to use (default: RAY_ADDRESS, else a local one; 'local' always "
        "starts a new local Ray)",
    )


def add_storage_options(parser: argparse.ArgumentParser, example: bool = False) -> None:
    """``--storage-options`` (read by :func:`storage_options`); ``example``: the help shows one."""
    text = (
        'JSON for fsspec, e.g. \'{"profile": "curation"}\' (default: none)'
        if example
        else "JSON storage options for fsspec (default: none)"
    )
    parser.add_argument("--storage-options", help=text)


def storage_options(text: str | None) -> dict[str, Any]:
    """The dict of a ``--storage-options`` JSON object (``{}`` when not given)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--storage-options is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise UserError("--storage-options must be a JSON object, e.g. '{\"anon\": true}'")
    return value


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """``--address`` and ``--storage-options``: the commands that run one Ray Data job."""
    add_address(parser)
    add_storage_options(parser)


def add_video_fps(parser: argparse.ArgumentParser) -> None:
    """``--video-fps``: frames a video is sampled at."""
    parser.add_argument(
        "--video-fps", type=float, default=1.0, help="frames sampled per second (default: 1)"
    )


def add_media_limits(parser: argparse.ArgumentParser, video: bool = True) -> None:
    """``--max-bytes``, ``--max-pixels``, ``--read-timeout`` and, for jobs that read videos,
    ``--max-frames``, ``--max-duration``, ``--decode-timeout`` (defaults: vqpipe.defaults)."""
    from vqpipe.defaults import (
        DECODE_TIMEOUT_S,
        MAX_BYTES,
        MAX_DURATION_S,
        MAX_FRAMES,
        MAX_PIXELS,
        READ_TIMEOUT_S,
    )

    media = "image or video frame" if video else "image"
    if video:
        parser.add_argument(
            "--max-frames",
            type=int,
            default=MAX_FRAMES,
            help="frames per video at most (default: %(default)s)",
        )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=MAX_BYTES,
        help=f"bytes per input file at most (default: {MAX_BYTES // 2**20} MiB)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help=f"pixels per {media} at most (default: %(default)s)",
    )
    if video:
        parser.add_argument(
            "--max-duration",
            type=float,
            default=MAX_DURATION_S,
            help=f"video seconds at most (default: {MAX_DURATION_S / 3600:g} h)",
        )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=READ_TIMEOUT_S,
        metavar="SECONDS",
        help="wall clock to read one input's bytes; past it the input is an error row "
        "(default: %(default)g)",
    )
    if video:
        parser.add_argument(
            "--decode-timeout",
            type=float,
            default=DECODE_TIMEOUT_S,
            metavar="SECONDS",
            help="wall clock per video decoder (decord, then PyAV) in its subprocess; past it "
            "the decoder is killed and the next one tried (default: %(default)g)",
        )


def media_limits(args: argparse.Namespace) -> Any:
    """The :class:`~vqpipe.media.decode.MediaLimits` of :func:`add_media_limits`' options
    (those a command does not have keep their defaults)."""
    from vqpipe.media.decode import MediaLimits

    names = {
        "max_frames": "max_frames",
        "max_bytes": "max_bytes",
        "max_pixels": "max_pixels",
        "max_duration": "max_duration_s",
        "read_timeout": "read_timeout_s",
        "decode_timeout": "decode_timeout_s",
    }
    return MediaLimits(**{f: getattr(args, a) for a, f in names.items() if hasattr(args, a)})


def add_table(parser: argparse.ArgumentParser) -> None:
    """The positional ``table`` of the commands that read a whole quality table on Ray."""
    parser.add_argument("table", help="a quality table (dir or URI) or a Parquet file/dataset")


def add_mos_root(parser: argparse.ArgumentParser) -> None:
    """``--mos-root``: what relative MOS paths are relative to (``eval``, ``calibrate``,
    ``fuse`` match MOS rows by one rule: :mod:`vqpipe.eval.matching`)."""
    parser.add_argument(
        "--mos-root",
        metavar="FOLDER",
        default=None,
        help="folder or URI prefix the MOS table's relative paths are relative to; MOS rows "
        "match by URI, then by path under this root, then by unique file name (default: none)",
    )


def add_pool_flags(
    parser: argparse.ArgumentParser, batch_size_help: str, num_gpus_help: str, actors_help: str
) -> None:
    """``--batch-size``, ``--num-gpus-per-actor``, ``--actors``: the defaults of every
    ``--scorer`` pool without its own key (read by :func:`pool_defaults`), with the command's
    help texts."""
    parser.add_argument("--batch-size", type=int, default=None, help=batch_size_help)
    parser.add_argument("--num-gpus-per-actor", type=float, default=None, help=num_gpus_help)
    parser.add_argument("--actors", metavar="N|MIN-MAX", help=actors_help)


def pool_defaults(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword defaults of ``ScorerOptions.parse`` from :func:`add_pool_flags`' options."""
    from vqpipe.pipeline.config import parse_actors

    return {
        "batch_size": args.batch_size,
        "num_gpus": args.num_gpus_per_actor,
        "actors": parse_actors(args.actors) if args.actors else None,
    }


def add_root(parser: argparse.ArgumentParser, help: str) -> None:
    """``--root``: the prefix the inputs must stay inside (``help``: what it restricts)."""
    parser.add_argument("--root", default=None, help=help)


def add_rows_per_file(parser: argparse.ArgumentParser, default: int | None, help: str) -> None:
    """``--rows-per-file``: rows per output part."""
    parser.add_argument("--rows-per-file", type=int, default=default, help=help)


def add_limit(parser: argparse.ArgumentParser, first_n: str) -> None:
    """``--limit N``; ``first_n``: what it does, e.g. ``"score the first N inputs"``."""
    parser.add_argument("--limit", type=int, default=None, help=f"{first_n} only (default: all)")


def add_no_resume(parser: argparse.ArgumentParser, does: str, default: str) -> None:
    """``--no-resume``; ``does`` and ``default``: what it does and what a rerun does without it."""
    parser.add_argument("--no-resume", action="store_true", help=f"{does} (default: {default})")


def add_progress_every(parser: argparse.ArgumentParser, in_place_note: bool = True) -> None:
    """``--progress-every SECONDS``: the status line's interval in a log."""
    note = "; on a terminal the line updates in place" if in_place_note else ""
    parser.add_argument(
        "--progress-every",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help=f"status line interval when stderr is not a terminal (default: %(default)g{note})",
    )


def add_json(parser: argparse.ArgumentParser, help: str) -> None:
    """``--json``: print the result as JSON (``help``: which result)."""
    parser.add_argument("--json", action="store_true", help=help)


def add_seed(parser: argparse.ArgumentParser, help: str, default: int = 0) -> None:
    """``--seed``: the seed of a command's random draw."""
    parser.add_argument("--seed", type=int, default=default, help=help)


def since(text: str | None) -> float | None:
    """``--since``: an ISO date or time (UTC unless it says otherwise), or POSIX seconds."""
    if not text:
        return None
    import datetime as dt

    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UserError(
            f"--since {text!r}: use an ISO date or time (2026-12-01, 2026-12-01T02:00Z)"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=dt.timezone.utc)).timestamp()
