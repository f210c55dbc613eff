"""Sharded inputs — WebDataset tars, Parquet files holding media bytes, manifest shards — read
as the fragments the commit protocol (:mod:`vqpipe.storage.parts`) writes as parts.

The driver plans shards only (one small record per shard, never one per item). Each shard is
read by one Ray task, which cuts it into fragments of ``rows_per_part`` rows; every row
carries its fragment's name (``_part``), and a fragment travels through decode, scoring and
writing as one block, so it becomes one Parquet part with a deterministic name::

    part-<signature hash>-<shard id>-<fragment>[-last].parquet

A retried write rewrites the same name; a shard is committed when its ``-last`` fragment and
every fragment before it exist. Resume lists the output (O(number of parts)) and skips the
committed shards of the same signature; fragments of a shard left half-done are deleted and
the shard is read again.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vqpipe.defaults import MAX_FRAMES
from vqpipe.io.fs import is_transient
from vqpipe.io.readers import LISTED, FilesReader, ReadOptions, read_tables
from vqpipe.schema import (
    CONTENT_VERSION,
    ERROR,
    ERROR_KIND,
    KEY,
    MEDIA_TYPE,
    ROW_INDEX,
    SHARD,
    SHARD_PATH,
    TRANSIENT,
    URI,
)

PART = "_part"
"""Column in transit: the name of the fragment (output part) a row belongs to."""
ROW = "_row"
"""Column in transit: the row's index in its fragment."""
ROWS = "_rows"
"""Column in transit: the number of rows of the row's fragment."""
SIDECARS = "_sidecars"
"""Column in transit: producers' sidecar files a listing left out (counted on the first row
of a listing's first fragment; the writer sums them into its summary row)."""
SHARDED_FORMATS = ("webdataset", "parquet", "manifest")
LISTING_PART_ROWS = 50_000
"""Rows per output part of a listing of files (its commit unit: a fixed slice of one listing
task's files), unless ``--rows-per-file`` says otherwise: ~5-10 MB of score rows, so 1e9
inputs are 2e4 parts, not 4e6."""
SHARD_FRAGMENT_ROWS = 256
"""Rows per fragment of a sharded input (the commit unit: one output part), unless
``--rows-per-file`` says otherwise. Its media bytes are bounded by the readers (batches of
about 64 MiB of media), its decoding by :func:`block_bounds`."""
BLOCK_ROWS = 256
"""Frames per block through decode and scoring (an image is one frame, a video the frames it
may be sampled to: ``--max-frames``): bounds the decoded pixels a task holds — 256 images, or
8 videos of 32 frames, not 256 videos (4.7 GB of frames at Q-Align's 448 px). A part of more
rows reaches the writer as pieces, merged into one part once all are in."""
BLOCK_BYTES = 128 * 1024**2
"""Media bytes carried in a block (cells of a tar or Parquet shard) at most, about."""
LISTING = "listing"
"""Shard format of a listing task: one directory of a ``files`` prefix (``top``: only the
files directly in the prefix)."""


@dataclass(frozen=True)
class Shard:
    """One input shard: where it is, how to read it, and its id in part names."""

    uri: str
    format: str
    id: str
    version: str | None = None
    """The shard's content version (from the listing); written with each of its rows."""
    offset: int | None = None
    """Rows of the input's shards before this one (Parquet / Arrow inputs, in URI order): its
    rows' ``row_index`` counts from there, as ``datasets`` numbers the rows of those files."""
    rows: int | None = None
    """Its rows when the plan counted them (Parquet / Arrow footers): the job's total."""


def signature_hash(signature: dict[str, Any]) -> str:
    """8 hex digits of the scorer signature: parts of other scorers never look committed."""
    blob = json.dumps(signature["scorers"], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:8]


def shard_id(uri: str) -> str:
    """A file-name-safe id: the shard's name (``00042.tar`` → ``00042``) and a hash of its
    whole URI (two ``00042.tar`` in different folders stay apart)."""
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    stem = re.sub(
        r"\.(tar(\.gz|\.bz2|\.xz)?|tgz|parquet|pq|arrow|csv|jsonl|ndjson|json)$", "", name
    )
    stem = re.sub(r"[^A-Za-z0-9_.=+-]+", "_", stem)[:80] or "shard"
    return f"{stem}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"


def _error_table(shard: Shard, at: int, message: str, transient: bool = False) -> pa.Table:
    return pa.table(
        {
            URI: [f"{shard.uri}#@{at}"],
            SHARD: [shard.uri],
            KEY: [f"@{at}"],
            MEDIA_TYPE: pa.array([None], pa.string()),
            ERROR: [message],
            ERROR_KIND: pa.array([TRANSIENT if transient else None], pa.string()),
        }
    )


def _fragments(
    tables: Iterator[pa.Table], shard: Shard, final: bool = True, path: str | None = None
) -> Iterator[pa.Table]:
    """Each table with its fragment name; the last one's name ends in ``-last`` (one table of
    look-ahead) unless ``final`` is False (a ``--limit`` run may stop inside a shard, which
    must then not look committed). A shard without any row yields one error row, so it
    leaves a trace; a reader that fails part-way yields one error row after the rows it
    read. With ``path`` (the shard's path relative to the input) every row also gets it as
    ``shard_path`` and a ``row_index``: the reader's, else the running count of the shard's
    rows (an error row: the first row not read)."""
    previous: pa.Table | None = None
    seq, rows, first = 0, 0, 0

    def done(table: pa.Table, start: int, part: str) -> pa.Table:
        table = _versioned(table, shard.version)
        if path is not None:
            if ROW_INDEX not in table.column_names:  # a WebDataset sample's ordinal
                index = np.arange(start, start + len(table), dtype=np.int64)
                table = table.append_column(ROW_INDEX, pa.array(index))
            if shard.offset:  # an index over the whole input, not the file
                at = table.column_names.index(ROW_INDEX)
                index = pc.add(table.column(ROW_INDEX), pa.scalar(shard.offset, pa.int64()))
                table = table.set_column(at, ROW_INDEX, index)
            table = _located(table, path)
        return _tag(table, part)

    try:
        for table in tables:
            if previous is not None:
                yield done(previous, first, f"{shard.id}-{seq:05d}")
                seq += 1
            previous, first = table, rows
            rows += len(table)
    except Exception as exc:
        if previous is not None:
            yield done(previous, first, f"{shard.id}-{seq:05d}")
            seq += 1
        message = f"read: shard {shard.uri} after {rows} rows: {type(exc).__name__}: {exc}"
        previous, first = _error_table(shard, rows, message, is_transient(exc)), rows
    if previous is None:
        previous, first = _error_table(shard, 0, "read: the shard holds no samples"), 0
    last = f"{shard.id}-{seq:05d}" + ("-last" if final else "")
    yield done(previous, first, last)


def _versioned(table: pa.Table, version: str | None) -> pa.Table:
    """``table`` with the ``content_version`` of what its rows were read from."""
    if CONTENT_VERSION in table.column_names:
        return table
    return table.append_column(CONTENT_VERSION, pa.array([version] * len(table), pa.string()))


def _located(table: pa.Table, path: str) -> pa.Table:
    """``table`` with its shard's path relative to the input (:data:`SHARD_PATH`)."""
    if SHARD_PATH in table.column_names:
        return table
    return table.append_column(SHARD_PATH, pa.array([path] * len(table), pa.string()))


def shard_path(uri: str, spec: Any) -> str:
    """``uri`` relative to the input spec that holds it (a folder, a glob's folder, a brace
    pattern's; a list: the first that holds it), else its file name. The same whatever the
    machine or bucket the input sits in, so ``(shard_path, row_index)`` joins runs of copies."""
    import os

    from vqpipe.io.patterns import braceexpand, has_magic

    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec or [])
    local = "://" not in uri
    for one in specs:
        for text in braceexpand(os.fspath(one)):
            base = text
            if has_magic(base):  # the folder above the first wildcard
                cut = min(base.find(c) for c in "*?[" if c in base)
                base = base[:cut].rsplit("/", 1)[0] if "/" in base[:cut] else ""
            if local and "://" not in base:
                base = os.path.abspath(base) if base else os.getcwd()
            base = base.rstrip("/")
            if uri == base:
                return uri.rsplit("/", 1)[-1]
            if base and uri.startswith(base + "/"):
                return uri[len(base) + 1 :]
    return uri.rstrip("/").rsplit("/", 1)[-1]


def block_bounds(
    media_types: Any,
    data_sizes: Any = None,
    block_frames: int = BLOCK_ROWS,
    max_frames: int = MAX_FRAMES,
    block_bytes: int = BLOCK_BYTES,
) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive rows cut into decode blocks of at most ``block_frames``
    frames — an image costs one, a video its frame budget ``max_frames`` (each sampled frame is
    decoded and preprocessed like an image) — and ``block_bytes`` of media carried in the rows
    (``data_sizes``: the cells' lengths, None / NaN for none); at least one row a block."""
    kinds = list(media_types)
    sizes = [0] * len(kinds) if data_sizes is None else list(data_sizes)
    bounds, start, frames, held = [], 0, 0, 0
    for i, (kind, size) in enumerate(zip(kinds, sizes, strict=True)):
        cost = max(1, max_frames) if kind == "video" else 1
        size = int(size) if size is not None and size == size and size > 0 else 0
        if i > start and (frames + cost > block_frames or held + size > block_bytes):
            bounds.append((start, i))
            start, frames, held = i, 0, 0
        frames += cost
        held += size
    if start < len(kinds):
        bounds.append((start, len(kinds)))
    return bounds


def _tag(table: pa.Table, part: str) -> pa.Table:
    n = len(table)
    table = table.append_column(PART, pa.array([part] * n, pa.string()))
    table = table.append_column(ROW, pa.array(np.arange(n, dtype=np.int64)))
    return table.append_column(ROWS, pa.array(np.full(n, n, np.int64)))


def _undone(rows: list[dict[str, Any]], done: Any) -> list[dict[str, Any]]:
    """Listed rows not in the table yet: a URI the table holds is done unless its version
    differs from the listed one (a file replaced in place: scored again; the job then drops
    its earlier row). ``done``: URI → version (None: unknown, a table of an earlier version)."""
    keep = []
    for row in rows:
        uri = row[URI]
        if uri not in done:
            keep.append(row)
            continue
        before, now = done[uri], row.get(CONTENT_VERSION)
        if before is not None and now is not None and before != now:
            keep.append(row)
    return keep


def listing_tables(
    uri: str, options: dict[str, Any], storage_options: dict[str, Any] | None
) -> Iterator[pa.Table]:
    """One directory of a ``files`` prefix, listed in a Ray task: its input rows in fragments
    of ``rows`` rows, each named by a hash of its URIs (a listing resumes by URI, so a name
    must never be reused for other files)."""
    counts: dict[str, int] = {}  # the top level's sidecars are counted by the driver
    top = bool(options.get("top"))
    reader = FilesReader(top=top, counts=None if top else counts)
    rows = next(iter(reader.tables(uri, ReadOptions.of(options), storage_options))).to_pylist()
    rows = _undone(rows, options.get("done") or {})
    step = options["rows"]
    for start in range(0, len(rows), step):
        chunk = rows[start : start + step]
        digest = hashlib.sha256("\n".join(r[URI] for r in chunk).encode()).hexdigest()[:16]
        table = pa.Table.from_pylist(chunk, schema=LISTED)
        table = table.append_column(SHARD, pa.array([uri] * len(chunk), pa.string()))
        if start == 0 and counts.get("sidecars"):  # the writer sums them into the summary
            skipped = np.zeros(len(chunk), np.int64)
            skipped[0] = counts["sidecars"]
            table = table.append_column(SIDECARS, pa.array(skipped))
        yield _tag(table, f"files_{digest}-00000-last")


def read_shards(
    batch: dict[str, np.ndarray], options: dict[str, Any], storage_options: dict[str, Any]
) -> Iterator[pa.Table]:
    """Ray Data stage (a generator; one shard per call): the shard's rows, fragment by
    fragment, each tagged with its part name; a shard that cannot be read becomes error rows
    naming it (see :func:`_fragments`)."""
    for i, (uri, fmt, sid) in enumerate(
        zip(batch["uri"], batch["format"], batch["id"], strict=True)
    ):
        version = batch["version"][i] if "version" in batch else None
        offset = batch["offset"][i] if "offset" in batch else None
        shard = Shard(
            str(uri),
            str(fmt),
            str(sid),
            None if version is None else str(version),
            None if offset is None or offset != offset else int(offset),  # NaN: none
        )
        if shard.format == LISTING:  # fragments already named; a listing error is one row
            try:
                top = {**options, "top": shard.id.startswith("top-")}
                yield from listing_tables(shard.uri, top, storage_options)
            except Exception as exc:
                message = f"read: cannot list {shard.uri}: {type(exc).__name__}: {exc}"
                error = _error_table(shard, 0, message, is_transient(exc))
                yield _tag(error, f"{shard.id}-00000-last")
            continue
        where = dict(options)
        if "types" in batch:  # column types fixed for every manifest shard of the job
            where["types"] = json.loads(str(batch["types"][i]))
        tables = read_tables(shard.format, shard.uri, where, storage_options)
        path = shard_path(shard.uri, options.get("spec"))
        yield from _fragments(tables, shard, final=options.get("limit") is None, path=path)
