"""Direct pairwise comparison with a Compare2Score LMM: P(b ≻ a) for given image pairs.

The official prompt compares the *second* image with the *first*; its soft comparison
``Σ_k w_k · softmax(logits_k / T)`` is ``P(second ≻ first)``. Each pair (a, b) is asked in both
orders:

- ``p_b_better_ab`` — a first, b second: the official ``P(b ≻ a)``;
- ``p_b_better_ba`` — b first, a second: ``1 − P(a ≻ b)``;
- ``p_b_better`` — their mean; ``order_gap = p_b_better_ab − p_b_better_ba`` — the model's
  position bias on this pair (0 for an order-consistent model; a confidence signal);
- ``level_probs_ab`` / ``level_probs_ba`` [N, 5] — ``softmax(logits / T)`` over (inferior,
  worse, similar, better, superior) of each order, as asked: how the *second* image of that
  order compares with its first (b vs a for ``ab``, a vs b for ``ba``).

Both orders of a batch run in one :meth:`pair_logits` call of the scorer, so every distinct
image goes through the vision tower once and (native mPLUG-Owl2) each distinct first image's
prefix KV cache is computed once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.quality_math.comparison import soft_comparison

if TYPE_CHECKING:
    import torch

PAIR_OUTPUTS = (
    "p_b_better_ab",
    "p_b_better_ba",
    "p_b_better",
    "order_gap",
    "level_probs_ab",
    "level_probs_ba",
)
"""What :func:`compare_pairs` returns (the comparison table's output columns)."""


def can_compare(cls: type) -> bool:
    """Whether a scorer class compares given pairs (has ``pair_logits``)."""
    return callable(getattr(cls, "pair_logits", None))


def pair_outputs(
    logits_ab: torch.Tensor, logits_ba: torch.Tensor, temperature: float
) -> dict[str, np.ndarray]:
    """The outputs of :data:`PAIR_OUTPUTS` from the five word logits of each order [N, 5]."""
    import torch

    p_ab = np.asarray(soft_comparison(logits_ab, temperature=temperature).cpu(), np.float64)
    p_a_better = np.asarray(soft_comparison(logits_ba, temperature=temperature).cpu(), np.float64)
    p_ba = 1.0 - p_a_better
    return {
        "p_b_better_ab": p_ab,
        "p_b_better_ba": p_ba,
        "p_b_better": (p_ab + p_ba) / 2.0,
        "order_gap": p_ab - p_ba,
        "level_probs_ab": torch.softmax(logits_ab / temperature, -1).cpu().double().numpy(),
        "level_probs_ba": torch.softmax(logits_ba / temperature, -1).cpu().double().numpy(),
    }


def compare_pairs(
    scorer: Any, images: Sequence[Any], a: Sequence[int], b: Sequence[int]
) -> dict[str, np.ndarray]:
    """Both orders of the pairs ``(images[a[n]], images[b[n]])``, in one ``pair_logits`` call.

    ``images``: each distinct image once, in the form the scorer's CPU half gives
    (``scorer.preprocess(image)["pixels"]``); ``a``, ``b``: indices into it, one per pair.
    """
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    n = len(a)
    if n == 0:
        return {k: np.zeros((0, 5) if k.startswith("level") else 0) for k in PAIR_OUTPUTS}
    logits = scorer.pair_logits(images, np.concatenate([a, b]), np.concatenate([b, a]))
    return pair_outputs(logits[:n], logits[n:], scorer.temperature)


def compare_images(
    scorer: Any,
    items_a: Sequence[Any],
    items_b: Sequence[Any],
    storage_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Library use: :data:`PAIR_OUTPUTS` for the pairs ``(items_a[n], items_b[n])`` — paths or
    URIs, PIL images, arrays (what ``scorer.score`` takes). An item that appears in several
    pairs (the same path, or the same object) is read, preprocessed and encoded once."""
    from vqpipe.scorers.inputs import as_items

    if len(items_a) != len(items_b):
        raise ValueError(f"{len(items_a)} first images but {len(items_b)} second images")
    keys: dict[Any, int] = {}
    distinct: list[Any] = []
    index = []
    for item in [*items_a, *items_b]:
        key = os.fspath(item) if isinstance(item, (str, os.PathLike)) else id(item)
        if key not in keys:
            keys[key] = len(distinct)
            distinct.append(item)
        index.append(keys[key])
    if storage_options is None:
        storage_options = getattr(scorer, "storage_options", None)
    loaded, _ = as_items(distinct, storage_options)
    images = [scorer.preprocess(item)["pixels"] for item in loaded]
    n = len(items_a)
    return compare_pairs(scorer, images, index[:n], index[n:])
