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

import json
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vqpipe.schema import CONTENT_VERSION, ERROR, ERROR_KIND, TRANSIENT
from vqpipe.storage.damaged import read_part
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


def scan_part(
    fs: fsspec.AbstractFileSystem, part: str, every_error: bool
) -> tuple[str, str, str, str]:
    """``(RETRY | DAMAGED | CLEAN, why, schema, versions)`` of a committed part: whether it
    holds a row to score again, or cannot be read whole (truncated, zero bytes, a damaged
    page: why says what Arrow said); its schema (:func:`~vqpipe.storage.schemas.encode_schema`)
    and the distinct ``content_version`` values of its rows (JSON; empty when damaged). Every
    page is read and its checksum verified; the error columns are kept only when the
    statistics do not already say that ``error`` is all null."""

    def columns(meta: pq.FileMetaData) -> list[str]:
        return [CONTENT_VERSION] + ([] if _error_free(meta) else [ERROR, ERROR_KIND])

    table, meta, why = read_part(fs, part, columns)
    if table is None or meta is None:
        return DAMAGED, why, "", ""
    schema = encode_schema(meta.schema.to_arrow_schema())
    versions = (
        sorted(set(table.column(CONTENT_VERSION).to_pylist()), key=str)
        if CONTENT_VERSION in table.column_names
        else []
    )
    state = CLEAN
    if ERROR in table.column_names and pc.any(_retryable_mask(table, every_error)).as_py():
        state = RETRY
    return state, "", schema, json.dumps(versions)


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
    keys = ("part", "state", "why", "schema", "versions")
    return {key: [f[i] for f in found] for i, key in enumerate(keys)}


@dataclass
class Scan:
    """What the resume scan found in a table's parts."""

    retry: list[str] = field(default_factory=list)
    """Parts holding rows to score again."""
    damaged: dict[str, str] = field(default_factory=dict)
    """Parts that do not read whole, with why."""
    schemas: dict[str, pa.Schema] = field(default_factory=dict)
    versions: dict[str, list[str | None]] = field(default_factory=dict)
    """The distinct ``content_version`` values of each part's rows (empty: none recorded)."""


def scan_parts(
    fs: fsspec.AbstractFileSystem,
    parts: list[str],
    every_error: bool,
    output: str,
    storage_options: dict[str, Any] | None,
) -> Scan:
    """Read every committed part whole (see :func:`scan_part`): on the driver with threads,
    or by Ray tasks when they are many."""
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
            back[str(r["part"])]: (
                str(r["state"]),
                str(r["why"]),
                str(r["schema"]),
                str(r["versions"]),
            )
            for r in ds.iter_rows()
        }
    scan = Scan()
    decoded: dict[str, pa.Schema] = {}  # one object per distinct schema
    for part, (state, why, text, versions) in sorted(states.items()):
        if state == RETRY:
            scan.retry.append(part)
        if state == DAMAGED:
            scan.damaged[part] = why
            continue
        if text not in decoded:
            decoded[text] = decode_schema(text)
        scan.schemas[part] = decoded[text]
        scan.versions[part] = json.loads(versions) if versions else []
    return scan
