"""One scorer of the service, on the batch pipeline's own path: an item is read and decoded by
:func:`~vqpipe.pipeline.stages.decode_batch` (vqpipe's readers with their byte limit and read
timeout, the media limits, the scorer's preprocessor) and a batch of prepared items is scored
by :class:`~vqpipe.pipeline.stages.ScoreStage` — so a served score is the score ``vqpipe
score`` writes for the same file, and a failing item's error names its stage the same way
(``read: ...``, ``decode: ...``, ``score[<column>]: ...``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from vqpipe.io.media_types import IMAGE, UNSUPPORTED, media_type_from_name, sniff_media_type
from vqpipe.media.decode import MediaLimits
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.schema import DATA, ERROR, INPUT_PREFIX, error_text, extra_column
from vqpipe.service.body import Item


@dataclass(frozen=True)
class ColumnInfo:
    """What every answer of a column says besides its scores."""

    column: str
    scorer: str
    score_range: tuple[float, float]
    higher_better: bool


def column_info(spec: ScorerOptions) -> ColumnInfo:
    """The scale and direction of a pool's ``score`` (class facts: no weights loaded)."""
    cls = spec.scorer_class()
    low, high = cls.score_range
    return ColumnInfo(spec.column, spec.name, (float(low), float(high)), bool(cls.higher_better))


def check_servable(spec: ScorerOptions) -> None:
    """Raise ``ValueError`` unless the pool gives one ``score`` per item (cheap, no weights):
    the answer has one number per item."""
    cls = spec.scorer_class()
    cls.check_options(**spec.options)
    outputs = spec.outputs()
    if "score" not in outputs:
        scores = ", ".join(k for k in outputs if k.endswith("score"))
        raise ValueError(
            f"{spec.column}: {spec.name} with these options gives several scores ({scores}), "
            "not one: serve one column per task"
        )


Prepared = tuple[Any, str | None]
"""An item after decoding: its frames [T, ...] (None after an error) and its error."""


class ColumnScorer:
    """Load one scorer (``spec``) and score items as the pipeline does (see the module)."""

    def __init__(
        self,
        spec: ScorerOptions,
        storage_options: dict[str, Any] | None = None,
        limits: MediaLimits | None = None,
        video_fps: float = 1.0,
    ) -> None:
        from vqpipe.pipeline.score_stage import ScoreStage

        self.spec = spec
        self.storage_options = storage_options or {}
        self.limits = limits or MediaLimits()
        self.video_fps = video_fps
        self.stage = ScoreStage(spec, self.storage_options, limits=self.limits)

    def prepare(self, item: Item) -> Prepared:
        """Read (a URI) and decode ``item``, run the scorer's preprocessor: the decode stage's
        code on a batch of one, decoded here on the CPU (``decode=`` does not apply)."""
        from vqpipe.pipeline.decode_stage import decode_batch

        if item.error is not None:
            return None, item.error
        batch: dict[str, Any] = {}
        if item.data is not None:
            kind = sniff_media_type(item.data[:32]) or IMAGE  # unknown bytes: Pillow says why
            batch = {"uri": _objects(["<request>"]), DATA: _objects([item.data])}
        else:
            kind = media_type_from_name(str(item.uri).split("?", 1)[0])
            kind = IMAGE if kind == UNSUPPORTED else kind  # no extension: read as an image
            batch = {"uri": _objects([item.uri])}
        batch["media_type"] = _objects([kind])
        column = self.spec.column
        out = decode_batch(
            batch,
            [self.spec],
            self.storage_options,
            self.video_fps,
            self.limits,
            in_process=frozenset({column}),  # no device-decode JPEG column: CPU here
        )
        return out[INPUT_PREFIX + column][0], error_text(out[ERROR][0])

    def score(self, prepared: list[Prepared]) -> list[tuple[float | None, str | None]]:
        """``(score, error)`` per prepared item, in order: the items without an error scored as
        one batch by the pool's :class:`~vqpipe.pipeline.stages.ScoreStage`. A score that is
        not a finite number is answered as an error, never as a number."""
        column = self.spec.column
        frames = _objects([p[0] for p in prepared])
        batch = {INPUT_PREFIX + column: frames, ERROR: _objects([p[1] for p in prepared])}
        out = self.stage(batch)
        results: list[tuple[float | None, str | None]] = []
        for value, error in zip(out[extra_column(column, "score")], out[ERROR], strict=True):
            error = error_text(error)
            value = float(value)
            if error is None and not math.isfinite(value):
                error = f"score[{column}]: no finite score ({value})"
            results.append((None, error) if error is not None else (value, None))
        return results


def _objects(values: list[Any]) -> np.ndarray:
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
