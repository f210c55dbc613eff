"""Compare2Score comparative levels and soft comparison."""

import numpy as np
import pytest
import torch

from vqpipe.scoring import COMPARISON_LEVELS, comparison_level, soft_comparison


@pytest.mark.parametrize(
    ("q_i", "q_j", "expected"),
    [
        (3.0, 0.0, "superior"),  # q_ij = 3 > 2σ (σ = 1)
        (2.0, 0.0, "better"),  # exactly 2σ → better (σ < q ≤ 2σ)
        (1.5, 0.0, "better"),
        (1.0, 0.0, "similar"),  # exactly σ → similar
        (0.0, 0.0, "similar"),
        (-0.5, 0.0, "similar"),
        (-1.0, 0.0, "worse"),  # exactly -σ → worse
        (-1.5, 0.0, "worse"),
        (-2.0, 0.0, "inferior"),  # exactly -2σ → inferior
        (-5.0, 0.0, "inferior"),
    ],
)
def test_comparison_level_thresholds(q_i, q_j, expected):
    s = np.sqrt(0.5)  # σ_ij = sqrt(0.5 + 0.5) = 1
    assert comparison_level(q_i, q_j, s, s) == expected


def test_comparison_level_uses_combined_sigma_and_broadcasts():
    # σ_ij = sqrt(0.3² + 0.4²) = 0.5
    out = comparison_level(np.array([1.2, 0.7, 0.2, -0.7, -1.2]), 0.0, 0.3, 0.4)
    assert out.tolist() == ["superior", "better", "similar", "worse", "inferior"]


def test_comparison_level_rejects_negative_sigma():
    with pytest.raises(ValueError):
        comparison_level(1.0, 0.0, -0.1, 0.2)


def test_soft_comparison_one_hot_and_uniform():
    big = 1e4
    logits = np.full((5, 5), -big)
    np.fill_diagonal(logits, big)
    np.testing.assert_allclose(soft_comparison(logits), [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(soft_comparison(np.zeros(5)), 0.5)
    assert len(COMPARISON_LEVELS) == 5


def test_soft_comparison_temperature_matches_official_divide_by_100():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(6, 5)) * 200
    scaled = logits / 100
    probs = np.exp(scaled - scaled.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = probs @ np.array([0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(soft_comparison(logits, temperature=100), expected, rtol=1e-12)


def test_soft_comparison_torch():
    out = soft_comparison(torch.zeros(2, 3, 5, dtype=torch.float16))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    torch.testing.assert_close(out, torch.full((2, 3), 0.5))
