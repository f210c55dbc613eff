"""Parts that cannot be read (truncated, zero bytes): named in one line and skipped by the
readers, moved aside to ``<out>/_quarantine/`` by the next job, whose rows it scores again."""

from __future__ import annotations

import sys

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from vqpipe.storage.names import QUARANTINE


def open_part(fs: fsspec.AbstractFileSystem, part: str) -> tuple[pq.FileMetaData | None, str]:
    """The part's footer, or ``(None, why)`` when it cannot be read."""
    try:
        with fs.open(part, "rb") as fh:
            return pq.ParquetFile(fh).metadata, ""
    except (OSError, pa.ArrowException) as exc:
        return None, f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def warn_damaged(part: str, why: str, what: str = "skipped") -> None:
    print(f"vqpipe: warning: damaged part {part} {what} ({why})", file=sys.stderr, flush=True)


def readable_parts(fs: fsspec.AbstractFileSystem, parts: list[str]) -> list[str]:
    """The parts whose footers read; each other one is named in a warning line and left out."""
    good = []
    for part in parts:
        meta, why = open_part(fs, part)
        if meta is None:
            warn_damaged(part, why)
        else:
            good.append(part)
    return good


def quarantine(fs: fsspec.AbstractFileSystem, root: str, part: str) -> str:
    """Move a damaged part to ``<root>/_quarantine/`` (kept for a look, never read again)."""
    target = f"{root.rstrip('/')}/{QUARANTINE}/{part.rsplit('/', 1)[-1]}"
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.mv(part, target)
    return target
