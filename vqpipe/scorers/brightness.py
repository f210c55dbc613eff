"""A trivial reference scorer: mean luminance in [0, 1].

Not a quality model — it exists so that the pipeline can be smoke-tested and its overhead
measured with a scorer that is never the bottleneck (``benchmarks/pipeline.py --scorer
brightness``), and as the smallest example of the Scorer protocol for plugin authors.
``latency_s`` makes each ``predict`` call take at least that long: a stand-in for a slow
accelerator in fault-injection and back-pressure tests; ``calls_dir`` (a local folder) gets one
file per ``predict`` call naming how many frames it scored, so tests can count what reached
a pool (cascades: ``when=``); ``preprocess_dir`` likewise gets one file per item preprocessed
(what was decoded for the pool).
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

import numpy as np
from PIL import Image

from vqpipe.media.image import to_rgb
from vqpipe.scorers.base import Scorer

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


class BrightnessPreprocessor:
    """PIL image → ``{"pixels": uint8 [3, size, size]}`` (a small thumbnail)."""

    def __init__(self, size: int = 64, preprocess_dir: str | None = None) -> None:
        self.size = int(size)
        self.preprocess_dir = preprocess_dir

    def __call__(self, image: Image.Image) -> dict[str, np.ndarray]:
        if self.preprocess_dir:
            open(os.path.join(self.preprocess_dir, f"item-{uuid.uuid4().hex}"), "w").close()
        thumb = to_rgb(image).resize((self.size, self.size), Image.Resampling.BILINEAR)
        return {"pixels": np.ascontiguousarray(np.asarray(thumb, np.uint8).transpose(2, 0, 1))}


class BrightnessScorer(Scorer):
    """``score`` = mean Rec. 601 luma / 255; ``probs`` = the fraction of dark / mid / bright
    pixels."""

    name = "brightness"
    version = "1"
    media = frozenset({"image", "video"})
    score_range = (0.0, 1.0)
    prob_labels = ("dark", "mid", "bright")
    uses_torch = False  # numpy only: its actors never import torch

    def __init__(
        self,
        checkpoint: str | None = None,
        device: Any = None,
        dtype: Any = None,
        size: int = 64,
        latency_s: float = 0.0,
        calls_dir: str | None = None,
        preprocess_dir: str | None = None,
    ) -> None:
        super().__init__(checkpoint, "cpu", "float32")
        self.preprocessor = BrightnessPreprocessor(size, preprocess_dir)
        self.latency_s = float(latency_s)
        self.calls_dir = calls_dir

    @classmethod
    def scores_in_tasks(cls, latency_s: float = 0.0, **_: Any) -> bool:
        """In the decode tasks, unless ``latency_s`` makes it stand in for a slow accelerator:
        then it runs as an actor pool, like the model it stands in for."""
        return not latency_s

    @classmethod
    def make_preprocessor(
        cls, size: int = 64, preprocess_dir: str | None = None, **_: Any
    ) -> BrightnessPreprocessor:
        return BrightnessPreprocessor(size, preprocess_dir)

    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.latency_s > 0:
            time.sleep(self.latency_s)
        pixels = np.asarray(batch["pixels"], np.float32)  # [B, 3, S, S]
        if self.calls_dir:
            with open(os.path.join(self.calls_dir, f"call-{uuid.uuid4().hex}"), "w") as fh:
                fh.write(str(len(pixels)))
        luma = np.einsum("bchw,c->bhw", pixels, _LUMA) / 255.0
        flat = luma.reshape(len(luma), -1)
        bins = np.stack(
            [
                (flat < 1 / 3).mean(1),
                ((flat >= 1 / 3) & (flat < 2 / 3)).mean(1),
                (flat >= 2 / 3).mean(1),
            ],
            axis=1,
        )
        return {"score": flat.mean(1).astype(np.float32), "probs": bins.astype(np.float32)}
