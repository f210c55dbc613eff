"""Arrow IPC files with media cells — a Hugging Face ``save_to_disk`` folder
(``data-00000-of-00002.arrow`` … beside ``dataset_info.json`` and ``state.json``; a
``DatasetDict`` has ``dataset_dict.json`` and one such folder per split) → the records of
:mod:`vqpipe.io.media_parquet` (same contract, same conversion: :class:`MediaRows`).

``datasets`` writes the IPC *stream* format (no footer); the IPC *file* format (``ARROW1``
magic, Feather v2) is read too. Record batches are read one at a time (``datasets`` writes
them of 100–1,000 rows) and converted in pieces of at most ``batch_rows`` rows and about
``READ_BATCH_BYTES`` of media; a local file is memory-mapped, so a batch's cells are pages of
the file, copied only for the rows that are kept. Save_to_disk files are not compressed: a cell
is as big on disk as in memory, and one over ``max_bytes`` is an error row, never copied.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vqpipe.io.fs import is_local, url_to_fs
from vqpipe.io.media_parquet import READ_BATCH_BYTES, MediaRows
from vqpipe.io.records import open_input

HF_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
"""Files of a ``save_to_disk`` folder (``dataset_dict.json``: a ``DatasetDict``'s)."""
_FILE_MAGIC = b"ARROW1"


def open_arrow(stack: ExitStack, uri: str, storage_options: dict[str, Any] | None) -> Any:
    """An IPC reader (stream or file format) of ``uri``, closed with ``stack``."""
    fs, path = url_to_fs(uri, storage_options)
    if is_local(fs):
        source: Any = stack.enter_context(pa.memory_map(path, "r"))
    else:
        source = pa.PythonFile(stack.enter_context(open_input(uri, storage_options)), mode="r")
    magic = source.read(len(_FILE_MAGIC))
    source.seek(0)
    if magic == _FILE_MAGIC:
        return pa.ipc.open_file(source)
    return pa.ipc.open_stream(source)


def arrow_rows(uri: str, storage_options: dict[str, Any] | None = None) -> int:
    """The rows of an Arrow IPC file (a local one memory-mapped: its batches are not copied)."""
    with ExitStack() as stack:
        return sum(batch.num_rows for batch in _batches(open_arrow(stack, uri, storage_options)))


def _batches(reader: Any) -> Iterator[pa.RecordBatch]:
    if isinstance(reader, pa.ipc.RecordBatchFileReader):
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    else:
        yield from reader


def _pieces(batch: pa.RecordBatch, column: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Slices of at most ``batch_rows`` rows and about ``READ_BATCH_BYTES`` of media (cell
    lengths come from the offsets: nothing is read)."""
    media = batch.column(column)
    data = pc.struct_field(media, "bytes") if pa.types.is_struct(media.type) else media
    lengths = pc.fill_null(pc.binary_length(data), 0).to_numpy(zero_copy_only=False)
    at = 0
    while at < batch.num_rows:
        end, held = at, 0
        while end < batch.num_rows and end - at < batch_rows:
            held += int(lengths[end])
            end += 1
            if held >= READ_BATCH_BYTES:
                break
        yield batch.slice(at, end - at)
        at = end


def arrow_media_tables(
    rows: MediaRows, storage_options: dict[str, Any] | None, batch_rows: int
) -> Iterator[pa.Table]:
    """Arrow tables of at most ``batch_rows`` records of ``rows.shard``, an Arrow IPC file with
    media cells, converted by ``rows`` (contract: :mod:`vqpipe.io.media_parquet`)."""
    return rows.guarded("arrow file", _arrow_tables(rows, storage_options, batch_rows))


def _arrow_tables(
    rows: MediaRows, storage_options: dict[str, Any] | None, batch_rows: int
) -> Iterator[pa.Table]:
    with ExitStack() as stack:
        reader = open_arrow(stack, rows.shard, storage_options)
        column = rows.start(reader.schema)
        for batch in _batches(reader):
            for piece in _pieces(batch, column, batch_rows):
                yield from rows.tables(piece)
