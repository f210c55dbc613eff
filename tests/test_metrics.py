"""SRCC / KRCC / PLCC against scipy.stats and on known monotone transforms."""

import warnings

import numpy as np
import pytest
from scipy import stats

from vqpipe.eval import MetricWarning, fit_logistic, krcc, logistic4, logistic5, plcc, srcc


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


def test_logistic4_fit_handles_decreasing_relation():
    x = np.linspace(0, 10, 150)
    y = logistic4(x, 1.0, 5.0, 5.0, 1.2)  # decreasing: b1 < b2
    assert plcc(x, y, fit="logistic4") > 0.999


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
