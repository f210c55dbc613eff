"""The quality table's schema: column names, the columns in transit, and the Arrow conversion.

Every fact about the table's layout is defined here once; stages, the job, eval and the CLI
import these names. Missing values are Arrow nulls: the scores, probabilities and extra outputs
of a failed row, the size of an image that could not be decoded, the duration of an image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import pyarrow as pa

URI = "uri"
MEDIA_TYPE = "media_type"
BYTES = "bytes"
WIDTH = "width"
HEIGHT = "height"
DURATION = "duration_s"
FRAMES = "frames"
ERROR = "error"
ERROR_KIND = "error_kind"
"""``transient`` (the store was unreachable, throttled or failing: a rerun scores the row
again) or ``permanent`` (the input itself: a rerun keeps the row); null for scored rows."""
TRANSIENT = "transient"
PERMANENT = "permanent"
CONTENT_VERSION = "content_version"
"""The version of what a row was read from, as the store's listing gave it
(:func:`vqpipe.io.fs.content_version`): the file for a listing of files, the shard (tar,
Parquet, manifest) for sharded inputs. A rerun reads again what changed."""
MEDIA_COLUMNS = (WIDTH, HEIGHT, DURATION, FRAMES)
"""What the decode stage adds to every row."""
SHARD = "shard"
"""Sharded inputs (tar, Parquet, Arrow, manifest): the URI of the file a row was read from."""
KEY = "key"
"""Sharded inputs: the row's key in its shard (a key column, the sample's key, else
``row_index`` as text)."""
ROW_INDEX = "row_index"
"""Sharded inputs: the row's index (int64) — Parquet / Arrow: in its dataset, the files of one
folder and split (``train-00000-of-00004.parquet`` …) numbered in URI order as ``datasets``
numbers them; a manifest: in its file; a tar: the sample's ordinal in it. An error row that
stands for the rest of a shard: the first row not read."""
SHARD_PATH = "shard_path"
"""Sharded inputs: the shard's path relative to the input (``train/data-00000-of-00002.arrow``;
a single file input: its name), the same on every machine and bucket the input is copied to."""
SHARD_COLUMNS = (SHARD, KEY, ROW_INDEX, SHARD_PATH)
"""What every row of a sharded input carries besides the listing's columns."""

CARRIED_PREFIX = "input_"
"""``input_<name>``: a carried input column whose name is one of the table's own columns."""
INPUT_PREFIX = "_input_"
"""``_input_<column>``: a scorer's preprocessed arrays in transit (never written)."""
JPEG_PREFIX = "_jpeg_"
"""``_jpeg_<column>``: a JPEG's bytes in transit to the pool that decodes it on its device
(``decode=gpu``), empty for the rows decoded in the decode tasks (never written)."""
DEFER_PREFIX = "_defer_"
"""``_defer_<column>``: an image's bytes in transit to a ``when=`` pool, decoded for it after
its gate (only the rows sent on), empty for the rows decoded in the decode tasks (never
written)."""
DATA = "data"
"""Column in transit: the media bytes of rows read from inside a shard (never written)."""
DUPLICATES = "_duplicates"
"""Column in transit: URIs a manifest listed again, dropped before this row (the writer sums
them into its summary row; the job reports them)."""
RUNTIME_PREFIX = "_runtime_"
"""``_runtime_<column>``: the device and dtype a scorer actor ran with (into part metadata)."""

METADATA_KEY = b"vqpipe.job"
"""Parquet key-value metadata key of every part: the job signature and scorer facts."""

INT_MISSING = -1  # in transit (numpy has no integer null); written as null
FLOAT_COLUMNS_MISSING_AS_NAN = (DURATION,)


URI_A = "uri_a"
URI_B = "uri_b"
"""Pair tables (``vqpipe compare``): the first and the second image of each pair."""
PAIR_FLOAT_COLUMNS = ("p_b_better_ab", "p_b_better_ba", "p_b_better", "order_gap")
PAIR_PROBS_COLUMNS = ("level_probs_ab", "level_probs_ba")
"""``vqpipe compare``'s output columns (see :mod:`vqpipe.scorers.pairwise`)."""


def score_column(column: str) -> str:
    return f"{column}_score"


def extra_column(column: str, key: str) -> str:
    """``<column>_<key>``: a pool's output ``key`` (``score``, ``probs``, extras, per-task
    outputs) or what a later step derives from it."""
    return f"{column}_{key}"


def output_columns(column: str, outputs: Iterable[str] = ("score", "probs")) -> list[str]:
    """The columns one scorer pool adds: ``<column>_<output>`` for each of its outputs
    (:meth:`~vqpipe.scoring.Scorer.outputs`: ``score``, ``probs`` and extras; Q-Align with
    ``tasks``: ``<task>_score``, ``<task>_probs``)."""
    return [extra_column(column, key) for key in outputs]


def is_probs_column(name: str, column: str) -> bool:
    """Whether ``name`` is a probabilities row (list<float32>) of the pool ``column``:
    ``<column>_probs``, or a per-task ``<column>_<task>_probs``."""
    return name.startswith(f"{column}_") and name.endswith("_probs")


CALIBRATED = "calibrated"
"""``<column>_calibrated``: a score mapped onto the MOS scale (``vqpipe calibrate``)."""
NORMALIZED = "normalized"
"""``<column>_normalized``: a score normalised within its group (``vqpipe filter``)."""
ENSEMBLE = "ensemble"
"""The column prefix of ``vqpipe fuse``: ``ensemble_score`` and ``ensemble_spread``."""
ENSEMBLE_SCORE = score_column(ENSEMBLE)
ENSEMBLE_SPREAD = extra_column(ENSEMBLE, "spread")


def score_prefix(name: str) -> str:
    """``gamma_score`` → ``gamma`` (the scorer's column); any other column name unchanged."""
    return name[: -len("_score")] if name.endswith("_score") and name != "_score" else name


def derived_column(score: str, kind: str) -> str:
    """``("gamma_score", CALIBRATED)`` → ``gamma_calibrated``: what a post-hoc step derives
    from a score column, named like the scorer's own outputs."""
    return extra_column(score_prefix(score), kind)


def error_text(value: Any) -> str | None:
    """``None`` for no error (Ray may hand it back as None or NaN), else the message."""
    if value is None:
        return None
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (float, np.floating)):  # an all-None column comes back as NaN
        return None if math.isnan(value) else str(value)
    import pandas as pd  # anything else null-like (pd.NA, NaT): rare, and pandas is loaded then

    return None if pd.isna(value) else str(value)


def _float_array(values: np.ndarray) -> pa.Array:
    """float32 with NaN → null."""
    values = np.asarray(values, np.float32)
    return pa.array(values, mask=np.isnan(values), type=pa.float32())


def _probs_array(values: np.ndarray) -> pa.Array:
    """[rows, K] floats → list<float>; a row that is all NaN (no score) → null."""
    values = np.asarray(values, np.float32)
    rows, k = values.shape
    missing = np.isnan(values).all(axis=1)
    offsets = pa.array(np.arange(0, rows * k + 1, k, dtype=np.int32))
    flat = pa.array(values.reshape(-1), type=pa.float32())
    return pa.ListArray.from_arrays(offsets, flat, mask=pa.array(missing))


def _int_array(values: np.ndarray) -> pa.Array:
    values = np.asarray(values, np.int64)
    return pa.array(values, mask=values == INT_MISSING, type=pa.int64())


def _carried(values: np.ndarray) -> pa.Array:
    """A carried input column. The read stage fixed its type per shard; what can still differ
    in one batch becomes strings (values of mixed kinds: rows of two shards). A column with
    only nulls (or only NaN: a WebDataset member absent from every sample) is Arrow's ``null``
    type: the run's schema pass gives it the table's type (:mod:`vqpipe.storage.schemas`)."""
    if values.dtype != object and values.ndim != 2:
        if values.dtype.kind == "f" and len(values) and np.isnan(values).all():
            return pa.nulls(len(values), pa.null())  # an absent member, not a number
        return pa.array(values)
    items = [None if _missing(v) else v for v in values]
    if all(v is None for v in items):
        return pa.nulls(len(items), pa.null())
    try:
        return pa.array(items)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return pa.array(
            [None if v is None else v if isinstance(v, str) else _text(v) for v in items],
            pa.string(),
        )


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _text(value: Any) -> str:
    import json

    try:
        return json.dumps(value.tolist() if isinstance(value, np.ndarray) else value)
    except TypeError:
        return str(value)


def to_arrow(
    batch: dict[str, np.ndarray],
    scorer_columns: Iterable[str],
    typed: Mapping[str, str] | None = None,
) -> pa.Table:
    """One batch of finished rows → an Arrow table with nulls for every missing value.

    ``scorer_columns``: the prefixes of the job's scorers (their outputs are typed float32 /
    list<float32> with nulls); ``typed``: further output columns by name, ``"float"`` or
    ``"probs"``, typed the same way, or ``"bool"`` (a cascade's ``<column>_skipped``); carried
    input columns keep their own types.
    """
    scored = dict(typed or {})
    for column in scorer_columns:
        for name in batch:
            if name in scored:
                continue
            if is_probs_column(name, column):
                scored[name] = "probs"
            elif name.startswith(f"{column}_"):
                scored[name] = "float"
    arrays: dict[str, pa.Array] = {}
    for name, values in batch.items():
        if name in (ERROR, ERROR_KIND):
            continue
        kind = scored.get(name)
        if kind == "bool":
            arrays[name] = pa.array(np.asarray(values, dtype=bool), type=pa.bool_())
        elif kind == "probs" and np.ndim(values) == 2:
            arrays[name] = _probs_array(values)
        elif kind == "float" and np.ndim(values) == 1 and values.dtype != object:
            arrays[name] = _float_array(values)
        elif name in (WIDTH, HEIGHT, BYTES) and values.dtype != object:
            arrays[name] = _int_array(values)
        elif name in FLOAT_COLUMNS_MISSING_AS_NAN:
            arrays[name] = pa.array(np.asarray(values, np.float64), from_pandas=True)
        else:
            arrays[name] = _carried(values)
    # one schema for every part, whatever the batch held
    errors = [error_text(e) for e in batch[ERROR]]
    arrays[ERROR] = pa.array(errors, type=pa.string())
    kinds = batch.get(ERROR_KIND)
    arrays[ERROR_KIND] = pa.array(
        [
            None
            if e is None
            else (TRANSIENT if kinds is not None and kinds[i] == TRANSIENT else PERMANENT)
            for i, e in enumerate(errors)
        ],
        type=pa.string(),
    )
    return pa.Table.from_pydict(arrays)
