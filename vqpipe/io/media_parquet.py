"""Parquet files that hold the media bytes (Hugging Face ``image: struct<bytes, path>``,
img2dataset's ``jpg`` column) → one record per row, streamed batch by batch.

Read with ``pyarrow.parquet.ParquetFile.iter_batches`` over an fsspec file (no pre-buffering,
buffered column reads), so memory holds about one batch of media, never the file: batches of
fewer rows where the footer says a row group's media is big (``READ_BATCH_BYTES``). A row group
whose media chunk holds a page over ``max_bytes`` (a zip bomb: a 33 KB file with a 1 GiB zstd
cell) is never given to pyarrow, which decompresses pages whole: its media column is streamed
value by value by :mod:`vqpipe.io.parquet_pages` (a value over the limit is read through and
dropped), its other columns read by pyarrow. Ray Data's ``read_parquet`` would read the rows
too, but a file it cannot read fails the task; here a file that breaks mid-way yields the rows
before the damage plus one error record.

Record contract (every key always present; other columns of the file carried as they are):

- ``uri`` ``"<file>#<key>"`` (unique per row), ``shard`` (the file URI), ``key``: the value of
  ``key_column`` as text (default: a column named ``key`` when the file has one), else the row
  index in the file; ``row_index``: the row's index in the file (an integer, for joins)
- ``media_type`` ``"image"`` / ``"video"``: from the bytes' magic numbers, else the struct's
  ``path`` extension, else the column name (``jpg`` → image, ``mp4`` → video); None if unknown
- ``data`` (the media bytes), ``bytes`` (their length), ``media_column`` (where they came from),
  ``media_path`` (the struct's ``path`` field, else None)
- ``error``: None or ``"read: …"`` (null media bytes, empty bytes, over ``max_bytes``, unknown
  media type, null or repeated key, unreadable file).

Hugging Face ``Image()`` columns written from local files hold ``{bytes: null, path}``: with
``paths`` (a :class:`MediaPaths`) such a cell's file is read, bounded like a listed file
(:func:`~vqpipe.io.reading.read_input`); without it the row is a "null media bytes" error.

A carried column whose name is one of the record's own (``uri``, ``data``, …) or one of the
job's output columns (``reserved``: ``width``, ``<scorer>_score``, …) is renamed
``input_<name>``. When the file cannot be read (not Parquet, no media column, a damaged row
group), one record with ``key = "@<row>"`` (the first row not read) carries the error after the
records read before it.

Why one module of ~550 lines: finding the media column, streaming row groups, reading an
oversized cell page by page and converting rows share one byte budget and one row count;
apart, a limit checked in one piece could be missed in another.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vqpipe.io.fs import is_transient
from vqpipe.io.media_types import media_type_from_name, sniff_media_type
from vqpipe.io.parquet_pages import Refused, chunk_values, largest_page
from vqpipe.io.records import describe, open_input
from vqpipe.io.sources import manifest_entry
from vqpipe.schema import CARRIED_PREFIX, ERROR_KIND, ROW_INDEX, TRANSIENT

IMAGE_COLUMN_NAMES = frozenset(
    {"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif", "image", "img", "image_bytes"}
)
VIDEO_COLUMN_NAMES = frozenset({"mp4", "webm", "mkv", "mov", "avi", "video", "video_bytes"})
MEDIA_COLUMN_NAMES = IMAGE_COLUMN_NAMES | VIDEO_COLUMN_NAMES | {"bytes", "media", "media_bytes"}
"""Binary columns taken as media without being named (a struct with ``bytes`` always is)."""

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
    ROW_INDEX: pa.int64(),
}
_HEAD = 16
PARQUET_BUFFER_BYTES = 1 << 20
READ_BATCH_BYTES = 64 * 1024**2
"""Media bytes per batch read, about (from the footer's sizes): big cells come fewer a batch."""
PATH_BATCH_ROWS = 16
"""Rows per table when cells name files to read (``{bytes: null, path}``): bounds the bytes
read ahead of decoding to a few files."""
PAGE_SLACK = 64 * 1024
"""A page this much over ``max_bytes`` (levels, length prefixes) may still hold a cell under it."""


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


@dataclass(frozen=True)
class MediaPaths:
    """How cells that name a file instead of holding bytes (``{bytes: null, path}``) are read:
    a relative ``path`` from ``root`` when given, else from the folder of the file that names
    it; an absolute one as it is, but only inside ``root`` when given. Reads are bounded by
    ``max_bytes`` and ``timeout_s`` (:func:`~vqpipe.io.reading.read_input`)."""

    root: str | None = None
    storage_options: dict[str, Any] | None = None
    max_bytes: int | None = None
    timeout_s: float | None = None

    def resolve(self, path: str, shard: str) -> tuple[str, bool]:
        """(the file's URI, whether it may be read): as a manifest entry
        (:func:`~vqpipe.io.sources.manifest_entry`)."""
        return manifest_entry(path, shard, self.root)

    def read(self, path: str, shard: str) -> tuple[bytes | None, str | None, bool]:
        """(the bytes, None, False) or (None, the row's error, whether it is transient: a store
        outage or a read past its deadline, scored again by the next run)."""
        from vqpipe.io.reading import ReadError, ReadTimeoutError, read_input

        uri, inside = self.resolve(path, shard)
        if not inside:
            message = f"read: media path {path!r} is outside the configured input root; not read"
            return None, message, False
        try:
            data = read_input(
                uri, self.storage_options, max_bytes=self.max_bytes, timeout_s=self.timeout_s
            )
        except ReadTimeoutError as exc:
            return None, f"read: media path {path!r}: {exc}", True
        except ReadError as exc:
            return None, f"read: media path {path!r}: {exc}", False
        except FileNotFoundError:
            return None, f"read: media path {path!r}: not found ({uri})", False
        except PermissionError as exc:
            return None, f"read: media path {path!r}: access denied: {exc}", False
        except Exception as exc:
            return None, f"read: media path {path!r}: {describe(exc)}", is_transient(exc)
        return data, None, False


def _error_table(shard: str, row: int, message: str, carried: list[pa.Field]) -> pa.Table:
    values: dict[str, Any] = dict.fromkeys(PARQUET_TYPES)
    values.update(uri=f"{shard}#@{row}", shard=shard, key=f"@{row}", error=message)
    values[ROW_INDEX] = row
    columns = {n: pa.array([values[n]], type=t) for n, t in PARQUET_TYPES.items()}
    columns.update({f.name: pa.nulls(1, f.type) for f in carried})
    return pa.table(columns)


def _convert(
    batch: pa.Table | pa.RecordBatch,
    *,
    shard: str,
    start: int,
    column: str,
    key_column: str | None,
    max_bytes: int | None,
    seen: set[str],
    reserved: Collection[str],
    sizes: list[int | None] | None = None,
    errors_in: list[str | None] | None = None,
    transient_in: list[bool] | None = None,
) -> pa.Table:
    """Records of one batch. ``sizes``: the real length of cells whose ``data`` holds only
    their first bytes (refused unread, over ``max_bytes``); ``errors_in``: errors found before
    (a named file that could not be read), ``transient_in``: which of them are transient
    (then the records get an ``error_kind`` column)."""
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
    if sizes is not None:
        lengths = [
            length if size is None else size for length, size in zip(lengths, sizes, strict=True)
        ]
    heads = pc.binary_slice(data, 0, _HEAD).to_pylist()
    raw_keys = batch.column(key_column).to_pylist() if key_column else [None] * n
    hint = _type_hint(column)
    keys, uris, kinds, errors, keep = [], [], [], [], []
    for i in range(n):
        row = start + i
        error = errors_in[i] if errors_in is not None else None
        if key_column is None:
            key = str(row)
        elif raw_keys[i] is None:
            key, error = f"@{row}", error or f"read: null key in column {key_column!r}"
        else:
            key = str(raw_keys[i])
        if key in seen:
            key, error = f"{key}@{row}", error or f"read: key {key!r} repeats at row {row}"
        seen.add(key)
        path = paths[i]
        kind = None
        if error is not None:
            pass
        elif lengths[i] is None:
            error = "read: null media bytes" + (f" (path {path!r})" if path else "")
        elif lengths[i] == 0:
            error = "read: empty media bytes"
        else:
            kind = _media_type(heads[i], path, hint)
            if max_bytes is not None and lengths[i] > max_bytes:
                error = f"read: media has {lengths[i]} bytes, over the limit of {max_bytes}"
            elif kind is None:
                error = f"read: unknown media type (bytes start with 0x{heads[i].hex()})"
        keys.append(key)
        uris.append(f"{shard}#{key}")
        kinds.append(kind)
        errors.append(error)
        keep.append(error is None)
    columns: dict[str, Any] = {
        "uri": pa.array(uris, pa.string()),
        "shard": pa.array([shard] * n, pa.string()),
        "key": pa.array(keys, pa.string()),
        "media_type": pa.array(kinds, pa.string()),
        "data": pc.if_else(pa.array(keep, pa.bool_()), data, pa.scalar(None, pa.binary())),
        "bytes": pa.array(lengths, pa.int64()),
        "media_column": pa.array([column] * n, pa.string()),
        "media_path": pa.array(paths, pa.string()),
        "error": pa.array(errors, pa.string()),
        ROW_INDEX: pa.array(range(start, start + n), pa.int64()),
    }
    if transient_in is not None and any(transient_in):
        columns[ERROR_KIND] = pa.array([TRANSIENT if t else None for t in transient_in])
    for name, out in _carried(batch.schema, column, key_column, reserved):
        columns[out] = batch.column(name)
    return pa.table(columns)


class MediaRows:
    """The conversion every reader of tables with media cells shares (Parquet here, Arrow in
    :mod:`vqpipe.io.hf_arrow`): which column holds the media, keys, carried columns, named
    files read, the running row index; :meth:`error` for the record that ends a broken file."""

    def __init__(
        self,
        shard: str,
        *,
        media_column: str | None = None,
        key_column: str | None = None,
        max_bytes: int | None = None,
        reserved: Collection[str] = (),
        paths: MediaPaths | None = None,
    ) -> None:
        self.shard, self.media_column, self.key_column = shard, media_column, key_column
        self.max_bytes, self.reserved, self.paths = max_bytes, reserved, paths
        self.row = 0
        self.column = ""
        self.carried: list[pa.Field] = []
        self.seen: set[str] = set()

    def start(self, schema: pa.Schema) -> str:
        """Check the schema; the media column's name."""
        self.column = find_media_column(schema, self.media_column)
        if self.key_column is not None and self.key_column not in schema.names:
            raise ValueError(
                f"no key column {self.key_column!r} (columns: {', '.join(schema.names)})"
            )
        if self.key_column is None and "key" in schema.names and self.column != "key":
            self.key_column = "key"
        self.carried = [
            pa.field(out, schema.field(name).type)
            for name, out in _carried(schema, self.column, self.key_column, self.reserved)
        ]
        return self.column

    def tables(
        self, batch: pa.Table | pa.RecordBatch, sizes: list[int | None] | None = None
    ) -> Iterator[pa.Table]:
        """The records of a batch of rows (the next ones of the file)."""
        for piece, piece_sizes, errors, transient in self._with_files(batch, sizes):
            table = _convert(
                piece,
                shard=self.shard,
                start=self.row,
                column=self.column,
                key_column=self.key_column,
                max_bytes=self.max_bytes,
                seen=self.seen,
                reserved=self.reserved,
                sizes=piece_sizes,
                errors_in=errors,
                transient_in=transient,
            )
            self.row += piece.num_rows
            yield table

    def _with_files(self, batch: Any, sizes: list[int | None] | None) -> Iterator[tuple]:
        """The batch as it is, or, when cells name files to read, in pieces of
        :data:`PATH_BATCH_ROWS` rows with those files' bytes in place."""
        media = batch.column(self.column)
        named = None
        struct = pa.types.is_struct(media.type)
        if self.paths is not None and struct and media.type.get_field_index("path") >= 0:
            missing = pc.and_(
                pc.is_null(pc.struct_field(media, "bytes")),
                pc.is_valid(pc.struct_field(media, "path")),
            )
            named = missing if pc.any(missing).as_py() else None
        if named is None:
            yield batch, sizes, None, None
            return
        for at in range(0, batch.num_rows, PATH_BATCH_ROWS):
            piece = batch.slice(at, PATH_BATCH_ROWS)
            flags = named.slice(at, PATH_BATCH_ROWS).to_pylist()
            piece, errors, transient = self._read_files(piece, flags)
            part_sizes = None if sizes is None else sizes[at : at + PATH_BATCH_ROWS]
            yield piece, part_sizes, errors, transient

    def _read_files(
        self, piece: Any, flags: list[bool]
    ) -> tuple[pa.Table, list[str | None], list[bool]]:
        """``piece`` with the bytes of the files its flagged cells name; each row's error and
        whether it is transient."""
        assert self.paths is not None
        if isinstance(piece, pa.RecordBatch):
            piece = pa.Table.from_batches([piece])
        media = piece.column(self.column).combine_chunks()
        values = pc.struct_field(media, "bytes").to_pylist()
        names = pc.struct_field(media, "path").to_pylist()
        errors: list[str | None] = [None] * len(values)
        transient = [False] * len(values)
        for i, flagged in enumerate(flags):
            if flagged:
                values[i], errors[i], transient[i] = self.paths.read(names[i], self.shard)
        kind = media.type
        children = [
            pa.array(values, kind.field("bytes").type) if f.name == "bytes" else media.field(f.name)
            for f in kind
        ]
        rebuilt = pa.StructArray.from_arrays(children, fields=list(kind), mask=pc.is_null(media))
        index = piece.schema.get_field_index(self.column)
        return piece.set_column(index, self.column, rebuilt), errors, transient

    def error(self, message: str) -> pa.Table:
        """The record that stands for the rest of a file that cannot be read."""
        return _error_table(self.shard, self.row, message, self.carried)

    def guarded(self, what: str, tables: Iterator[pa.Table]) -> Iterator[pa.Table]:
        """``tables`` (the records of this file, read lazily) until reading fails, then the
        :meth:`error` record ``"read: <what> unreadable at row …"``; a transient failure (a
        store outage or stall) raises instead: the job's shard error row, transient."""
        try:
            yield from tables
        except Exception as exc:
            if is_transient(exc):
                raise
            yield self.error(f"read: {what} unreadable at row {self.row}: {describe(exc)}")


def _media_leaf(parquet: pq.ParquetFile, column: str) -> int:
    """The index of the leaf (Parquet column) that holds the media bytes."""
    schema = parquet.schema
    wanted = (column, f"{column}.bytes")
    for j in range(len(schema)):
        if schema.column(j).path in wanted:
            return j
    raise ValueError(f"no Parquet leaf for media column {column!r}")


def _parquet_batches(
    parquet: pq.ParquetFile,
    fh: IO[bytes],
    column: str,
    batch_rows: int,
    max_bytes: int | None,
) -> Iterator[tuple[pa.Table | pa.RecordBatch, list[int | None] | None]]:
    """(batch, sizes of cells refused unread) of the file, in order. Row groups are planned from
    the footer: runs of row groups whose media pages all fit ``max_bytes`` are read by pyarrow,
    in batches of at most :data:`READ_BATCH_BYTES` of media (by the footer's uncompressed
    sizes); a row group with a bigger page, by :func:`_streamed_row_group`."""
    meta = parquet.metadata
    leaf = _media_leaf(parquet, column)
    limit = None if max_bytes is None else max_bytes + PAGE_SLACK
    run: list[int] = []
    step = batch_rows

    def flush() -> Iterator[tuple[pa.RecordBatch, None]]:
        if run:
            for batch in parquet.iter_batches(batch_size=step, row_groups=list(run)):
                yield batch, None
            run.clear()

    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        chunk = group.column(leaf)
        size = chunk.total_uncompressed_size
        # the footer bounds every page by the chunk; page headers (no decompression) say more
        if limit is not None and size > limit and largest_page(fh, chunk) > limit:
            yield from flush()
            step = batch_rows
            yield from _streamed_row_group(parquet, fh, g, column, leaf, batch_rows, max_bytes)
            continue
        per_row = size / max(1, group.num_rows)
        step = max(1, min(step, batch_rows, int(READ_BATCH_BYTES // max(per_row, 1))))
        run.append(g)
    yield from flush()


def _streamed_row_group(
    parquet: pq.ParquetFile,
    fh: IO[bytes],
    g: int,
    column: str,
    leaf: int,
    batch_rows: int,
    max_bytes: int | None,
) -> Iterator[tuple[pa.Table, list[int | None]]]:
    """A row group whose media holds a page over ``max_bytes``: its media streamed value by
    value (:func:`~vqpipe.io.parquet_pages.chunk_values`; a value over the limit is never held),
    its other columns (and the media struct's other fields) read by pyarrow."""
    schema = parquet.schema_arrow
    kind = schema.field(column).type
    others = [n for n in schema.names if n != column]
    if pa.types.is_struct(kind):
        others += [f"{column}.{f.name}" for f in kind if f.name != "bytes"]
    rest = parquet.read_row_group(g, columns=others) if others else None
    info = parquet.schema.column(leaf)
    if info.max_repetition_level:
        raise ValueError(f"media column {column!r} is repeated")
    chunk = parquet.metadata.row_group(g).column(leaf)
    values = chunk_values(fh, chunk, info.max_definition_level, max_bytes)
    at = 0
    while True:
        taken: list[bytes | Refused | None] = []
        held = 0
        for value in values:
            taken.append(value)
            held += len(value) if isinstance(value, bytes) else 0
            if len(taken) >= batch_rows or held >= READ_BATCH_BYTES:
                break
        if not taken:
            return
        cells = [v.head if isinstance(v, Refused) else v for v in taken]
        sizes = [v.size if isinstance(v, Refused) else None for v in taken]
        n = len(taken)
        part = rest.slice(at, n) if rest is not None else None
        if pa.types.is_struct(kind):
            given = None
            if part is not None and column in part.column_names:  # the struct's other fields
                given = part.column(column).combine_chunks()
            children = [
                pa.array(cells, f.type) if f.name == "bytes" else given.field(f.name) for f in kind
            ]
            mask = pc.is_null(given) if given is not None and given.type.num_fields else None
            media = pa.StructArray.from_arrays(children, fields=list(kind), mask=mask)
        else:
            media = pa.array(cells, kind)
        arrays = {name: media if name == column else part.column(name) for name in schema.names}
        at += n
        yield pa.table(arrays), sizes


def iter_parquet_media_batches(
    file_uri: str,
    storage_options: dict[str, Any] | None = None,
    *,
    media_column: str | None = None,
    key_column: str | None = None,
    batch_rows: int = 256,
    max_bytes: int | None = None,
    reserved: Collection[str] = (),
    paths: MediaPaths | None = None,
) -> Iterator[pa.Table]:
    """Arrow tables of at most ``batch_rows`` records of one Parquet file with media bytes
    (contract in the module docstring); carried columns named in ``reserved`` get the
    ``input_`` prefix; ``paths``: how cells that name a file are read (None: they are
    errors)."""
    rows = MediaRows(
        str(file_uri),
        media_column=media_column,
        key_column=key_column,
        max_bytes=max_bytes,
        reserved=reserved,
        paths=paths,
    )
    return parquet_media_tables(rows, storage_options, batch_rows)


def parquet_media_tables(
    rows: MediaRows, storage_options: dict[str, Any] | None, batch_rows: int
) -> Iterator[pa.Table]:
    """:func:`iter_parquet_media_batches` of the file ``rows.shard``, converted by ``rows``."""
    return rows.guarded("parquet file", _parquet_tables(rows, storage_options, batch_rows))


def _parquet_tables(
    rows: MediaRows, storage_options: dict[str, Any] | None, batch_rows: int
) -> Iterator[pa.Table]:
    with open_input(rows.shard, storage_options) as fh:
        # pre_buffer would coalesce the ranges of several row groups (up to 32 MiB) into
        # one read, measured: a 24 MB file held whole; buffered column reads keep one
        # row group's worth at a time
        parquet = pq.ParquetFile(fh, pre_buffer=False, buffer_size=PARQUET_BUFFER_BYTES)
        column = rows.start(parquet.schema_arrow)
        with open_input(rows.shard, storage_options) as pages:  # page headers, own cursor
            batches = _parquet_batches(parquet, pages, column, batch_rows, rows.max_bytes)
            for batch, sizes in batches:
                yield from rows.tables(batch, sizes)
