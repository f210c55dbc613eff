"""Rows a rerun scores again: transient errors (``error_kind = "transient"``: the store was
unreachable, throttled or failing), or every error row with ``--retry-errors``.

Committed parts are immutable to the commit protocol, so a retry replaces rows part by part,
always leaving the output in a state the next run can finish from, with every input once:

- a listing of files resumes by URI: the retryable rows are cut out of their parts (each part
  rewritten atomically, or removed when nothing is left) *before* the output is read for the
  URIs already done, so those inputs are simply not done and are listed and scored again;
- sharded inputs resume by committed shard: a shard with a retryable row is scored again whole
  (its parts are removed first, so it is not committed until the new ones are all there; the
  shard's size bounds the cost).

Damaged parts (a footer or a page that does not read) are found by the same scan, which reads
every part whole with its page checksums verified (keeping only the error columns, and those
only where the statistics do not say ``error`` is all null); many parts are scanned by Ray
tasks, never row by row on the driver.
"""

from __future__ import annotations

from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vqpipe.schema import ERROR, ERROR_KIND, TRANSIENT
from vqpipe.storage.damaged import open_part, read_part
from vqpipe.storage.parts import write_part
from vqpipe.storage.schemas import decode_schema, encode_schema

DRIVER_SCAN_MAX_PARTS = 512
"""Up to this many parts are scanned on the driver (threads); past it, by Ray tasks."""


def _retryable_mask(table: pa.Table, every_error: bool) -> pa.Array:
    if every_error:
        return pc.is_valid(table.column(ERROR))
    if ERROR_KIND not in table.column_names:  # written before error kinds: permanent
        return pa.array([False] * len(table))
    return pc.fill_null(pc.equal(table.column(ERROR_KIND), TRANSIENT), False)


def _error_free(meta: pq.FileMetaData) -> bool:
    """True when the part's statistics say its ``error`` column is all null."""
    names = meta.schema.names
    if ERROR not in names:
        return True
    index = names.index(ERROR)
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(index).statistics
        if stats is None or stats.null_count != meta.row_group(g).num_rows:
            return False
    return True


RETRY, DAMAGED, CLEAN = "retry", "damaged", "clean"


def scan_part(fs: fsspec.AbstractFileSystem, part: str, every_error: bool) -> tuple[str, str, str]:
    """``(RETRY | DAMAGED | CLEAN, why, schema)`` of a committed part: whether it holds a row
    to score again, or cannot be read whole (truncated, zero bytes, a damaged page: why says
    what Arrow said), and its schema (:func:`~vqpipe.storage.schemas.encode_schema`; empty
    when damaged). Every page is read and its checksum verified; only the error columns are
    kept, and only when the statistics do not already say that ``error`` is all null."""
    meta, why = open_part(fs, part)
    if meta is None:
        return DAMAGED, why, ""
    columns = [] if _error_free(meta) else [ERROR, ERROR_KIND]
    table, why = read_part(fs, part, columns)
    if table is None:
        return DAMAGED, why, ""
    schema = encode_schema(meta.schema.to_arrow_schema())
    if ERROR not in table.column_names:
        return CLEAN, "", schema
    state = RETRY if pc.any(_retryable_mask(table, every_error)).as_py() else CLEAN
    return state, "", schema


def drop_retryable(fs: fsspec.AbstractFileSystem, part: str, every_error: bool) -> int:
    """Rewrite ``part`` without its retryable rows (atomically, metadata kept; removed when
    none are left); returns how many rows were cut out."""
    with fs.open(part, "rb") as fh:
        table = pq.read_table(fh)
    keep = pc.invert(_retryable_mask(table, every_error))
    kept = table.filter(keep)
    dropped = len(table) - len(kept)
    if not dropped:
        return 0
    if not len(kept):
        fs.rm(part)
        return dropped
    write_part(fs, part, kept)
    return dropped


def _scan(batch: dict[str, Any], storage_options: dict[str, Any], every_error: bool):
    from vqpipe.io.fs import url_to_fs

    paths = [str(p) for p in batch["part"]]
    fs = url_to_fs(paths[0], storage_options)[0] if paths else None
    found = [(p, *scan_part(fs, url_to_fs(p, storage_options)[1], every_error)) for p in paths]
    return {key: [f[i] for f in found] for i, key in enumerate(("part", "state", "why", "schema"))}


def scan_parts(
    fs: fsspec.AbstractFileSystem,
    parts: list[str],
    every_error: bool,
    output: str,
    storage_options: dict[str, Any] | None,
) -> tuple[list[str], dict[str, str], dict[str, pa.Schema]]:
    """The committed parts that hold rows to score again, the damaged ones (with why), and
    every readable part's schema."""
    if len(parts) <= DRIVER_SCAN_MAX_PARTS:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=16) as pool:
            found = list(pool.map(lambda p: scan_part(fs, p, every_error), parts))
        states = dict(zip(parts, found, strict=True))
    else:
        import ray

        from vqpipe.io.fs import join_uri

        uris = [join_uri(fs, p, output) for p in parts]  # the tasks open them by URI
        ds = ray.data.from_items([{"part": u} for u in uris])
        ds = ds.map_batches(
            _scan,
            fn_kwargs={"storage_options": storage_options or {}, "every_error": every_error},
            batch_size=64,
            num_cpus=0.25,
        )
        back = dict(zip(uris, parts, strict=True))
        states = {
            back[str(r["part"])]: (str(r["state"]), str(r["why"]), str(r["schema"]))
            for r in ds.iter_rows()
        }
    retry = sorted(p for p, (state, _, _) in states.items() if state == RETRY)
    damaged = {p: why for p, (state, why, _) in sorted(states.items()) if state == DAMAGED}
    decoded: dict[str, pa.Schema] = {}  # one object per distinct schema
    schemas: dict[str, pa.Schema] = {}
    for part, (_, _, text) in states.items():
        if text:
            if text not in decoded:
                decoded[text] = decode_schema(text)
            schemas[part] = decoded[text]
    return retry, damaged, schemas
