"""Correlation metrics of IQA/VQA practice: SRCC, KRCC and PLCC after a logistic mapping.

The logistic forms follow VQEG (2000) and Sheikh et al., "A statistical evaluation of recent
full reference image quality assessment algorithms" (TIP 2006); initial guesses as pyiqa uses.
Degenerate inputs (constant predictions, fewer than 3 valid pairs) give ``nan`` with a
:class:`MetricWarning`; they never raise. Pairs where either value is NaN are dropped, with a
warning that says how many.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import optimize, special, stats

FitKind = Literal["logistic5", "logistic4"]


class MetricWarning(UserWarning):
    """A metric could not be computed meaningfully (it returned nan) or dropped data."""


def logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """``f(x) = b1 · (0.5 − 1 / (1 + exp(b2 · (x − b3)))) + b4 · x + b5`` (VQEG / Sheikh 2006)."""
    return b1 * (0.5 - special.expit(-b2 * (x - b3))) + b4 * x + b5


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """``f(x) = (b1 − b2) / (1 + exp(−(x − b3) / |b4|)) + b2``."""
    return (b1 - b2) * special.expit((x - b3) / (abs(b4) + 1e-12)) + b2


_FORMS: dict[str, Callable[..., np.ndarray]] = {"logistic5": logistic5, "logistic4": logistic4}


@dataclass(frozen=True)
class LogisticFit:
    """A fitted monotonic mapping from predictions to the MOS scale."""

    kind: str
    params: tuple[float, ...]
    converged: bool

    def __call__(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not self.converged:
            return x
        return _FORMS[self.kind](x, *self.params)


def fit_logistic(pred: Any, mos: Any, kind: FitKind = "logistic5") -> LogisticFit:
    """Least-squares fit of the logistic ``kind`` that maps ``pred`` onto ``mos``.

    Starts from the standard initial guess (5-param: ``[max y, min y, mean x, 0.1, 0.1]``;
    4-param: ``[max y, min y, mean x, std x / 4]``) and from a few scale-aware starts (for
    5-param one is the plain linear fit, so the result is never worse than linear); keeps
    the lowest squared error, preferring the standard start on ties. If every start fails the
    returned fit is the identity (``converged=False``) and a :class:`MetricWarning` is emitted.
    """
    if kind not in _FORMS:
        raise ValueError(f"unknown logistic fit {kind!r}; choose one of {sorted(_FORMS)} or None")
    x = np.asarray(pred, dtype=np.float64)
    y = np.asarray(mos, dtype=np.float64)
    form = _FORMS[kind]

    def residuals(b: np.ndarray) -> np.ndarray:
        return form(x, *b) - y

    best: tuple[float, tuple[float, ...]] | None = None
    for p0 in _initial_guesses(x, y, kind):
        method = "lm" if x.size >= len(p0) else "trf"  # MINPACK needs m >= n
        try:
            with np.errstate(all="ignore"):
                result = optimize.least_squares(
                    residuals, p0, method=method, x_scale="jac", max_nfev=4000
                )
        except (ValueError, np.linalg.LinAlgError):
            continue
        sse = float(np.sum(result.fun**2))
        if not (np.all(np.isfinite(result.x)) and np.isfinite(sse)):
            continue
        if best is None or sse < best[0] * (1 - 1e-9):
            best = (sse, tuple(float(v) for v in result.x))
    if best is None:
        warnings.warn(
            f"{kind} fit failed from every start; PLCC uses the raw predictions", MetricWarning, 2
        )
        return LogisticFit(kind, (), converged=False)
    return LogisticFit(kind, best[1], converged=True)


def _initial_guesses(x: np.ndarray, y: np.ndarray, kind: str) -> list[list[float]]:
    y_max, y_min, x_mean, x_std = float(y.max()), float(y.min()), float(x.mean()), float(x.std())
    if kind == "logistic5":
        slope, intercept = np.polyfit(x, y, 1)
        rho = stats.spearmanr(x, y).statistic
        sign = 1.0 if not np.isfinite(rho) or rho >= 0 else -1.0
        return [
            [y_max, y_min, x_mean, 0.1, 0.1],
            [0.0, 1.0 / max(x_std, 1e-12), x_mean, float(slope), float(intercept)],
            [sign * (y_max - y_min), 4.0 / max(x_std, 1e-12), x_mean, 0.0, float(y.mean())],
        ]
    guesses = [[y_max, y_min, x_mean, x_std / 4]]
    if stats.spearmanr(x, y).statistic < 0:  # decreasing: start from the mirrored curve too
        guesses.append([y_min, y_max, x_mean, x_std / 4])
    return guesses


def srcc(pred: Any, mos: Any) -> float:
    """Spearman rank correlation of raw predictions with MOS (``scipy.stats.spearmanr``)."""
    pair = _valid_pairs(pred, mos, "srcc")
    if pair is None:
        return float("nan")
    return float(stats.spearmanr(*pair).statistic)


def krcc(pred: Any, mos: Any) -> float:
    """Kendall rank correlation, tau-b (``scipy.stats.kendalltau``)."""
    pair = _valid_pairs(pred, mos, "krcc")
    if pair is None:
        return float("nan")
    return float(stats.kendalltau(*pair).statistic)


def plcc(pred: Any, mos: Any, fit: FitKind | None = "logistic5") -> float:
    """Pearson correlation of MOS with the predictions after the monotonic ``fit``.

    ``fit``: ``"logistic5"`` (default, VQEG), ``"logistic4"`` or ``None`` (raw predictions).
    """
    if fit is not None and fit not in _FORMS:
        raise ValueError(f"unknown logistic fit {fit!r}; choose one of {sorted(_FORMS)} or None")
    pair = _valid_pairs(pred, mos, "plcc")
    if pair is None:
        return float("nan")
    x, y = pair
    if fit is not None:
        x = fit_logistic(x, y, fit)(x)
        if np.ptp(x) == 0:
            warnings.warn("plcc: the fitted mapping is constant; returning nan", MetricWarning, 2)
            return float("nan")
    return float(stats.pearsonr(x, y).statistic)


def _valid_pairs(pred: Any, mos: Any, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{name}: pred has {x.size} values but mos has {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    if not keep.all():
        warnings.warn(
            f"{name}: dropped {int((~keep).sum())} pair(s) with NaN/inf", MetricWarning, 3
        )
        x, y = x[keep], y[keep]
    if x.size < 3:
        warnings.warn(f"{name}: needs at least 3 valid pairs; returning nan", MetricWarning, 3)
        return None
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        which = "predictions" if np.ptp(x) == 0 else "MOS"
        warnings.warn(f"{name}: {which} are constant; returning nan", MetricWarning, 3)
        return None
    return x, y
