"""Video decoding in a sacrificial subprocess, so that a native decoder crash costs one row.

decord segfaults on some corrupt mp4 files (about 1 in 100 randomly mutated ones); in the
decode worker itself that kills the Ray task, which Ray retries until it gives up, and every
row of the batch is lost. Here each video is decoded by a long-lived child process (started
with ``python -m vqpipe.media.isolated``, not ``multiprocessing``: spawn and forkserver would
re-import the Ray worker's ``__main__``, and forking a threaded Ray worker is unsafe). When the
child dies (a signal, the OOM killer) or does not answer within ``decode_timeout_s``, it is
killed and restarted and the same video is tried again with the backends after the one that
was running (decord → PyAV); only when none is left does the video get its error
(``decoder crashed (signal 11) in decord; …``). The other videos of the batch are unaffected:
each one is its own request.

Images are decoded in the decode worker itself: Pillow is memory-safe on the formats we open,
its work is bounded by ``--max-bytes`` and ``--max-pixels``, and a round trip to the child
would cost more than the decode itself: sending a 1 MP JPEG to a warm child and its RGB array
back took 150 ms against 44 ms for the decode in-process (3.4×, on a loaded 2-core machine;
``benchmarks/decode_isolation.py`` measures both). Videos pay a few ms per round trip and the
child's start (~1-3 s) once per decode worker process, and after each crash.
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import numpy as np
from PIL import Image

from vqpipe.media.decode import VIDEO_BACKENDS, MediaError, MediaLimits, VideoInfo, decode_video


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "no answer"
    return f"signal {-code}" if code < 0 else f"exit status {code}"


class IsolatedVideoDecoder:
    """:func:`decode_video` in a child process that is restarted whenever it dies."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def _start(self) -> Connection:
        if self._proc is not None and self._proc.poll() is None and self._conn is not None:
            return self._conn
        self.close()
        mine, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        with theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "vqpipe.media.isolated", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": path},
            )
        self._conn = Connection(mine.detach())
        return self._conn

    def close(self) -> None:
        """Stop the child (it also exits by itself when this process goes away)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            self._proc = None

    def _kill(self, hung: bool = False) -> str:
        """Stop the child after a crash (or, ``hung``, a timeout); the reason it ended."""
        proc = self._proc
        if hung and proc is not None:
            proc.kill()
        if proc is not None and proc.poll() is None:
            try:
                code = proc.wait(timeout=1.0)  # a crash: the exit status is on its way
            except subprocess.TimeoutExpired:
                proc.kill()
                code = None
        else:
            code = proc.returncode if proc is not None else None
        self.close()
        self.restarts += 1
        return _exit_reason(code)

    def decode(
        self, data: bytes, sample_fps: float = 1.0, limits: MediaLimits | None = None
    ) -> tuple[list[Image.Image], VideoInfo]:
        """Like :func:`decode_video`; a crash or a hang of a backend is a :class:`MediaError`
        only after every later backend was tried as well."""
        with self._lock:
            return self._decode(data, sample_fps, limits or MediaLimits())

    def _decode(
        self, data: bytes, sample_fps: float, limits: MediaLimits
    ) -> tuple[list[Image.Image], VideoInfo]:
        failures: list[str] = []
        backends = list(VIDEO_BACKENDS)
        timeout = limits.decode_timeout_s
        while backends:
            conn = self._start()
            running = backends[0]
            try:
                conn.send((data, sample_fps, limits, tuple(backends)))
            except OSError:
                failures.append(f"decoder crashed ({self._kill()}) in {running}")
                backends = backends[1:]
                continue
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                wait = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    ready = conn.poll(wait)
                    message = conn.recv() if ready else None
                except (EOFError, OSError):
                    failures.append(f"decoder crashed ({self._kill()}) in {running}")
                    break
                if message is None:
                    self._kill(hung=True)
                    failures.append(f"decoder timed out after {timeout:g} s in {running}")
                    break
                kind, *rest = message
                if kind == "backend":
                    running = rest[0]
                    deadline = None if timeout is None else time.monotonic() + timeout
                elif kind == "ok":
                    arrays, info = rest
                    return [Image.fromarray(a) for a in arrays], info
                else:
                    raise MediaError("; ".join([*failures, rest[0]]))
            backends = backends[backends.index(running) + 1 :]
        raise MediaError("; ".join(failures))


_DECODER: IsolatedVideoDecoder | None = None


def video_decoder() -> IsolatedVideoDecoder:
    """This process's decoder child (started on first use, stopped at exit)."""
    global _DECODER
    if _DECODER is None:
        _DECODER = IsolatedVideoDecoder()
        atexit.register(_DECODER.close)
    return _DECODER


def _serve(fd: int) -> None:
    """The child: decode requests until the parent closes the socket."""
    conn = Connection(fd)
    while True:
        try:
            data, sample_fps, limits, backends = conn.recv()
        except (EOFError, OSError):
            return
        reply: Any
        try:
            frames, info = decode_video(
                data, sample_fps, limits, backends, on_backend=lambda n: conn.send(("backend", n))
            )
            reply = ("ok", [np.asarray(f) for f in frames], info)
        except MediaError as exc:
            reply = ("error", str(exc))
        except Exception as exc:  # MemoryError and the like: still an answer, not a crash
            reply = ("error", f"cannot decode video: {type(exc).__name__}: {exc}")
        del data
        conn.send(reply)


if __name__ == "__main__":
    _serve(int(sys.argv[1]))
