"""Reading one input's bytes with bounds: regular files only, at most ``max_bytes``, streamed
in chunks, within a wall-clock limit; transient store errors retried (``fs.is_transient``).

A FIFO named ``pipe.png`` would block ``open`` forever and a symlink to ``/dev/zero`` would be
read until memory runs out, so local inputs are opened with ``O_NONBLOCK`` and checked with
``fstat`` on the open descriptor (no race with a file swapped after a ``stat``) before a byte
is read. The size is checked before reading when it is known (listing, ``fstat``, the store's
HEAD that fsspec does on open); otherwise the read stops one chunk past the limit.
"""

from __future__ import annotations

import os
import stat
import time
from typing import Any

from vqpipe.io import fs as fsio

CHUNK = 4 * 1024 * 1024


class ReadError(OSError):
    """An input that is not read: not a regular file, too big, too slow."""


class ReadTimeoutError(ReadError, TimeoutError):
    """A read past its wall-clock limit: transient (a rerun tries again)."""


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISDIR, "directory"),
    ):
        if test(mode):
            return name
    return "special file"


def _over(size: int, max_bytes: int) -> ReadError:
    return ReadError(f"file has {size} bytes, over the --max-bytes limit of {max_bytes}")


def _read_stream(
    fh: Any, max_bytes: int | None, deadline: float | None, timeout: float | None
) -> bytes:
    chunks, total = [], 0
    while True:
        want = CHUNK if max_bytes is None else min(CHUNK, max_bytes + 1 - total)
        chunk = fh.read(want)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise ReadError(f"file has more than {max_bytes} bytes, the --max-bytes limit")
        if deadline is not None and time.monotonic() > deadline:
            raise ReadTimeoutError(f"read timed out after {timeout:g} s ({total} bytes read)")


def _read_local(
    path: str, max_bytes: int | None, deadline: float | None, timeout: float | None
) -> bytes:
    kind = os.stat(path).st_mode  # follows symlinks: a link to /dev/zero is a device
    if not stat.S_ISREG(kind):  # sockets cannot even be opened (ENXIO): say what they are
        raise ReadError(f"not a regular file ({_kind(kind)})")
    # O_NONBLOCK: a FIFO swapped in after the stat must not block open; fstat refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ReadError(f"not a regular file ({_kind(info.st_mode)})")
        if max_bytes is not None and info.st_size > max_bytes:
            raise _over(info.st_size, max_bytes)
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", buffering=0, closefd=True) as fh:
            fd = -1
            return _read_stream(fh, max_bytes, deadline, timeout)
    finally:
        if fd >= 0:
            os.close(fd)


def read_input(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    max_bytes: int | None = None,
    size: int | None = None,
    timeout_s: float | None = None,
) -> bytes:
    """The bytes of one input, bounded. ``size``: the listed size when known (checked before
    any request). Raises :class:`ReadError` (not a regular file, over ``max_bytes``, past
    ``timeout_s``), or what the store raised after retries of transient errors.

    The wall-clock limit is checked between chunks: it bounds a slow stream; a single request
    that stalls is bounded by the store client's own socket timeouts."""
    if max_bytes is not None and size is not None and size > max_bytes:
        raise _over(size, max_bytes)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    for attempt in range(fsio.READ_ATTEMPTS):
        try:
            fs, path = fsio.url_to_fs(uri, storage_options)
            if fsio.is_local(fs):
                return _read_local(path, max_bytes, deadline, timeout_s)
            with fs.open(path, "rb") as fh:
                known = getattr(fh, "size", None)
                if max_bytes is not None and isinstance(known, int) and known > max_bytes:
                    raise _over(known, max_bytes)
                return _read_stream(fh, max_bytes, deadline, timeout_s)
        except ReadError:
            raise
        except Exception as exc:
            if attempt == fsio.READ_ATTEMPTS - 1 or not fsio.is_transient(exc):
                raise
            time.sleep(fsio.READ_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")
