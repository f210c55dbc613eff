"""Shared pieces of the shard readers: opening with retries, and records → Arrow tables."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import IO, Any

import pyarrow as pa

from vqpipe.io.fs import READ_ATTEMPTS, READ_BACKOFF_S, is_transient
from vqpipe.io.patterns import resolve

DEFAULT_BLOCK_SIZE = 8 * 1024 * 1024
"""Read-ahead block of remote files (s3fs defaults to 50 MiB per open file)."""


def open_input(
    uri: str, storage_options: dict[str, Any] | None = None, **open_kwargs: Any
) -> IO[bytes]:
    """``uri`` opened for binary reading (``open_kwargs`` go to ``fs.open``; ``block_size``
    defaults to 8 MiB); transient store errors are retried with backoff."""
    open_kwargs.setdefault("block_size", DEFAULT_BLOCK_SIZE)
    for attempt in range(READ_ATTEMPTS):
        try:
            fs, path = resolve(uri, storage_options)
            return fs.open(path, "rb", **open_kwargs)
        except Exception as exc:
            if attempt == READ_ATTEMPTS - 1 or not is_transient(exc):
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
    ``batch_bytes`` (so a batch of videos stays bounded in memory and under Arrow's 2 GiB)."""
    if batch_rows < 1:
        raise ValueError("batch_rows must be >= 1")
    chunk: list[dict[str, Any]] = []
    size = 0
    for record in records:
        chunk.append(record)
        size += len(record.get("data") or b"")
        if len(chunk) >= batch_rows or size >= batch_bytes:
            yield records_to_table(chunk, types)
            chunk, size = [], 0
    if chunk:
        yield records_to_table(chunk, types)
