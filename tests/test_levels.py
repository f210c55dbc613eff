"""Q-Align level math: the equal-interval rule and the closed-set softmax score."""

import numpy as np
import pytest
import torch

from vqpipe.scoring import LEVELS, level_probs, level_score, mos_to_level


def test_levels_constant():
    assert LEVELS == ("bad", "poor", "fair", "good", "excellent")


def test_mos_to_level_interiors_and_boundaries_on_1_5():
    # Boundaries at 1.8, 2.6, 3.4, 4.2: a value on a boundary belongs to the lower level.
    mos = [1.0, 1.5, 1.8, 1.8000001, 2.6, 3.0, 3.4, 4.2, 4.2000001, 5.0]
    assert mos_to_level(mos, 1, 5).tolist() == [0, 0, 0, 1, 1, 2, 2, 3, 4, 4]


def test_mos_to_level_boundaries_on_0_100():
    mos = np.array([0, 20, 20.5, 40, 60, 60.01, 80, 99, 100])
    assert mos_to_level(mos, 0, 100).tolist() == [0, 0, 1, 1, 2, 3, 3, 4, 4]


def test_mos_to_level_matches_the_rule_written_out():
    rng = np.random.default_rng(1)
    low, high = 0.0, 10.0
    mos = np.concatenate([rng.uniform(low, high, 500), np.linspace(low, high, 51)])
    expected = []
    for s in mos:
        level = 0
        for i in range(1, 6):
            if low + (i - 1) / 5 * (high - low) < s <= low + i / 5 * (high - low):
                level = i - 1
        expected.append(level)
    assert mos_to_level(mos, low, high).tolist() == expected


def test_mos_to_level_per_row_scales_and_shape():
    mos = np.array([[1.0, 50.0], [4.9, 99.0]])
    low = np.array([1.0, 0.0])
    high = np.array([5.0, 100.0])
    out = mos_to_level(mos, low, high)
    assert out.shape == (2, 2)
    assert out.tolist() == [[0, 2], [4, 4]]


@pytest.mark.parametrize("bad", [[0.99], [5.01], [float("nan")]])
def test_mos_to_level_rejects_values_outside_scale(bad):
    with pytest.raises(ValueError):
        mos_to_level(bad, 1, 5)


def test_mos_to_level_rejects_empty_scale():
    with pytest.raises(ValueError):
        mos_to_level([3.0], 5, 5)


def test_level_score_one_hot_gives_the_level():
    big = 1e4
    logits = np.full((5, 5), -big)
    np.fill_diagonal(logits, big)
    np.testing.assert_allclose(level_score(logits), [1, 2, 3, 4, 5])


def test_level_score_uniform_is_three():
    np.testing.assert_allclose(level_score(np.zeros((3, 5))), [3.0, 3.0, 3.0])
    np.testing.assert_allclose(level_score(np.full(5, 7.5)), 3.0)


def test_level_score_is_softmax_weighted_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 7, 5)) * 3
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(level_score(logits), probs @ np.arange(1, 6), rtol=1e-12)
    np.testing.assert_allclose(level_probs(logits), probs, rtol=1e-12)


def test_level_score_torch_in_torch_out_and_bf16_upcast():
    logits = torch.randn(8, 5, dtype=torch.bfloat16)
    out = level_score(logits)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    expected = (torch.softmax(logits.float(), -1) * torch.arange(1, 6)).sum(-1)
    torch.testing.assert_close(out, expected)


def test_level_score_rejects_wrong_width():
    with pytest.raises(ValueError):
        level_score(np.zeros((2, 4)))
