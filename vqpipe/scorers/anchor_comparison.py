"""Compare2Score's anchor comparison, the object both Compare2Score scorers hold: the anchor
set, its matrix ``P_a[i, j] = P(anchor_i ≻ anchor_j)`` and the Thurstone MAP score of a test
image from its m comparisons with the anchors.

A scorer supplies the comparisons (its model's logits of the comparison words, and its
anchors as inputs to them); :class:`AnchorComparison` does the rest. ``P_a`` is given
(:class:`AnchorOptions` or the set's ``matrix.json``), read from the disk cache, or made once
from the scorer's comparisons of the anchors with each other and cached under
``$VQPIPE_CACHE/compare2score``.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.io.checkpoints import default_cache_dir
from vqpipe.quality_math.comparison import soft_comparison
from vqpipe.quality_math.thurstone import thurstone_map
from vqpipe.scorers.anchor_sets import AnchorSet, check_anchor_matrix, load_anchor_set

if TYPE_CHECKING:
    import torch

OUTPUTS = ("thurstone", "official")
"""What ``score`` may be: the raw Thurstone MAP value, or the official ``score_100``."""
EXTRA_OUTPUTS = ("thurstone", "score_100")
"""Per-item outputs besides ``score`` and ``probs`` (quality-table columns)."""
SCORE_RANGE = (-10.0, 10.0)
"""The raw Thurstone value's range (``score_100`` is on 0..100)."""


@dataclass(frozen=True)
class AnchorOptions:
    """How a Compare2Score scorer compares with anchors. ``anchors``: an anchor-set directory
    or :class:`~vqpipe.scorers.anchor_sets.AnchorSet` (None: the bundled synthetic set);
    ``anchor_matrix``: a precomputed ``P_a`` (None: the set's, else computed and cached);
    ``output``: what ``score`` is, ``thurstone`` (the raw MAP value) or ``official``
    (``score_100``); ``temperature`` of the soft comparison; ``cache_dir``: where computed
    matrices are kept (None: the vqpipe cache)."""

    anchors: str | os.PathLike | AnchorSet | None = None
    anchor_matrix: Sequence[Sequence[float]] | np.ndarray | None = None
    output: str = "thurstone"
    temperature: float = 100.0
    cache_dir: str | os.PathLike | None = None

    def __post_init__(self) -> None:
        if self.output not in OUTPUTS:
            raise ValueError(f"output must be 'thurstone' or 'official', got {self.output!r}")
        object.__setattr__(self, "temperature", float(self.temperature))

    def anchor_set(self) -> AnchorSet:
        """The anchor set, loaded."""
        if isinstance(self.anchors, AnchorSet):
            return self.anchors
        return load_anchor_set(self.anchors)


def add_test_rows(anchor_matrix: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(m+1)×(m+1) matrices, one per row of ``p`` [B, m]: ``C[m, j] = p_j``,
    ``C[j, m] = 1 − p_j``, ``C[m, m] = 0.5`` around the anchor matrix."""
    b, m = p.shape
    c = np.empty((b, m + 1, m + 1), dtype=np.float64)
    c[:, :m, :m] = anchor_matrix
    c[:, m, :m] = p
    c[:, :m, m] = 1.0 - p
    c[:, m, m] = 0.5
    return c


def map_scores(anchor_matrix: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Exact MAP scores of test images from their anchor probabilities ``p`` [B, m]:
    ``thurstone`` (raw, the test item's q) and ``score_100`` (official min-max to 0..100)."""
    q = np.asarray(thurstone_map(add_test_rows(anchor_matrix, p)))
    low, high = q.min(axis=1), q.max(axis=1)
    span = np.where(high > low, high - low, 1.0)
    return {"thurstone": q[:, -1], "score_100": 100.0 * (q[:, -1] - low) / span}


def symmetric_matrix(raw: np.ndarray) -> np.ndarray:
    """``P_a`` from the comparisons of the anchors with each other, ``raw[i, j]`` =
    P(anchor_i second ≻ anchor_j first): both orders of every pair averaged, so that
    ``P[i, j] = 1 − P[j, i]``; diagonal 0.5."""
    raw = np.asarray(raw, dtype=np.float64)
    matrix = (raw + (1.0 - raw.T)) / 2.0
    np.fill_diagonal(matrix, 0.5)
    return matrix


class AnchorComparison:
    """An anchor set with its matrix ``P_a``, and the scores of test images (:meth:`predict`)
    from a scorer's comparisons: ``logits(inputs)`` gives the [B, m, 5] logits of the
    comparison words for every test input against every anchor, ``anchor_inputs`` are the
    anchors as ``logits`` takes test inputs. The object both Compare2Score scorers hold.

    ``P_a`` is the options' or the set's when given, else read from the disk cache, else made
    now from the anchors compared with each other (:meth:`compute_matrix`) and cached.
    ``fingerprint`` (the checkpoint's identity; None, a model object: no disk cache) and
    ``model_key`` (what else changes the model's comparisons: the scorer, dtype, prompt) key
    the cached matrix."""

    def __init__(
        self,
        options: AnchorOptions,
        anchors: AnchorSet,
        logits: Callable[[Any], torch.Tensor],
        anchor_inputs: Any,
        fingerprint: str | None = None,
        model_key: Sequence[Any] = (),
    ) -> None:
        self.options = options
        self.anchors = anchors
        self.logits = logits
        self.anchor_inputs = anchor_inputs
        self.labels = tuple(f"anchor{j}" for j in range(len(anchors)))
        given = options.anchor_matrix if options.anchor_matrix is not None else anchors.matrix
        if given is not None:
            matrix = given
        elif fingerprint is None:  # a model object: no stable key, no disk cache
            matrix = self.compute_matrix()
        else:
            key = [fingerprint, anchors.fingerprint, options.temperature, *model_key]
            matrix = self._cached(key, self.compute_matrix)
        self.matrix = np.asarray(matrix, dtype=np.float64)
        check_anchor_matrix(self.matrix, len(anchors))

    def probs(self, inputs: Any) -> np.ndarray:
        """``P(test ≻ anchor_j)`` for every test input and anchor, [B, m] (the soft comparison
        of the logits at the options' ``temperature``)."""
        logits = self.logits(inputs)
        return soft_comparison(logits, temperature=self.options.temperature).cpu().numpy()

    def compute_matrix(self) -> np.ndarray:
        """``P_a`` from the model: every anchor compared with every anchor, both orders."""
        return symmetric_matrix(self.probs(self.anchor_inputs))

    def predict(self, inputs: Any) -> dict[str, np.ndarray]:
        """Test inputs → ``score``, ``thurstone``, ``score_100`` [B], ``probs`` [B, m]."""
        return self.scores(self.probs(inputs))

    def _cached(self, key: list[Any], compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The matrix cached under ``key``, else ``compute()``, written there atomically."""
        name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
        cache_dir = self.options.cache_dir
        root = default_cache_dir() if cache_dir is None else cache_dir
        path = os.path.join(os.fspath(root), "compare2score", f"{name}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                return np.asarray(json.load(fh)["matrix"], dtype=np.float64)
        matrix = compute()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"key": key, "matrix": matrix.tolist()}, fh)
        os.replace(tmp, path)
        return matrix

    def scores(self, p: np.ndarray) -> dict[str, np.ndarray]:
        """``score``, ``thurstone``, ``score_100`` [B] and ``probs`` [B, m] of test images
        from ``p`` [B, m], P(test ≻ anchor_j)."""
        scores = map_scores(self.matrix, p)
        main = scores["thurstone"] if self.options.output == "thurstone" else scores["score_100"]
        return {
            "score": main.astype(np.float32),
            "probs": p.astype(np.float32),
            "thurstone": scores["thurstone"].astype(np.float32),
            "score_100": scores["score_100"].astype(np.float32),
        }

    def metadata(self) -> dict[str, Any]:
        return {
            "output": self.options.output,
            "anchors": str(self.anchors.root),
            "anchor_fingerprint": self.anchors.fingerprint,
            "anchor_mos": self.anchors.table["mos"].tolist(),
            "temperature": self.options.temperature,
        }
