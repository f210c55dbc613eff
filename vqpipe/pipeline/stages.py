"""Ray Data stages of a scoring job. Errors are data: a failing item becomes a row with
``error`` (naming the stage), never an exception that kills a block."""

from __future__ import annotations

import functools
import io
import json
import os
import uuid
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from vqpipe.io.fs import is_local, read_bytes, url_to_fs
from vqpipe.io.sources import INVALID_NAME, OUTSIDE_ROOT
from vqpipe.media.decode import MediaError, MediaLimits, decode_image, decode_video
from vqpipe.pipeline.config import ScorerOptions

INPUT_PREFIX = "_input_"


@functools.lru_cache(maxsize=16)
def _preprocessor(name: str, options_json: str) -> Any:
    from vqpipe.scoring import get_scorer_spec

    spec = get_scorer_spec(name)
    return spec.load().make_preprocessor(**{**spec.defaults, **json.loads(options_json)})


def decode_batch(
    batch: dict[str, np.ndarray],
    scorers: list[ScorerOptions],
    storage_options: dict[str, Any],
    video_fps: float,
    limits: MediaLimits,
) -> dict[str, np.ndarray]:
    """CPU stage: fetch bytes, decode (sample frames), run each scorer's preprocessing.

    Adds ``width``, ``height``, ``duration_s``, ``frames``, ``error`` and, per scorer, an
    ``_input_<name>`` column: the item's preprocessed arrays [T, ...] (T = 1 for an image, the
    sampled frames for a video) as ``.npy`` bytes, empty after an error.
    """
    n = len(batch["uri"])
    out = {k: v for k, v in batch.items()}
    width = np.full(n, -1, np.int64)
    height = np.full(n, -1, np.int64)
    duration = np.full(n, np.nan)
    frames = np.zeros(n, np.int64)
    errors = np.full(n, None, dtype=object)
    inputs: dict[str, list[np.ndarray]] = {s.column: [] for s in scorers}
    preprocessors = {
        s.column: _preprocessor(s.name, json.dumps(s.options, sort_keys=True)) for s in scorers
    }
    for i in range(n):
        uri, kind = str(batch["uri"][i]), str(batch["media_type"][i])
        items = []
        try:
            if kind == "unsupported":
                raise MediaError(f"unsupported file type {os.path.splitext(uri)[1] or '(none)'!r}")
            if kind == OUTSIDE_ROOT:
                raise PermissionError("outside the configured input root; not read")
            if kind == INVALID_NAME:
                raise OSError("file name is not valid UTF-8 (shown with \\x escapes); rename it")
            data = read_bytes(uri, storage_options)
            if kind == "image":
                image, info = decode_image(data, limits)
                items, width[i], height[i], frames[i] = [image], info.width, info.height, 1
            else:
                items, vinfo = decode_video(data, video_fps, limits)
                width[i], height[i], duration[i], frames[i] = (
                    vinfo.width,
                    vinfo.height,
                    vinfo.duration_s,
                    vinfo.sampled,
                )
        except FileNotFoundError as exc:
            errors[i] = f"read: not found: {exc}"
        except PermissionError as exc:
            errors[i] = f"read: access denied: {exc}"
        except MediaError as exc:
            errors[i] = f"decode: {exc}"
        except Exception as exc:  # network, permissions, anything else: keep the row
            errors[i] = f"read: {type(exc).__name__}: {exc}"
        for column, prep in preprocessors.items():
            arrays = []
            if errors[i] is None:
                try:
                    arrays = [prep(item)["pixels"] for item in items]
                except Exception as exc:
                    errors[i] = f"preprocess[{column}]: {type(exc).__name__}: {exc}"
            inputs[column].append(np.stack(arrays) if arrays else None)
    for column, arrays in inputs.items():  # ragged [T, ...] arrays travel as .npy bytes
        out[INPUT_PREFIX + column] = np.array([_to_bytes(a) for a in arrays], dtype=object)
    out.update(width=width, height=height, duration_s=duration, frames=frames, error=errors)
    return out


class ScoreStage:
    """Actor stage: load one scorer once, score the rows without an error (each row's frames
    go to :meth:`Scorer.predict_items`), pass every row through."""

    def __init__(self, spec: ScorerOptions) -> None:
        from vqpipe.scoring import create_scorer

        self.spec = spec
        self.scorer = create_scorer(spec.name, **spec.options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        column = self.spec.column
        inputs = [_from_bytes(b) for b in batch.pop(INPUT_PREFIX + column)]
        n = len(inputs)
        k = max(len(self.scorer.prob_labels), 1)
        scores = np.full(n, np.nan, np.float32)
        probs = np.full((n, k), np.nan, np.float32)
        errors = np.array([_error_text(e) for e in batch["error"]], dtype=object)
        extra: dict[str, np.ndarray] = {}
        todo = [i for i in range(n) if errors[i] is None and inputs[i] is not None]
        if todo:
            try:
                out = self.scorer.predict_items([inputs[i] for i in todo], self.spec.batch_size)
                scores[todo] = out["score"]
                probs[todo] = out["probs"]
                for key, values in out.items():  # further per-item numbers → own columns
                    if key not in ("score", "probs") and np.ndim(values) == 1:
                        extra[key] = np.full(n, np.nan, np.float32)
                        extra[key][todo] = values
            except Exception as exc:
                for i in todo:
                    errors[i] = f"score[{column}]: {type(exc).__name__}: {exc}"
        for key in getattr(self.scorer, "extra_outputs", ()):
            batch[f"{column}_{key}"] = extra.get(key, np.full(n, np.nan, np.float32))
        batch[f"{column}_score"] = scores
        batch[f"{column}_probs"] = probs
        batch["error"] = errors
        return batch


def write_batch(
    batch: dict[str, np.ndarray],
    output: str,
    storage_options: dict[str, Any],
    metadata: dict[bytes, bytes],
) -> dict[str, np.ndarray]:
    """Write one batch as one Parquet part, atomically; return a one-row summary.

    Local: write ``.tmp-*`` then rename. Object stores: one PUT of the whole file, which is
    atomic there. A killed job therefore never leaves a partial ``part-*.parquet``.
    """
    errors = [_error_text(e) for e in batch["error"]]
    columns = {k: _arrow_column(v) for k, v in batch.items() if k != "error"}
    columns["error"] = pa.array(errors, type=pa.string())  # one schema for every part
    table = pa.Table.from_pydict(columns)
    table = table.replace_schema_metadata(metadata)
    fs, root = url_to_fs(output, storage_options)
    name = f"part-{uuid.uuid4().hex}.parquet"
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    final = f"{root.rstrip('/')}/{name}"
    if is_local(fs):
        tmp = f"{root.rstrip('/')}/.tmp-{name}"
        with fs.open(tmp, "wb") as fh:
            fh.write(buffer.getvalue())
        os.replace(tmp, final)
    else:
        fs.pipe(final, buffer.getvalue())
    failed = sum(e is not None for e in errors)
    return {"file": np.array([final]), "rows": np.array([len(table)]), "errors": np.array([failed])}


def _error_text(value: Any) -> str | None:
    """``None`` for no error (Ray may hand it back as None or NaN), else the message."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None  # an all-None column comes back from Arrow as float32 NaN
    return str(value)


def _to_bytes(array: np.ndarray | None) -> bytes:
    if array is None:
        return b""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _from_bytes(data: bytes) -> np.ndarray | None:
    return np.load(io.BytesIO(data), allow_pickle=False) if data else None


def _arrow_column(values: np.ndarray) -> pa.Array:
    if values.dtype == object:
        return pa.array(list(values))
    if values.ndim == 2:  # [rows, K] → list<float>
        return pa.array(list(values))
    return pa.array(values)
