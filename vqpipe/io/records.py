"""Shared pieces of the shard readers: opening with retries, and records → Arrow tables."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import IO, Any

import pyarrow as pa

from vqpipe.defaults import READ_TIMEOUT_S
from vqpipe.io.fs import READ_ATTEMPTS, READ_BACKOFF_S, is_transient, with_socket_timeouts
from vqpipe.io.patterns import resolve
from vqpipe.io.reading import ReadTimeoutError, open_stream

DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
"""Read-ahead block of remote files (s3fs defaults to 50 MiB per open file)."""

_READ_TIMEOUT: ContextVar[float | None] = ContextVar("vqpipe_read_timeout", default=READ_TIMEOUT_S)
_UNSET: Any = object()


@contextlib.contextmanager
def read_timeout(timeout_s: float | None) -> Iterator[None]:
    """Within the block, :func:`open_input` bounds each read call by ``timeout_s`` (the job's
    ``--read-timeout``; None: unbounded) unless its caller passes its own. The shard readers
    (WebDataset, Parquet) open their files without knowing the job's limits."""
    token = _READ_TIMEOUT.set(timeout_s)
    try:
        yield
    finally:
        _READ_TIMEOUT.reset(token)


def open_input(
    uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    timeout_s: float | None = _UNSET,
    **open_kwargs: Any,
) -> IO[bytes]:
    """``uri`` opened for binary reading (``open_kwargs`` go to ``fs.open``; ``block_size``
    defaults to 8 MiB); transient store errors are retried with backoff. Every read call on a
    store, the open included, gives up after ``timeout_s`` (default: :func:`read_timeout`'s,
    else ``vqpipe.defaults.READ_TIMEOUT_S``) with ``ReadTimeoutError`` (transient), so a
    stalled stream ends (see :func:`vqpipe.io.reading.open_stream`)."""
    timeout = _READ_TIMEOUT.get() if timeout_s is _UNSET else timeout_s
    block_size = open_kwargs.pop("block_size", DEFAULT_BLOCK_SIZE)
    options = with_socket_timeouts(str(uri), storage_options, timeout)
    for attempt in range(READ_ATTEMPTS):
        try:
            fs, path = resolve(uri, options)
            return open_stream(fs, path, block_size=block_size, timeout_s=timeout, **open_kwargs)
        except Exception as exc:
            last = attempt == READ_ATTEMPTS - 1 or isinstance(exc, ReadTimeoutError)
            if last or not is_transient(exc):  # a timeout has had its time: not tried again
                raise
            time.sleep(READ_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")


def describe(exc: BaseException) -> str:
    """``TypeName: message`` on one line (the message alone when it names the type)."""
    text = " ".join((str(exc) or repr(exc)).split())
    return text if text.startswith(type(exc).__name__) else f"{type(exc).__name__}: {text}"


def _column(name: str, values: list[Any], types: Mapping[str, pa.DataType]) -> pa.Array:
    if name in types:
        return pa.array(values, type=types[name])
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError):
        # mixed types across rows (a json field that is a number here and text there): text
        return pa.array(
            [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
            type=pa.string(),
        )


def records_to_table(
    records: list[dict[str, Any]], types: Mapping[str, pa.DataType] | None = None
) -> pa.Table:
    """One Arrow table from records: the union of their keys (first-seen order, missing →
    null); ``types`` fixes the type of known columns, the others are inferred."""
    types = types or {}
    names: dict[str, None] = dict.fromkeys(types)
    for record in records:
        names.update(dict.fromkeys(record))
    return pa.table({n: _column(n, [r.get(n) for r in records], types) for n in names})


def batched(
    records: Iterable[dict[str, Any]],
    *,
    batch_rows: int,
    batch_bytes: int,
    types: Mapping[str, pa.DataType] | None = None,
) -> Iterator[pa.Table]:
    """Tables of at most ``batch_rows`` records, cut early once their ``data`` passes
    ``batch_bytes`` (so a batch of videos stays bounded in memory and under Arrow's 2 GiB).
    When ``records`` raises, the records before the error are yielded first."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    chunk: list[dict[str, Any]] = []
    size = 0
    try:
        for record in records:
            chunk.append(record)
            size += len(record.get("data") or b"")
            if len(chunk) >= batch_rows or size >= batch_bytes:
                yield records_to_table(chunk, types)
                chunk, size = [], 0
    except Exception:
        if chunk:  # the records read before a reader's error are kept, then the error goes on
            yield records_to_table(chunk, types)
        raise
    if chunk:
        yield records_to_table(chunk, types)
