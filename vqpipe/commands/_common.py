"""What the commands share: storage options, running on Ray quietly, the media limits."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any


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


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=None, help="Ray cluster to use (default: RAY_ADDRESS, else local)"
    )
    parser.add_argument("--storage-options", help="JSON storage options for fsspec (default: none)")


def on_ray(
    args: argparse.Namespace, command: str, work: Callable[[], Any], out: str | None = None
) -> Any:
    """Run ``work()`` on Ray (started here unless it is up, and then stopped), with Ray's own
    output kept in its log file unless ``--verbose``, and a progress line on stderr (the
    phase and the time: a heartbeat every 10 s in a log, in place on a terminal). Interrupted
    (Ctrl-C, SIGTERM), an ``out`` folder that did not exist before is removed: no half-written
    output is left."""
    from vqpipe.cli import _verbosity
    from vqpipe.console import QUIET, Progress, ray_output_kept_out, terminal
    from vqpipe.pipeline.validate import check_ray_address
    from vqpipe.rewards.table import ensure_ray

    check_ray_address(args.address)
    verbosity = _verbosity(args)
    new_out = _new_folder(out, getattr(args, "storage_options", None))
    try:
        with (
            Progress(command, stream=terminal(), quiet=verbosity <= QUIET) as progress,
            ray_output_kept_out(verbosity, command),
        ):
            progress.heartbeat().step("starting Ray")
            started = ensure_ray(args.address)
            try:
                progress.step("running")
                return work()
            finally:
                if started:
                    import ray

                    ray.shutdown()
    except KeyboardInterrupt:
        if new_out is not None:
            fs, root = new_out
            with contextlib.suppress(Exception):
                if fs.exists(root):
                    fs.rm(root, recursive=True)
        raise


def _new_folder(out: str | None, storage_options: str | None) -> tuple[Any, str] | None:
    """``(filesystem, path)`` of ``out`` when nothing is there yet, else None."""
    if out is None:
        return None
    from vqpipe.cli import _storage_options
    from vqpipe.io.fs import url_to_fs

    try:
        fs, root = url_to_fs(out, _storage_options(storage_options))
        return None if fs.exists(root) else (fs, root)
    except Exception:  # the job reports a bad --out itself
        return None


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
