"""SRCC / KRCC / PLCC against scipy.stats and on known monotone transforms."""

import warnings

import numpy as np
import pytest
from scipy import optimize, stats

from vqpipe.eval import MetricWarning, fit_logistic, krcc, logistic4, logistic5, plcc, srcc
from vqpipe.eval import metrics as metrics_module


@pytest.fixture
def noisy_pair():
    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 300)
    pred = mos + rng.normal(scale=0.6, size=300)
    return pred, mos


def test_rank_metrics_match_scipy(noisy_pair):
    pred, mos = noisy_pair
    assert srcc(pred, mos) == pytest.approx(stats.spearmanr(pred, mos).statistic, abs=1e-12)
    assert krcc(pred, mos) == pytest.approx(stats.kendalltau(pred, mos).statistic, abs=1e-12)


def test_rank_metrics_with_ties_match_scipy():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 5, 200).astype(float)
    mos = pred + rng.integers(0, 3, 200)
    assert srcc(pred, mos) == pytest.approx(stats.spearmanr(pred, mos).statistic, abs=1e-12)
    assert krcc(pred, mos) == pytest.approx(stats.kendalltau(pred, mos).statistic, abs=1e-12)


def test_plcc_without_fit_is_pearson(noisy_pair):
    pred, mos = noisy_pair
    assert plcc(pred, mos, fit=None) == pytest.approx(stats.pearsonr(pred, mos).statistic)


@pytest.mark.parametrize("fit", ["logistic5", "logistic4"])
def test_logistic_fit_linearises_a_monotone_transform(fit):
    # MOS saturates as a sigmoid of the predictions (a model with an unbounded output): Pearson
    # on the raw values is clearly below 1, after the logistic mapping it is ~1.
    rng = np.random.default_rng(2)
    pred = rng.normal(0.0, 2.0, 400)
    mos = 1 + 4 / (1 + np.exp(-1.5 * pred)) + rng.normal(scale=0.01, size=400)
    raw = plcc(pred, mos, fit=None)
    fitted = plcc(pred, mos, fit=fit)
    assert raw < 0.98
    assert fitted >= 0.99
    assert srcc(pred, mos) > 0.99


def test_logistic5_fit_recovers_a_generated_curve():
    x = np.linspace(-3, 3, 200)
    params = (4.0, 1.5, 0.2, 0.1, 3.0)
    y = logistic5(x, *params)
    fit = fit_logistic(x, y, "logistic5")
    assert fit.converged
    np.testing.assert_allclose(fit(x), y, atol=1e-6)


@pytest.mark.parametrize("fit", ["logistic5", "logistic4"])
def test_decreasing_relation_is_fitted_decreasing_and_plcc_is_signed(fit):
    x = np.linspace(0, 10, 150)
    y = logistic4(x, 1.0, 5.0, 5.0, 1.2)  # decreasing: b1 < b2
    mapping = fit_logistic(x, y, fit)
    assert mapping.direction == -1 and mapping.kind == fit
    assert np.all(np.diff(mapping(np.linspace(-5, 15, 2000))) <= 1e-12)
    # signed like SRCC: a scorer that ranks backwards is not reported as a good one
    assert plcc(x, y, fit=fit) < -0.999
    assert plcc(x, y, fit=fit) == pytest.approx(-stats.pearsonr(mapping(x), y).statistic)


def _bowl(seed: int, sign: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Hard data: MOS falls, then rises more (SRCC > 0) — an unconstrained logistic5 follows
    the dip and so inflates PLCC."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, 80)
    return sign * x, 4 * (x - 0.3) ** 2 + rng.normal(0, 0.05, 80)


def test_unconstrained_logistic5_bends_on_the_hard_data():
    # the data below is hard: scipy's unconstrained fit (pyiqa's start) falls then rises
    x, y = _bowl(0)
    p0 = [y.max(), y.min(), x.mean(), 0.1, 0.1]
    with np.errstate(all="ignore"):
        params, _ = optimize.curve_fit(logistic5, x, y, p0=p0, maxfev=20000)
    slope = np.diff(logistic5(np.linspace(0, 1, 500), *params))
    assert slope.min() < -1e-3 < 1e-3 < slope.max()
    assert stats.pearsonr(logistic5(x, *params), y).statistic > plcc(x, y)


@pytest.mark.parametrize("fit", ["logistic5", "logistic4"])
@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fit_never_bends_the_wrong_way_on_hard_data(fit, seed, sign):
    x, y = _bowl(seed, sign)
    mapping = fit_logistic(x, y, fit)
    assert mapping.converged and mapping.direction == np.sign(srcc(x, y)) == sign
    grid = np.linspace(x.min() - 1, x.max() + 1, 4000)
    assert np.all(sign * np.diff(mapping(grid)) >= -1e-12)


def test_logistic5_fit_equals_scipy_where_the_constraint_is_inactive():
    # the least-squares optimum is monotone here, so the constrained fit is scipy's
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, 300)
    y = logistic5(x, 4.0, 1.2, 0.0, 0.1, 3.0) + rng.normal(0, 0.2, 300)
    reference, _ = optimize.curve_fit(logistic5, x, y, p0=[4, 1.2, 0, 0.1, 3], maxfev=20000)
    mapping = fit_logistic(x, y)
    np.testing.assert_allclose(mapping.params, reference, rtol=1e-4, atol=1e-6)
    sse = np.sum((mapping(x) - y) ** 2)
    assert sse == pytest.approx(np.sum((logistic5(x, *reference) - y) ** 2), rel=1e-9)


def test_a_failed_fit_falls_back_with_a_note(monkeypatch):
    real = optimize.least_squares

    def five_fails(fun, x0, **kw):
        if len(x0) == 5:
            raise ValueError("boom")
        return real(fun, x0, **kw)

    monkeypatch.setattr(metrics_module.optimize, "least_squares", five_fails)
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 1, 50)
    y = 2 * x + rng.normal(0, 0.1, 50)
    with pytest.warns(MetricWarning, match="logistic5 fit failed; used logistic4"):
        mapping = fit_logistic(x, y)
    assert mapping.kind == "logistic4" and "logistic5" in mapping.note

    def all_fail(fun, x0, **kw):
        raise RuntimeError("no convergence")

    monkeypatch.setattr(metrics_module.optimize, "least_squares", all_fail)
    with pytest.warns(MetricWarning, match="used linear"):
        mapping = fit_logistic(x, y)
    assert mapping.kind == "linear" and mapping.converged
    with pytest.warns(MetricWarning):
        assert plcc(x, y) == pytest.approx(stats.pearsonr(x, y).statistic)


def test_plcc_fit_beats_raw_on_noisy_nonlinear_data():
    rng = np.random.default_rng(4)
    mos = rng.uniform(1, 5, 500)
    pred = np.exp(mos) + rng.normal(scale=5, size=500)
    assert plcc(pred, mos) > plcc(pred, mos, fit=None)
    # The fitted mapping must be what we claim: Pearson of MOS with the fitted curve.
    fit = fit_logistic(pred, mos)
    assert plcc(pred, mos) == pytest.approx(stats.pearsonr(fit(pred), mos).statistic)


@pytest.mark.parametrize("metric", [srcc, krcc, plcc])
def test_constant_predictions_give_nan_with_warning(metric):
    with pytest.warns(MetricWarning, match="constant"):
        assert np.isnan(metric(np.ones(20), np.arange(20.0)))


@pytest.mark.parametrize("metric", [srcc, krcc, plcc])
def test_too_few_points_give_nan(metric):
    with pytest.warns(MetricWarning):
        assert np.isnan(metric([1.0, 2.0], [2.0, 1.0]))


def test_nan_pairs_are_dropped_and_reported():
    pred = np.array([1.0, 2.0, np.nan, 4.0, 5.0, 6.0])
    mos = np.array([1.0, 2.5, 3.0, 3.5, np.nan, 7.0])
    with pytest.warns(MetricWarning, match="dropped 2"):
        value = srcc(pred, mos)
    assert value == pytest.approx(1.0)


def test_length_mismatch_and_unknown_fit_raise():
    with pytest.raises(ValueError):
        srcc([1, 2, 3], [1, 2])
    with pytest.raises(ValueError):
        plcc([1, 2, 3, 4], [1, 2, 3, 4], fit="cubic")


def test_clean_input_emits_no_warning(noisy_pair):
    pred, mos = noisy_pair
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        srcc(pred, mos), krcc(pred, mos), plcc(pred, mos), plcc(pred, mos, "logistic4")


def test_analytic_jacobians_match_finite_differences():
    z = np.linspace(-2, 2, 9)
    cases = [
        (metrics_module._l5, metrics_module._l5_jac, [1.3, 2.0, 0.3, 0.2, -0.1]),
        (metrics_module._l4, metrics_module._l4_jac, [0.5, -2.0, 0.1, 0.7]),
    ]
    for model, jac, b in cases:
        b = np.array(b)
        for i in range(len(z)):
            numeric = optimize.approx_fprime(b, lambda p, i=i, f=model: f(p, z)[i], 1e-7)
            np.testing.assert_allclose(jac(b, z)[i], numeric, atol=1e-5)


def test_fits_with_too_few_points_fall_back_to_a_simpler_form():
    x, y = np.array([1.0, 2.0, 3.0, 4.0, 6.0]), np.array([1.0, 1.5, 3.5, 4.0, 4.2])
    with pytest.warns(MetricWarning, match="logistic5 needs more than 5 points; used logistic4"):
        assert fit_logistic(x, y).kind == "logistic4"
    with pytest.warns(MetricWarning, match="used linear"):
        assert fit_logistic(x[:4], y[:4]).kind == "linear"
