"""Compare2Score's comparative levels: MOS pairs → level labels, level logits → soft preference.

Reference: Zhu et al., "Adaptive Image Quality Assessment via Teaching Large Multimodal Model to
Compare" (NeurIPS 2024), Sec. 3.2 (pair labels) and Sec. 3.4 (soft comparison).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.quality_math.arrays import as_float_tensor, like_input

if TYPE_CHECKING:
    pass

COMPARISON_LEVELS: tuple[str, ...] = ("inferior", "worse", "similar", "better", "superior")
"""How the second (test) image compares with the first (anchor), worst first."""

COMPARISON_WEIGHTS: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
"""w_k: the preference probability each comparative level stands for."""


def comparison_level_index(q_i: Any, q_j: Any, sigma_i: Any, sigma_j: Any) -> np.ndarray:
    """Index into :data:`COMPARISON_LEVELS` of image *i* compared with image *j*.

    With ``q_ij = q_i - q_j`` and ``σ_ij = sqrt(σ_i² + σ_j²)``::

        q_ij >  2σ          → superior (4)
        σ  < q_ij <= 2σ     → better   (3)
        -σ < q_ij <= σ      → similar  (2)
        -2σ < q_ij <= -σ    → worse    (1)
        q_ij <= -2σ         → inferior (0)

    Inputs broadcast; σ must be >= 0. In the training prompt image *i* is the second image.
    """
    qi, qj, si, sj = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (q_i, q_j, sigma_i, sigma_j))
    )
    if (si < 0).any() or (sj < 0).any():
        raise ValueError("comparison_level: rating std must be >= 0")
    if np.isnan(qi).any() or np.isnan(qj).any():
        raise ValueError("comparison_level: quality scores contain NaN")
    diff = qi - qj
    sigma = np.sqrt(si**2 + sj**2)
    # Number of thresholds (-2σ, -σ, σ, 2σ) that q_ij strictly exceeds = level index.
    thresholds = np.stack([-2 * sigma, -sigma, sigma, 2 * sigma], axis=-1)
    return (diff[..., None] > thresholds).sum(axis=-1).astype(np.int64)


def comparison_level(q_i: Any, q_j: Any, sigma_i: Any, sigma_j: Any) -> str | np.ndarray:
    """Comparative level word of image *i* versus image *j* (see :func:`comparison_level_index`).

    Scalars in → a ``str``; arrays in → a numpy array of ``str`` of the broadcast shape.
    """
    index = comparison_level_index(q_i, q_j, sigma_i, sigma_j)
    words = np.asarray(COMPARISON_LEVELS)[index]
    return str(words) if words.ndim == 0 else words


def soft_comparison(level_logits: Any, temperature: float = 1.0) -> Any:
    """Soft preference of the test image over the anchor from comparative-level logits.

    ``P(test ≻ anchor) = Σ_k w_k · softmax(logits / T)_k`` with
    ``w = (0, 0.25, 0.5, 0.75, 1)`` for (inferior, worse, similar, better, superior), over the
    last axis. The official Compare2Score release divides the logits by 100 (``temperature=100``).
    """
    import torch

    if temperature <= 0:
        raise ValueError("soft_comparison: temperature must be > 0")
    logits = as_float_tensor(level_logits)
    if logits.ndim == 0 or logits.shape[-1] != len(COMPARISON_LEVELS):
        raise ValueError(
            f"soft_comparison: last axis must have {len(COMPARISON_LEVELS)} entries, "
            f"got shape {tuple(logits.shape)}"
        )
    weights = torch.tensor(COMPARISON_WEIGHTS, dtype=logits.dtype, device=logits.device)
    prob = torch.softmax(logits / temperature, dim=-1) @ weights
    return like_input(prob, level_logits)
