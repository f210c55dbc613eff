"""Parquet files that hold the media bytes (Hugging Face ``image: struct<bytes, path>``,
img2dataset's ``jpg`` column) → one record per row, streamed batch by batch.

Read with ``pyarrow.parquet.ParquetFile.iter_batches`` over an fsspec file (no pre-buffering,
buffered column reads), so memory holds about one row group's media, never the file. Ray
Data's ``read_parquet`` would read the rows too, but a file it cannot read fails the task; here a
file that breaks mid-way yields the rows before the damage plus one error record.

Record contract (every key always present; other columns of the file carried as they are):

- ``uri`` ``"<file>#<key>"`` (unique per row), ``shard`` (the file URI), ``key``: the value of
  ``key_column`` as text (default: a column named ``key`` when the file has one), else the row
  index in the file
- ``media_type`` ``"image"`` / ``"video"``: from the bytes' magic numbers, else the struct's
  ``path`` extension, else the column name (``jpg`` → image, ``mp4`` → video); None if unknown
- ``data`` (the media bytes), ``bytes`` (their length), ``media_column`` (where they came from),
  ``media_path`` (the struct's ``path`` field, else None)
- ``error``: None or ``"read: …"`` (null media bytes, empty bytes, over ``max_bytes``, unknown
  media type, null or repeated key, unreadable file).

A carried column whose name is one of the record's own (``uri``, ``data``, …) or one of the
job's output columns (``reserved``: ``width``, ``<scorer>_score``, …) is renamed
``input_<name>``. When the file cannot be read (not Parquet, no media column, a damaged row
group), one record with ``key = "@<row>"`` (the first row not read) carries the error after the
records read before it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vqpipe.io.fs import is_transient
from vqpipe.io.records import describe, open_input
from vqpipe.io.sources import media_type_from_name, sniff_media_type
from vqpipe.schema import CARRIED_PREFIX

IMAGE_COLUMN_NAMES = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "image", "img", "image_bytes"}
)
VIDEO_COLUMN_NAMES = frozenset({"mp4", "webm", "mkv", "mov", "avi", "video", "video_bytes"})
MEDIA_COLUMN_NAMES = IMAGE_COLUMN_NAMES | VIDEO_COLUMN_NAMES | {"bytes", "media", "media_bytes"}
"""Binary columns taken as media without being named (a struct with ``bytes`` always is)."""

OWN_COLUMNS = ("uri", "shard", "key", "media_type", "data", "bytes", "media_column")
OWN_COLUMNS += ("media_path", "error")
PARQUET_TYPES: dict[str, pa.DataType] = {
    "uri": pa.string(),
    "shard": pa.string(),
    "key": pa.string(),
    "media_type": pa.string(),
    "data": pa.binary(),
    "bytes": pa.int64(),
    "media_column": pa.string(),
    "media_path": pa.string(),
    "error": pa.string(),
}
_HEAD = 16
PARQUET_BUFFER_BYTES = 1 << 20


def _is_binary(dtype: pa.DataType) -> bool:
    is_view = getattr(pa.types, "is_binary_view", lambda _: False)
    return pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or is_view(dtype)


def _is_media_struct(dtype: pa.DataType) -> bool:
    if not pa.types.is_struct(dtype) or dtype.get_field_index("bytes") < 0:
        return False
    return _is_binary(dtype.field("bytes").type)


def find_media_column(schema: pa.Schema, name: str | None = None) -> str:
    """The column holding the media bytes: ``name`` when given (checked), else the one struct
    with a binary ``bytes`` field (HF ``Image`` / ``Video``) or binary column named like
    ``MEDIA_COLUMN_NAMES``. ``ValueError`` naming the candidates when none or several fit."""
    if name is not None:
        if name not in schema.names:
            raise ValueError(f"no media column {name!r} (columns: {', '.join(schema.names)})")
        dtype = schema.field(name).type
        if not (_is_binary(dtype) or _is_media_struct(dtype)):
            raise ValueError(
                f"media column {name!r} is {dtype}: expected binary or a struct with a binary "
                "'bytes' field"
            )
        return name
    candidates = [
        f.name
        for f in schema
        if _is_media_struct(f.type) or (_is_binary(f.type) and f.name.lower() in MEDIA_COLUMN_NAMES)
    ]
    if len(candidates) == 1:
        return candidates[0]
    if candidates:
        raise ValueError(
            f"several media columns ({', '.join(candidates)}): name one with --media-column"
        )
    binary = [f.name for f in schema if _is_binary(f.type)]
    hint = f"; binary columns: {', '.join(binary)}" if binary else ""
    raise ValueError(
        "no media column (a struct with a binary 'bytes' field, or a binary column named like "
        f"jpg, png, image, mp4, video, bytes){hint}; name one with --media-column"
    )


def _type_hint(column: str) -> str | None:
    lower = column.lower()
    if lower in IMAGE_COLUMN_NAMES:
        return "image"
    if lower in VIDEO_COLUMN_NAMES:
        return "video"
    return None


def _media_type(head: bytes, path: str | None, hint: str | None) -> str | None:
    kind = sniff_media_type(head)
    if kind is None and path:
        by_name = media_type_from_name(path)
        kind = None if by_name == "unsupported" else by_name
    return kind or hint


def _carried(
    schema: pa.Schema, column: str, key_column: str | None, reserved: Collection[str]
) -> list[tuple[str, str]]:
    """``(name in the file, name in the record)`` of the carried columns: a name of ours (a
    record field or in ``reserved``, the job's output columns) gets the ``input_`` prefix."""
    return [
        (name, CARRIED_PREFIX + name if name in PARQUET_TYPES or name in reserved else name)
        for name in schema.names
        if name != column and not (name == key_column == "key")
    ]


def _error_table(shard: str, row: int, message: str, carried: list[pa.Field]) -> pa.Table:
    values: dict[str, Any] = dict.fromkeys(PARQUET_TYPES)
    values.update(uri=f"{shard}#@{row}", shard=shard, key=f"@{row}", error=message)
    columns = {n: pa.array([values[n]], type=t) for n, t in PARQUET_TYPES.items()}
    columns.update({f.name: pa.nulls(1, f.type) for f in carried})
    return pa.table(columns)


def _convert(
    batch: pa.RecordBatch,
    *,
    shard: str,
    start: int,
    column: str,
    key_column: str | None,
    max_bytes: int | None,
    seen: set[str],
    reserved: Collection[str],
) -> pa.Table:
    n = batch.num_rows
    media = batch.column(column)
    if pa.types.is_struct(media.type):
        data = pc.struct_field(media, "bytes")
        paths = (
            pc.struct_field(media, "path").to_pylist()
            if media.type.get_field_index("path") >= 0
            else [None] * n
        )
    else:
        data, paths = media, [None] * n
    data = data.cast(pa.binary())
    lengths = pc.binary_length(data).to_pylist()
    heads = pc.binary_slice(data, 0, _HEAD).to_pylist()
    raw_keys = batch.column(key_column).to_pylist() if key_column else [None] * n
    hint = _type_hint(column)
    keys, uris, kinds, errors, keep = [], [], [], [], []
    for i in range(n):
        row = start + i
        error = None
        if key_column is None:
            key = str(row)
        elif raw_keys[i] is None:
            key, error = f"@{row}", f"read: null key in column {key_column!r}"
        else:
            key = str(raw_keys[i])
        if key in seen:
            key, error = f"{key}@{row}", error or f"read: key {key!r} repeats at row {row}"
        seen.add(key)
        path = paths[i]
        kind = None
        if lengths[i] is None:
            error = error or "read: null media bytes" + (f" (path {path!r})" if path else "")
        elif lengths[i] == 0:
            error = error or "read: empty media bytes"
        else:
            kind = _media_type(heads[i], path, hint)
            if max_bytes is not None and lengths[i] > max_bytes:
                error = (
                    error or f"read: media has {lengths[i]} bytes, over the limit of {max_bytes}"
                )
            elif kind is None:
                head = heads[i].hex()
                error = error or f"read: unknown media type (bytes start with 0x{head})"
        keys.append(key)
        uris.append(f"{shard}#{key}")
        kinds.append(kind)
        errors.append(error)
        keep.append(error is None)
    columns: dict[str, pa.Array] = {
        "uri": pa.array(uris, pa.string()),
        "shard": pa.array([shard] * n, pa.string()),
        "key": pa.array(keys, pa.string()),
        "media_type": pa.array(kinds, pa.string()),
        "data": pc.if_else(pa.array(keep, pa.bool_()), data, pa.scalar(None, pa.binary())),
        "bytes": pa.array(lengths, pa.int64()),
        "media_column": pa.array([column] * n, pa.string()),
        "media_path": pa.array(paths, pa.string()),
        "error": pa.array(errors, pa.string()),
    }
    for name, out in _carried(batch.schema, column, key_column, reserved):
        columns[out] = batch.column(name)
    return pa.table(columns)


def iter_parquet_media_batches(
    file_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    media_column: str | None = None,
    key_column: str | None = None,
    batch_rows: int = 256,
    max_bytes: int | None = None,
    reserved: Collection[str] = (),
) -> Iterator[pa.Table]:
    """Arrow tables of at most ``batch_rows`` records of one Parquet file with media bytes
    (contract in the module docstring); carried columns named in ``reserved`` get the
    ``input_`` prefix."""
    shard = str(file_uri)
    row = 0
    carried: list[pa.Field] = []
    try:
        with open_input(shard, storage_options) as fh:
            # pre_buffer would coalesce the ranges of several row groups (up to 32 MiB) into
            # one read, measured: a 24 MB file held whole; buffered column reads keep one
            # row group's worth at a time
            parquet = pq.ParquetFile(fh, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
            schema = parquet.schema_arrow
            column = find_media_column(schema, media_column)
            if key_column is not None and key_column not in schema.names:
                raise ValueError(
                    f"no key column {key_column!r} (columns: {', '.join(schema.names)})"
                )
            if key_column is None and "key" in schema.names and column != "key":
                key_column = "key"
            carried = [
                pa.field(out, schema.field(name).type)
                for name, out in _carried(schema, column, key_column, reserved)
            ]
            seen: set[str] = set()
            for batch in parquet.iter_batches(batch_size=batch_rows):
                table = _convert(
                    batch,
                    shard=shard,
                    start=row,
                    column=column,
                    key_column=key_column,
                    max_bytes=max_bytes,
                    seen=seen,
                    reserved=reserved,
                )
                row += batch.num_rows
                yield table
    except Exception as exc:
        if is_transient(exc):  # a store outage or stall: the job's shard error row, transient
            raise
        message = f"read: parquet file unreadable at row {row}: {describe(exc)}"
        yield _error_table(shard, row, message, carried)


def iter_parquet_media(
    file_uri: str,
    storage_options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> Iterator[dict[str, Any]]:
    """``iter_parquet_media_batches`` one record (dict) at a time."""
    for table in iter_parquet_media_batches(file_uri, storage_options, **kwargs):
        yield from table.to_pylist()
