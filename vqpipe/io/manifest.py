"""Manifest reader: a Parquet / CSV / JSONL table naming its inputs in a URI column, read shard
by shard into input rows (``uri``, ``media_type``, ``shard``, ``key``, ``row_index``, ``error``
and the carried columns).

Read with pyarrow per shard rather than Ray Data's readers: each shard must become fragments
with stable sequence numbers (the commit unit), and a bad row must become an error row
instead of failing the read task."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vqpipe.io.fs import url_to_fs
from vqpipe.io.media_types import PARQUET_SUFFIXES, media_type_from_name
from vqpipe.io.sources import OUTSIDE_ROOT, entry_selected, manifest_entry
from vqpipe.schema import (
    BYTES,
    CARRIED_PREFIX,
    DATA,
    DUPLICATES,
    ERROR,
    KEY,
    MEDIA_TYPE,
    ROW_INDEX,
    SHARD,
    URI,
)

if TYPE_CHECKING:
    from vqpipe.io.readers import ReadOptions


def hive_columns(path: str) -> dict[str, str]:
    """Hive partition columns of a file from its directories (``…/date=2026-11-30/part-0.parquet``
    → ``{"date": "2026-11-30"}``, values URL-decoded, as strings), by Ray Data's own parser with
    its ``read_parquet`` default: every ``key=value`` directory of the path."""
    from ray.data.datasource.partitioning import Partitioning, PathPartitionParser

    return PathPartitionParser(Partitioning("hive"))(path)


def manifest_chunks(
    uri: str,
    rows: int,
    storage_options: dict[str, Any] | None,
    *,
    uri_column: str | None = None,
    types: dict[str, str] | None = None,
) -> Iterator[tuple[int, pa.Table]]:
    """A Parquet / CSV / JSONL manifest file in tables of ``rows`` rows, each with the index
    of its first row (empty tables skipped), with one schema for the whole file: all-null
    columns typed as strings, JSON lines whose types drift read by :func:`_json_lines`,
    ``types`` (the columns the driver fixed for every shard, see :func:`_force_types`)
    applied.

    Read with pyarrow per shard rather than Ray Data's readers: each shard must become
    fragments with stable sequence numbers (the commit unit), and a bad row must become an
    error row instead of failing the read task."""
    import pyarrow.csv as pcsv
    import pyarrow.json as pjson
    import pyarrow.parquet as pq

    fs, path = url_to_fs(uri, storage_options)
    lower = path.lower()
    with fs.open(path, "rb") as fh:
        if lower.endswith(PARQUET_SUFFIXES):
            parquet = pq.ParquetFile(fh)
            schema = carried_schema(parquet.schema_arrow)
            start = 0
            for batch in parquet.iter_batches(batch_size=rows, columns=schema.names):
                chunk = _force_types(pa.Table.from_batches([batch]).cast(schema), types, uri_column)
                if len(chunk):
                    yield start, chunk
                start += len(chunk)
            return
        if lower.endswith(".csv"):
            whole = pcsv.read_csv(fh)
        else:
            data = fh.read()
            try:
                whole = pjson.read_json(io.BytesIO(data))
            except pa.ArrowInvalid:  # types that drift between rows, or a broken line
                whole = _json_lines(data, uri_column)
    whole = _force_types(whole.cast(carried_schema(whole.schema)), types, uri_column)
    for start in range(0, len(whole), rows):
        yield start, whole.slice(start, rows)


def _force_types(table: pa.Table, types: dict[str, str] | None, uri_column: str | None) -> pa.Table:
    """Columns whose types differ between the job's manifest shards, in the one type the
    driver fixed for all of them (``types``: ``string`` or ``double``; see
    :func:`vqpipe.storage.repeats.unified_types`)."""
    for name, kind in (types or {}).items():
        if name not in table.column_names or name == uri_column:
            continue
        column = table.column(name)
        target = pa.float64() if kind == "double" else pa.string()
        if column.type == target:
            continue
        try:
            values = column.cast(target)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            values = pa.array(
                [None if v is None else json.dumps(v, default=str) for v in column.to_pylist()],
                pa.string(),
            )
        table = table.set_column(table.column_names.index(name), name, values)
    return table


def manifest_tables(
    uri: str, options: ReadOptions, storage_options: dict[str, Any] | None
) -> Iterator[pa.Table]:
    """A manifest shard in tables of ``rows`` rows: ``uri`` from ``uri_column``, media type
    from the name, ``--root`` confinement, ``key`` = the row index; other columns carried, and
    the Hive partition columns of its path (:func:`hive_columns`; a column of the file wins). A
    URI listed again in the shard is scored once: its repeats are dropped and counted (repeats
    of other shards are removed once they are written: :mod:`vqpipe.storage.repeats`).

    Read with pyarrow per shard rather than Ray Data's readers: each shard must become
    fragments with stable sequence numbers (the commit unit), and a null ``uri`` must become
    an error row instead of failing the read task."""
    column = options.uri_column
    seen: set[str] = set()  # the shard's URIs: a repeated one is scored once (bounded by a shard)
    hive = hive_columns(url_to_fs(uri, storage_options)[1])
    held, dropped = None, 0
    chunks = manifest_chunks(
        uri, options.rows, storage_options, uri_column=column, types=options.types
    )
    for start, chunk in chunks:
        for key, value in hive.items():  # Hive partition columns (a column of the file wins)
            if key not in chunk.column_names:
                chunk = chunk.append_column(key, pa.array([value] * len(chunk), pa.string()))
        table, repeats = _manifest_rows(chunk, uri, options, start, seen)
        dropped += repeats
        if len(table) == 0:  # only repeats: nothing to yield (an empty part never commits)
            continue
        if held is not None:
            yield held
        held, dropped = _count_duplicates(table, dropped), 0
    if held is not None:  # one table of look-ahead: repeats after it are counted on it
        yield _count_duplicates(held, dropped)


def _count_duplicates(table: pa.Table, dropped: int) -> pa.Table:
    """``table`` with the number of repeated URIs dropped before it (the writer sums them)."""
    if DUPLICATES in table.column_names:
        dropped += int(pc.sum(table.column(DUPLICATES)).as_py() or 0)
        table = table.drop_columns([DUPLICATES])
    if not dropped:
        return table
    counts = np.zeros(len(table), np.int64)
    counts[0] = dropped
    return table.append_column(DUPLICATES, pa.array(counts))


def carried_schema(schema: pa.Schema) -> pa.Schema:
    """A manifest's schema with all-null columns typed as strings (the type every later part
    of a text column has), so that every part of the shard is written with one schema."""
    return pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in schema])


def _json_lines(data: bytes, column: str) -> pa.Table:
    """JSON lines whose types drift (a column mixing ints and strings) or with broken lines,
    which pyarrow's reader refuses as a whole: a column whose values are not all of one kind
    becomes strings (objects and lists as JSON text); a line that is not a JSON object is a
    row without a URI (an error row). The URI column keeps only strings."""
    records: list[dict[str, Any]] = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            value = None
        records.append(value if isinstance(value, dict) else {})
    names = list(dict.fromkeys(k for r in records for k in r))
    columns = {}
    for name in names:
        values = [r.get(name) for r in records]
        if name == column:
            columns[name] = pa.array(
                [v if isinstance(v, str) else None for v in values], pa.string()
            )
            continue
        kinds = {type(v) for v in values if v is not None}
        try:
            if len(kinds) > 1 and kinds != {int, float}:
                raise pa.ArrowInvalid("mixed")
            columns[name] = pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            columns[name] = pa.array(
                [None if v is None else v if isinstance(v, str) else json.dumps(v) for v in values],
                pa.string(),
            )
    if column is not None and column not in columns and records:
        columns[column] = pa.array([None] * len(records), pa.string())
    return pa.table(columns) if columns else pa.table({"_empty": pa.nulls(len(records))})


def _manifest_rows(
    table: pa.Table, shard: str, options: ReadOptions, start: int, seen: set[str]
) -> tuple[pa.Table, int]:
    column, root = options.uri_column, options.root
    include, exclude = options.include, options.exclude
    if column not in table.column_names:
        raise ValueError(f"manifest {shard} has no {column!r} column")
    raw = table.column(column).to_pylist()
    index = list(range(len(raw)))
    if include or exclude:  # --include / --exclude: entries left out, as a listing's files
        base = root if root is not None else shard.rsplit("/", 1)[0]
        chosen = [
            not isinstance(v, str)
            or entry_selected(manifest_entry(v, shard, root)[0], base, include, exclude)
            for v in raw
        ]
        table = table.filter(pa.array(chosen))
        raw = [v for v, c in zip(raw, chosen, strict=True) if c]
        index = [i for i, c in zip(index, chosen, strict=True) if c]
    keep = []  # in order, so that a URI repeated within this chunk is kept once too
    for v in raw:
        keep.append(not (isinstance(v, str) and v in seen))
        if isinstance(v, str):
            seen.add(v)
    dropped = keep.count(False)
    if dropped:  # a URI listed again in the shard: scored once, its repeats counted
        table, raw = table.filter(pa.array(keep)), [v for v, k in zip(raw, keep, strict=True) if k]
    rows = [i for i, k in zip(index, keep, strict=True) if k]
    carried = table.drop_columns([c for c in {column, URI} if c in table.column_names])
    uris, kinds, errors = [], [], []
    for i, value in zip(rows, raw, strict=True):
        if not isinstance(value, str) or not value.strip():
            uris.append(f"{shard}#{start + i}")
            kinds.append(None)
            errors.append(f"read: manifest row {start + i} has no {column} ({value!r})")
            continue
        resolved, inside = manifest_entry(value, shard, root)
        uri, kind = (resolved, media_type_from_name(value)) if inside else (value, OUTSIDE_ROOT)
        uris.append(uri)
        kinds.append(kind)
        errors.append(None)
    columns = {
        URI: pa.array(uris, pa.string()),
        MEDIA_TYPE: pa.array(kinds, pa.string()),
        BYTES: pa.array([None] * len(uris), pa.int64()),
        SHARD: pa.array([shard] * len(uris), pa.string()),
        KEY: pa.array([str(start + i) for i in rows], pa.string()),
        ROW_INDEX: pa.array([start + i for i in rows], pa.int64()),
        ERROR: pa.array(errors, pa.string()),
    }
    return pa.table(carry_columns(columns, carried, options.reserved)), dropped


def carry_columns(
    columns: dict[str, Any], carried: pa.Table, reserved: frozenset[str] = frozenset()
) -> dict[str, Any]:
    """``columns`` plus the carried input columns; a carried name that is ours (in
    ``columns``, in ``reserved`` — the job's output columns — or in transit) is kept as
    ``input_<name>``."""
    for name in carried.column_names:
        taken = name in columns or name in reserved or name == DATA or name[0] == "_"
        columns[CARRIED_PREFIX + name if taken else name] = carried.column(name)
    return columns
