"""Q-Align's rating levels: MOS → level labels for training, level logits → score at inference.

Reference: Wu et al., "Q-Align: Teaching LMMs for Visual Scoring via Discrete Text-Defined
Levels" (ICML 2024), Sec. 3.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.quality_math.arrays import as_float_tensor, like_input

if TYPE_CHECKING:
    import torch

LEVELS: tuple[str, ...] = ("bad", "poor", "fair", "good", "excellent")
"""The five text-defined rating levels, worst first; level index i has score i + 1."""

LEVEL_SCORES: tuple[float, ...] = (1.0, 2.0, 3.0, 4.0, 5.0)
"""G(l_i) = i: the score each level stands for at inference."""


def mos_to_level(mos: Any, low: Any, high: Any) -> np.ndarray:
    """Map MOS values to level indices 0..4 (bad..excellent) by Q-Align's equal-interval rule.

    ``L(s) = l_i  if  m + (i-1)/5 · (M-m) < s <= m + i/5 · (M-m)``,  i = 1..5,
    with ``m = low`` and ``M = high``; the returned index is ``i - 1``. A value exactly on a
    boundary belongs to the lower level; ``s = m`` itself is level 0 (bad).

    ``mos``, ``low`` and ``high`` broadcast against each other (per-row scales are fine).
    Raises ``ValueError`` for NaN, for ``low >= high`` or for values outside ``[low, high]``.
    Scales where lower is better (DMOS) must be flipped by the caller first.
    """
    s = np.asarray(mos, dtype=np.float64)
    m = np.asarray(low, dtype=np.float64)
    big_m = np.asarray(high, dtype=np.float64)
    s, m, big_m = np.broadcast_arrays(s, m, big_m)
    if np.isnan(s).any():
        raise ValueError("mos_to_level: MOS contains NaN")
    if not (m < big_m).all():
        raise ValueError("mos_to_level: every scale needs low < high")
    outside = (s < m) | (s > big_m)
    if outside.any():
        bad = s[outside][:5].tolist()
        raise ValueError(
            f"mos_to_level: {int(outside.sum())} value(s) outside [low, high], e.g. {bad}"
        )
    # Upper boundaries of levels 1..4, computed exactly as the rule states them.
    fractions = np.arange(1, len(LEVELS)) / len(LEVELS)  # 0.2, 0.4, 0.6, 0.8
    bounds = m[..., None] + fractions * (big_m - m)[..., None]  # [..., 4]
    # Level index = number of upper boundaries strictly below s.
    return (s[..., None] > bounds).sum(axis=-1).astype(np.int64)


def level_probs(level_logits: Any) -> Any:
    """Closed-set softmax over the last axis (the five level logits, bad..excellent)."""
    import torch

    logits = as_float_tensor(level_logits)
    _check_last_axis(logits, len(LEVELS), "level_probs")
    return like_input(torch.softmax(logits, dim=-1), level_logits)


def level_score(level_logits: Any) -> Any:
    """Q-Align score from level logits: ``S = Σ_i softmax(χ)_i · i`` over the last axis.

    ``level_logits[..., k]`` is the logit of ``LEVELS[k]`` (bad first). Returns an array of
    the leading shape with values in ``[1, 5]``. The official HF scorer orders the words
    excellent..bad and weights them (5..1): the same number.
    """
    import torch

    logits = as_float_tensor(level_logits)
    _check_last_axis(logits, len(LEVELS), "level_score")
    weights = torch.tensor(LEVEL_SCORES, dtype=logits.dtype, device=logits.device)
    score = torch.softmax(logits, dim=-1) @ weights
    return like_input(score, level_logits)


def _check_last_axis(x: torch.Tensor, size: int, name: str) -> None:
    if x.ndim == 0 or x.shape[-1] != size:
        raise ValueError(f"{name}: last axis must have {size} entries, got shape {tuple(x.shape)}")
