"""Thurstone Case V MAP: checked against scipy's optimiser and hand-worked cases."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import optimize, stats

from vqpipe.scoring import thurstone_map, thurstone_objective

OFFICIAL_ANCHOR_MATRIX = np.array(
    [
        [0.5, 0.25912809, 3.3130276e-04, 1.6087297e-06, 1.1803027e-09],
        [0.74087191, 0.5, 0.24985345, 0.099954158, 1.8675303e-08],
        [0.99966872, 0.75014657, 0.5, 0.4996888, 0.24852838],
        [0.99999839, 0.90004587, 0.5003112, 0.5, 0.25400183],
        [1.0, 1.0, 0.75147164, 0.74599814, 0.5],
    ]
)


def scipy_map(P: np.ndarray) -> np.ndarray:
    """Independent reference: SLSQP on the stated objective with the Σq = 0 constraint."""

    def negative_objective(q):
        d = q[:, None] - q[None, :]
        return -(P * stats.norm.logcdf(d)).sum() + 0.5 * (q**2).sum()

    n = P.shape[0]
    result = optimize.minimize(
        negative_objective,
        np.zeros(n),
        method="SLSQP",
        constraints=[{"type": "eq", "fun": lambda q: q.sum()}],
        options={"ftol": 1e-15, "maxiter": 1000},
    )
    assert result.success, result.message
    return result.x


def scipy_gradient(q: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Gradient of the negative objective, written with scipy.stats (not our code)."""
    d = q[:, None] - q[None, :]
    ratio = stats.norm.pdf(d) / stats.norm.cdf(d)
    w = P * ratio
    return -w.sum(1) + w.sum(0) + q


def random_preference_matrices(rng, batch, n):
    """Valid comparison matrices: P_ij = 1 - P_ji, diagonal 0.5, noisy Thurstone truth."""
    q = rng.normal(size=(batch, n)) * rng.uniform(0.2, 3.0, size=(batch, 1))
    P = stats.norm.cdf(q[:, :, None] - q[:, None, :])
    P = np.clip(P + rng.normal(scale=0.1, size=P.shape), 0.0, 1.0)
    upper = np.triu(P, 1)
    P = upper + np.transpose(1 - upper, (0, 2, 1)) * np.tril(np.ones((n, n)), -1)
    P[:, np.arange(n), np.arange(n)] = 0.5
    return P


@pytest.mark.parametrize("n", range(2, 13))
def test_matches_scipy_on_random_batches(n):
    rng = np.random.default_rng(100 + n)
    P = random_preference_matrices(rng, 64, n)
    ours = thurstone_map(P)
    assert ours.shape == (64, n)
    step = 1 if n <= 6 else 4  # scipy is slow: check a subset of the bigger batches
    for b in range(0, 64, step):
        np.testing.assert_allclose(ours[b], scipy_map(P[b]), atol=1e-5)
    np.testing.assert_allclose(ours.sum(-1), 0.0, atol=1e-12)


def test_single_matrix_equals_its_batch_row():
    rng = np.random.default_rng(7)
    P = random_preference_matrices(rng, 5, 6)
    batched = thurstone_map(P)
    for b in range(5):
        np.testing.assert_allclose(thurstone_map(P[b]), batched[b], atol=1e-12)


def test_hand_worked_2x2():
    # For P = [[.5, p], [1-p, .5]] the optimum is q = (a, -a) with
    #   p·r(2a) − (1−p)·r(−2a) = a,   r = φ/Φ   ⇒   p = (a + r(−2a)) / (r(2a) + r(−2a)).
    def r(x):
        return stats.norm.pdf(x) / stats.norm.cdf(x)

    for a in [0.0, 0.05, 0.1, 0.2, 0.3, 0.35]:
        p = (a + r(-2 * a)) / (r(2 * a) + r(-2 * a))
        assert 0.5 <= p <= 1.0  # a valid probability (a is below the p = 1 solution ≈ 0.383)
        q = thurstone_map(np.array([[0.5, p], [1 - p, 0.5]]))
        np.testing.assert_allclose(q, [a, -a], atol=1e-9)


def test_hand_worked_certain_preference_2x2():
    # p = 1: the optimum solves r(2a) = a (no NaN despite log Φ of a sure event).
    a = optimize.brentq(lambda x: stats.norm.pdf(2 * x) / stats.norm.cdf(2 * x) - x, 0, 5)
    q = thurstone_map(np.array([[0.5, 1.0], [0.0, 0.5]]))
    np.testing.assert_allclose(q, [a, -a], atol=1e-9)


def test_zero_one_entries_full_ordering():
    n = 8
    # Item i beats every j < i for sure.
    P = np.tril(np.ones((n, n)), -1) + 0.5 * np.eye(n)
    q = thurstone_map(P)
    assert np.isfinite(q).all()
    assert np.all(np.diff(q) > 0)
    np.testing.assert_allclose(q, scipy_map(P), atol=1e-5)
    np.testing.assert_allclose(scipy_gradient(q, P), 0.0, atol=1e-8)


def test_zero_one_entries_random_mix():
    rng = np.random.default_rng(11)
    P = random_preference_matrices(rng, 16, 6)
    P = np.where(rng.random(P.shape) < 0.3, np.round(P), P)  # push many entries to 0 or 1
    q = thurstone_map(P)
    assert np.isfinite(q).all()
    for b in range(16):
        np.testing.assert_allclose(q[b], scipy_map(P[b]), atol=1e-5)


def test_official_anchor_matrix_orders_anchors_and_test_image():
    q = thurstone_map(OFFICIAL_ANCHOR_MATRIX)
    assert np.all(np.diff(q) > 0)  # anchors are listed low → high quality
    np.testing.assert_allclose(q, scipy_map(OFFICIAL_ANCHOR_MATRIX), atol=1e-5)
    # A test image slightly better than anchor 3 lands between anchors 3 and 4.
    p = np.array([0.99, 0.9, 0.6, 0.45, 0.2])  # P(test ≻ anchor_j)
    full = np.full((6, 6), 0.5)
    full[:5, :5] = OFFICIAL_ANCHOR_MATRIX
    full[5, :5] = p
    full[:5, 5] = 1 - p
    scores = thurstone_map(full)
    assert scores[2] < scores[5] < scores[4]


def test_is_the_optimum_of_the_stated_objective():
    rng = np.random.default_rng(5)
    P = random_preference_matrices(rng, 8, 7)
    q = thurstone_map(P)
    for b in range(8):
        np.testing.assert_allclose(scipy_gradient(q[b], P[b]), 0.0, atol=1e-8)
        f = thurstone_objective(q[b], P[b])
        for _ in range(20):  # every feasible perturbation is worse
            delta = rng.normal(size=7) * 1e-3
            delta -= delta.mean()
            assert thurstone_objective(q[b] + delta, P[b]) > f


def test_counts_leading_dims_and_torch():
    rng = np.random.default_rng(9)
    counts = rng.integers(0, 20, size=(2, 3, 4, 4)).astype(float)
    q = thurstone_map(counts)
    assert q.shape == (2, 3, 4)
    np.testing.assert_allclose(q[1, 2], scipy_map(counts[1, 2]), atol=1e-5)
    qt = thurstone_map(torch.tensor(counts, dtype=torch.float32))
    assert isinstance(qt, torch.Tensor) and qt.dtype == torch.float32
    np.testing.assert_allclose(qt.numpy(), q, atol=1e-5)


def test_single_item_and_symmetric_matrix_give_zero():
    np.testing.assert_allclose(thurstone_map(np.array([[0.5]])), [0.0])
    np.testing.assert_allclose(thurstone_map(np.full((5, 5), 0.5)), np.zeros(5), atol=1e-12)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3, 4)), np.zeros(3), np.array([[0.5, np.nan], [0.5, 0.5]]), -np.ones((2, 2))],
)
def test_invalid_input_raises(bad):
    with pytest.raises(ValueError):
        thurstone_map(bad)


@settings(max_examples=40, deadline=None)
@given(arrays(np.float64, (5, 5), elements=st.floats(0.0, 1.0)))
def test_any_nonnegative_matrix_gives_a_stationary_point(P):
    q = thurstone_map(P)
    assert np.isfinite(q).all()
    assert abs(q.sum()) < 1e-10
    np.testing.assert_allclose(scipy_gradient(q, P), 0.0, atol=1e-8)
