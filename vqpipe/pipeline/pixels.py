"""Preprocessed pixels in transit between the decode tasks and a scorer pool: one tensor
column per pool (``_input_<column>``), one row per item holding its frames [T, ...] (an image
T = 1, a video its sampled frames, a row with an error T = 0).

The column is always Ray Data's variable-shaped tensor type (Arrow: the rows' bytes back to
back plus offsets and shapes), built here in one copy per frame. Why not a fixed-shape tensor
where every row is one image: Ray Data turns a batch of same-shaped arrays into the
fixed-shape type and a ragged one into the variable-shaped type, and a batch that spans a block
of each must convert one of them (measured: 163 µs per 448 px image to concatenate a fixed and a
variable block against 52 µs for two blocks of one type, and a decode task cannot know what the
blocks of a batch will be). One type in every block makes the concatenation a plain one; a
batch that is a slice of one block reaches the actor as views of the block (zero copy).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np


def item_frames(frames: Sequence[np.ndarray]) -> np.ndarray | None:
    """An item's preprocessed frames as one [T, ...] array (None: no frames): one image's is a
    view of it, not a copy (the column copies every frame once anyway)."""
    if not frames:
        return None
    if len(frames) == 1:
        return np.asarray(frames[0])[None]
    return np.stack(frames)


def pixel_array(items: Sequence[np.ndarray | None]) -> Any:
    """The rows' frames as a variable-shaped tensor array (None → no frames), each row's bytes
    copied once into the one buffer the array holds."""
    import pyarrow as pa
    from ray.data.extensions import ArrowVariableShapedTensorType

    given = [np.asarray(x) for x in items if x is not None]
    ndim = given[0].ndim if given else 4
    dtype = given[0].dtype if given else np.dtype(np.uint8)
    empty = np.zeros((0,) * ndim, dtype)
    rows = [empty if x is None else np.asarray(x) for x in items]
    for row in rows:
        if row.ndim != ndim or row.dtype != dtype:
            raise ValueError(
                f"pixels of one column differ: {row.dtype}{row.shape}, {dtype} {ndim}-d"
            )
    sizes = np.array([row.size for row in rows], np.int64)
    offsets = np.zeros(len(rows) + 1, np.int64)
    np.cumsum(sizes, out=offsets[1:])
    data = np.empty(int(offsets[-1]), dtype)
    for row, lo, hi in zip(rows, offsets[:-1], offsets[1:], strict=True):
        data[lo:hi] = row.reshape(-1)
    value_type = pa.from_numpy_dtype(dtype)
    values = pa.Array.from_buffers(value_type, len(data), [None, pa.py_buffer(data)])
    storage = pa.StructArray.from_arrays(
        [
            pa.LargeListArray.from_arrays(pa.array(offsets), values),
            pa.array([list(row.shape) for row in rows], pa.list_(pa.int64())),
        ],
        ["data", "shape"],
    )
    return ArrowVariableShapedTensorType(value_type, ndim).wrap_array(storage)


def to_block(batch: dict[str, Any], pixel_columns: Sequence[str]) -> Any:
    """The batch as the Arrow block Ray Data would make of it, with ``pixel_columns`` (object
    arrays of [T, ...] arrays or None) as variable-shaped tensor columns. An Arrow table, not a
    dict: Ray Data makes a fixed-shape column of same-shaped arrays, and a chunked extension
    array in a dict goes through Python objects (0.4 s for 32 images). The batch as it is when
    it has none of those columns, or when Ray Data would not make it an Arrow block."""
    names = [c for c in pixel_columns if c in batch]
    if not names:
        return batch
    import pyarrow as pa
    from ray.data.block import BlockAccessor

    rest = {k: v for k, v in batch.items() if k not in names}
    arrays = {name: pixel_array(list(batch[name])) for name in names}
    if not rest:
        return pa.table(arrays)
    block = BlockAccessor.batch_to_block(rest)
    if not isinstance(block, pa.Table):  # a pandas block: let Ray Data convert the columns
        return batch
    for name, array in arrays.items():
        block = block.append_column(name, array)
    return block


def column_items(values: Any) -> list[np.ndarray | None]:
    """A batch's pixel column as one [T, ...] array (a view where it can be) or None per row,
    from whatever form it reached the actor in: the variable-shaped column (an object array of
    arrays, or one dense array when all rows have one shape), an Arrow array, the arrays of an
    in-process pool, or ``.npy`` bytes."""
    if hasattr(values, "to_numpy") and not isinstance(values, np.ndarray):  # Arrow
        values = values.to_numpy(zero_copy_only=False)
    values = np.asarray(values) if not isinstance(values, np.ndarray) else values
    if values.dtype != object:  # dense [B, T, ...]
        return [None if len(x) == 0 else x for x in values]
    out: list[np.ndarray | None] = []
    for x in values:
        if isinstance(x, (bytes, bytearray)):
            x = np.load(io.BytesIO(x), allow_pickle=False) if x else None
        elif x is not None:
            x = np.asarray(x)
        out.append(None if x is None or len(x) == 0 else x)
    return out
