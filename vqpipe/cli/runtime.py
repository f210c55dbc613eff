"""Running a command's work: Ctrl-C and SIGTERM as interrupts, Ray started and stopped."""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any

from vqpipe.cli.options import storage_options, verbosity
from vqpipe.errors import clear_interrupts, note_interrupt


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM and Ctrl-C raise :class:`Interrupted` in the main thread while the block runs,
    and are recorded, so the job's loop stops at its next step even if a library caught the
    first exception (the job keeps the SIGTERM handler over ``ray.init``'s own, see
    ``vqpipe.pipeline.job``)."""
    stdout = sys.stdout

    def handler(signum: int, frame: Any) -> None:
        if not isinstance(sys.stdout, _MainThreadOnly):
            sys.stdout = _MainThreadOnly(sys.stdout)
        note_interrupt(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    clear_interrupts()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
        clear_interrupts()
        if isinstance(sys.stdout, _MainThreadOnly):
            sys.stdout = stdout


class _MainThreadOnly:
    """``sys.stdout`` once the job is interrupted: what other threads print goes to
    ``sys.stderr`` (Ray's log file unless ``--verbose``). Ray's driver prints the raylet's
    messages about the workers the Ctrl-C killed (``(raylet) … killed``) to stdout from a
    thread of its own, whatever ``log_to_driver`` says; they are Ray's own output."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        if threading.current_thread() is threading.main_thread():
            return self._stream.write(text)
        return sys.stderr.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def shutdown_ray() -> None:
    """Stop the local Ray this command started (a Ray the caller started stays up)."""
    from vqpipe.pipeline import runner

    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized() and runner.STARTED_RAY:
        ray.shutdown()
        runner.STARTED_RAY = False


def on_ray(
    args: argparse.Namespace, command: str, work: Callable[[], Any], out: str | None = None
) -> Any:
    """Run ``work()`` on Ray (started here unless it is up, and then stopped), with Ray's own
    output kept in its log file unless ``--verbose``, and a progress line on stderr (the
    phase and the time: a heartbeat every 10 s in a log, in place on a terminal). Interrupted
    (Ctrl-C, SIGTERM), an ``out`` folder that did not exist before is removed: no half-written
    output is left."""
    from vqpipe.console import QUIET, Progress, ray_output_kept_out, terminal
    from vqpipe.pipeline.validate import check_ray_address
    from vqpipe.rewards.table import ensure_ray

    check_ray_address(args.address)
    level = verbosity(args)
    new_out = _new_folder(out, getattr(args, "storage_options", None))
    try:
        with (
            Progress(command, stream=terminal(), quiet=level <= QUIET) as progress,
            ray_output_kept_out(level, command),
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


def _new_folder(out: str | None, options: str | None) -> tuple[Any, str] | None:
    """``(filesystem, path)`` of ``out`` when nothing is there yet, else None."""
    if out is None:
        return None
    from vqpipe.io.fs import url_to_fs

    try:
        fs, root = url_to_fs(out, storage_options(options))
        return None if fs.exists(root) else (fs, root)
    except Exception:  # the job reports a bad --out itself
        return None
