"""Reading one input's bytes with bounds: regular files only, at most ``max_bytes``, within a
wall-clock deadline that holds even while a request stalls; transient store errors retried
(``fs.is_transient``).

A FIFO named ``pipe.png`` would block ``open`` forever and a symlink to ``/dev/zero`` would be
read until memory runs out, so local inputs are opened with ``O_NONBLOCK`` and checked with
``fstat`` on the open descriptor (no race with a file swapped after a ``stat``) before a byte
is read. The size is checked before reading when it is known (listing, ``fstat``, the store's
HEAD); otherwise the read stops one chunk past the limit.

The deadline (``--read-timeout``) is enforced while bytes arrive, not between them:

- fsspec async filesystems (s3fs, gcsfs, adlfs, HTTP): every request runs on fsspec's event
  loop through ``fsspec.asyn.sync(..., timeout=)`` (the ``timeout=`` of any sync-wrapped call):
  ``asyncio.wait_for`` cancels the request at the deadline — its connection is closed, nothing
  keeps reading — and ``FSTimeoutError`` becomes :class:`ReadTimeoutError`. S3 also gets socket
  timeouts (``fs.with_socket_timeouts``). A thread was rejected here: a read abandoned by its
  caller would go on downloading on the loop (one byte every few seconds, for ever).
- Local and other filesystems, whose reads are plain blocking calls: the read runs in a daemon
  thread and the caller stops waiting at the deadline. The abandoned read is told to stop at
  its next chunk (memory: one chunk more), and a daemon thread never holds up process exit.
- Shard streams (:func:`open_stream`, for tars and Parquet files): each read call has the
  timeout, so a stalled stream ends with :class:`ReadTimeoutError` after the rows read before.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import IO, Any

from fsspec.exceptions import FSTimeoutError

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


def _timed_out(timeout: float | None, total: int | None = None) -> ReadTimeoutError:
    done = "" if total is None else f" ({total} bytes read)"
    return ReadTimeoutError(f"read timed out after {timeout or 0:g} s{done}")


def _left(deadline: float | None, timeout: float | None) -> float | None:
    """Seconds left before ``deadline`` (None: no deadline); past it, ReadTimeoutError."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise _timed_out(timeout)
    return left


def _in_thread(
    read: Callable[[threading.Event], Any], deadline: float | None, timeout: float | None
) -> Any:
    """``read(stop)`` in a daemon thread, waited for until ``deadline``; past it the thread is
    abandoned with ``stop`` set (``read`` checks it between chunks) and ReadTimeoutError is
    raised. A blocking call cannot be interrupted from Python: this bounds the caller's wait,
    and the daemon thread never delays process exit."""
    stop = threading.Event()
    if deadline is None:
        return read(stop)
    done = threading.Event()
    box: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            box.append((True, read(stop)))
        except BaseException as exc:  # handed to the caller
            box.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name="vqpipe-read", daemon=True).start()
    if not done.wait(max(0.0, deadline - time.monotonic())):
        stop.set()
        raise _timed_out(timeout)
    ok, value = box[0]
    if not ok:
        raise value
    return value


def _read_stream(
    fh: Any,
    max_bytes: int | None,
    deadline: float | None,
    timeout: float | None,
    stop: threading.Event | None = None,
) -> bytes:
    chunks, total = [], 0
    while True:
        if stop is not None and stop.is_set():  # abandoned by its caller: drop what it read
            raise _timed_out(timeout, total)
        want = CHUNK if max_bytes is None else min(CHUNK, max_bytes + 1 - total)
        chunk = fh.read(want)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise ReadError(f"file has more than {max_bytes} bytes, the --max-bytes limit")
        if deadline is not None and time.monotonic() > deadline:
            raise _timed_out(timeout, total)


def _read_local(
    path: str,
    max_bytes: int | None,
    deadline: float | None,
    timeout: float | None,
    stop: threading.Event | None = None,
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
            return _read_stream(fh, max_bytes, deadline, timeout, stop)
    finally:
        if fd >= 0:
            os.close(fd)


def _timed(call: Callable[..., Any], *args: Any, timeout: float | None, **kwargs: Any) -> Any:
    """A sync-wrapped call of an fsspec async filesystem, cancelled after ``timeout`` s."""
    try:
        return call(*args, timeout=timeout, **kwargs)
    except FSTimeoutError as exc:
        raise ReadTimeoutError("no answer in time") from exc


def _read_async(
    fs: Any,
    path: str,
    max_bytes: int | None,
    deadline: float | None,
    timeout: float | None,
) -> bytes:
    """One HEAD and one ranged GET (at most ``max_bytes`` + 1), each cancelled at the
    deadline (``fsspec.asyn.sync(timeout=)``): a stalled request is dropped, not left to run.
    One GET holds the object in memory whole, as the chunks joined did."""
    try:
        info = _timed(fs.info, path, timeout=_left(deadline, timeout))
        if info.get("type") == "directory":
            raise ReadError("not a regular file (directory)")
        size = info.get("size")
        if max_bytes is not None and isinstance(size, int) and size > max_bytes:
            raise _over(size, max_bytes)
        if size == 0:
            return b""
        end = size if isinstance(size, int) else None if max_bytes is None else max_bytes + 1
        start = None if end is None else 0
        data = _timed(fs.cat_file, path, start=start, end=end, timeout=_left(deadline, timeout))
    except ReadTimeoutError as exc:
        raise _timed_out(timeout) from exc.__cause__
    if max_bytes is not None and len(data) > max_bytes:
        raise ReadError(f"file has more than {max_bytes} bytes, the --max-bytes limit")
    return data


def _read_opened(
    fs: Any,
    path: str,
    max_bytes: int | None,
    deadline: float | None,
    timeout: float | None,
    stop: threading.Event,
) -> bytes:
    with fs.open(path, "rb") as fh:
        known = getattr(fh, "size", None)
        if max_bytes is not None and isinstance(known, int) and known > max_bytes:
            raise _over(known, max_bytes)
        return _read_stream(fh, max_bytes, deadline, timeout, stop)


def read_input(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    max_bytes: int | None = None,
    size: int | None = None,
    timeout_s: float | None = None,
) -> bytes:
    """The bytes of one input, bounded. ``size``: the listed size when known (checked before
    any request). Raises :class:`ReadError` (not a regular file, over ``max_bytes``), its
    :class:`ReadTimeoutError` (past ``timeout_s``, retries included: transient), or what the
    store raised after retries of transient errors. How the deadline holds while a request
    stalls: see the module docstring."""
    if max_bytes is not None and size is not None and size > max_bytes:
        raise _over(size, max_bytes)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    options = fsio.with_socket_timeouts(uri, storage_options, timeout_s)
    for attempt in range(fsio.READ_ATTEMPTS):
        try:
            fs, path = fsio.url_to_fs(uri, options)
            if fsio.is_local(fs):
                return _in_thread(
                    partial(_read_local, path, max_bytes, deadline, timeout_s),
                    deadline,
                    timeout_s,
                )
            if fsio.is_async(fs):
                return _read_async(fs, path, max_bytes, deadline, timeout_s)
            return _in_thread(
                partial(_read_opened, fs, path, max_bytes, deadline, timeout_s),
                deadline,
                timeout_s,
            )
        except ReadError:
            raise
        except Exception as exc:
            if attempt == fsio.READ_ATTEMPTS - 1 or not fsio.is_transient(exc):
                raise
            pause = fsio.READ_BACKOFF_S * 2**attempt
            if deadline is not None and time.monotonic() + pause >= deadline:
                raise  # no time left for another try: the store's own (transient) error
            time.sleep(pause)
    raise AssertionError("unreachable")


class _RangeStream(io.RawIOBase):
    """A seekable raw stream over an fsspec async filesystem: each read is one ranged GET of at
    most ``block_size`` bytes, cancelled when it takes over ``timeout_s`` (ReadTimeoutError)."""

    def __init__(self, fs: Any, path: str, size: int, block_size: int, timeout_s: float):
        super().__init__()
        self._fs, self._path, self._size = fs, path, size
        self._block, self._timeout, self._pos = max(1, block_size), timeout_s, 0
        self.size = size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        end = min(self._pos + len(view), self._pos + self._block, self._size)
        if end <= self._pos:
            return 0
        try:
            data = _timed(
                self._fs.cat_file, self._path, start=self._pos, end=end, timeout=self._timeout
            )
        except ReadTimeoutError as exc:
            raise ReadTimeoutError(
                f"read timed out: no {end - self._pos} bytes at offset {self._pos} "
                f"within {self._timeout:g} s"
            ) from exc.__cause__
        data = data[: len(view)]
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


class _ThreadedStream(io.RawIOBase):
    """A raw stream over a blocking file object whose every read is waited for at most
    ``timeout_s`` (in a daemon thread, see :func:`_in_thread`); after a timeout the stream is
    unusable (the abandoned read may still hold the file)."""

    def __init__(self, fh: IO[bytes], timeout_s: float):
        super().__init__()
        self._fh, self._timeout, self._broken = fh, timeout_s, False
        self.size = getattr(fh, "size", None)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return self._fh.seekable()

    def tell(self) -> int:
        return self._fh.tell()

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._fh.seek(offset, whence)

    def readinto(self, buffer: Any) -> int:
        if self._broken:
            raise ReadTimeoutError("read timed out earlier; the stream is abandoned")
        view = memoryview(buffer).cast("B")
        deadline = time.monotonic() + self._timeout
        try:
            data = _in_thread(lambda _: self._fh.read(len(view)), deadline, self._timeout)
        except ReadTimeoutError:
            self._broken = True
            raise
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed and not self._broken:  # a stalled read may still be using it
            self._fh.close()
        super().close()


def open_stream(
    fs: Any, path: str, *, block_size: int, timeout_s: float | None, **open_kwargs: Any
) -> IO[bytes]:
    """``path`` of ``fs`` opened for streaming reads (tar and Parquet shards), each read call
    bounded by ``timeout_s`` (an idle limit: a shard of any size streams, but a stream that
    stalls ends with :class:`ReadTimeoutError`). Local files are opened as they are."""
    if timeout_s is None or fsio.is_local(fs):
        return fs.open(path, "rb", block_size=block_size, **open_kwargs)
    if fsio.is_async(fs) and not open_kwargs:
        try:
            info = _timed(fs.info, path, timeout=timeout_s)
        except ReadTimeoutError as exc:
            raise _timed_out(timeout_s) from exc.__cause__
        size = info.get("size")
        if isinstance(size, int) and info.get("type") != "directory":
            raw = _RangeStream(fs, path, size, block_size, timeout_s)
            return io.BufferedReader(raw, buffer_size=block_size)
    deadline = time.monotonic() + timeout_s
    fh = _in_thread(
        lambda _: fs.open(path, "rb", block_size=block_size, **open_kwargs), deadline, timeout_s
    )
    return io.BufferedReader(_ThreadedStream(fh, timeout_s), buffer_size=block_size)
