"""Parts that cannot be read — truncated, zero bytes, or damaged inside a page with the footer
intact: named in one line and skipped by the readers, moved aside to ``<out>/_quarantine/`` by
the next job, whose rows it scores again.

Parts are written with page checksums (:func:`vqpipe.storage.parts.write_part`), and reading
a part whole verifies them: a flipped byte in a page is found even where the page would still
decode (plain-encoded numbers)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

READ_BATCH_ROWS = 65_536
"""Rows decoded at a time when a part is read whole to verify it (bounds the memory)."""


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def read_part(
    fs: fsspec.AbstractFileSystem,
    part: str,
    columns: Callable[[pq.FileMetaData], list[str]] | None = None,
) -> tuple[pa.Table | None, pq.FileMetaData | None, str]:
    """Read ``part`` whole, in one open, with its page checksums verified: ``(the columns
    kept, its footer, "")`` — every column is decoded and checked; ``columns(footer)`` says
    which to keep (all when None) — or ``(None, None, why)`` when any of it does not read."""
    try:
        with fs.open(part, "rb") as fh:
            parquet = pq.ParquetFile(fh, page_checksum_verification=True)
            names = parquet.schema_arrow.names
            keep = names if columns is None else columns(parquet.metadata)
            kept = [c for c in keep if c in names]
            batches = [
                batch.select(kept) for batch in parquet.iter_batches(batch_size=READ_BATCH_ROWS)
            ]
            schema = pa.schema([parquet.schema_arrow.field(c) for c in kept])
            return pa.Table.from_batches(batches, schema=schema), parquet.metadata, ""
    except (OSError, pa.ArrowException, ValueError) as exc:
        return None, None, _why(exc)


def warn_damaged(part: str, why: str, what: str = "skipped") -> None:
    print(f"vqpipe: warning: damaged part {part} {what} ({why})", file=sys.stderr, flush=True)


def readable_parts(fs: fsspec.AbstractFileSystem, parts: list[str]) -> list[str]:
    """The parts that read whole (footer and every page); each other one is named in a warning
    line and left out."""
    with ThreadPoolExecutor(max_workers=16) as pool:
        found = list(pool.map(lambda p: read_part(fs, p, lambda _: [])[2], parts))
    good = []
    for part, why in zip(parts, found, strict=True):
        if why:
            warn_damaged(part, why)
        else:
            good.append(part)
    return good
