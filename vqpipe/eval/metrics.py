"""Correlation metrics of IQA/VQA practice: SRCC, KRCC and PLCC after a logistic mapping.

The logistic forms follow VQEG (2000) and Sheikh et al., "A statistical evaluation of recent
full reference image quality assessment algorithms" (TIP 2006), fitted monotone (the sign of
the slope fixed to the sign of SRCC). Degenerate inputs (constant predictions or MOS, fewer than
3 valid pairs) give ``nan`` with a :class:`MetricWarning`; they never raise. Pairs where either
value is NaN are dropped, with a warning that says how many.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from scipy import optimize, special, stats

FitKind = Literal["logistic5", "logistic4"]

# bounds in normalised units (z-scored predictions and MOS): slopes and amplitudes that keep the
# curve finite; steeper than a step over 1/50 of a standard deviation is a step anyway
_MAX_SLOPE = 50.0
_MAX_AMP = 1e3
_TINY = 1e-6


class MetricWarning(UserWarning):
    """A metric could not be computed meaningfully (it returned nan) or dropped data."""


def logistic5(x: np.ndarray, b1: float, b2: float, b3: float, b4: float, b5: float) -> np.ndarray:
    """``f(x) = b1 · (0.5 − 1 / (1 + exp(b2 · (x − b3)))) + b4 · x + b5`` (VQEG / Sheikh 2006)."""
    return b1 * (0.5 - special.expit(-b2 * (x - b3))) + b4 * x + b5


def logistic4(x: np.ndarray, b1: float, b2: float, b3: float, b4: float) -> np.ndarray:
    """``f(x) = (b1 − b2) / (1 + exp(−(x − b3) / |b4|)) + b2``."""
    return (b1 - b2) * special.expit((x - b3) / (abs(b4) + 1e-12)) + b2


def _linear(x: np.ndarray, a: float, b: float) -> np.ndarray:
    return a * x + b


_FORMS: dict[str, Callable[..., np.ndarray]] = {
    "logistic5": logistic5,
    "logistic4": logistic4,
    "linear": _linear,
}
_N_PARAMS = {"logistic5": 5, "logistic4": 4, "linear": 2}
_FALLBACK = {
    "logistic5": ["logistic5", "logistic4", "linear"],
    "logistic4": ["logistic4", "linear"],
}


@dataclass(frozen=True)
class LogisticFit:
    """A fitted monotone mapping from predictions to the MOS scale.

    ``kind`` is the form actually fitted (``"linear"`` or ``"identity"`` after fallbacks);
    ``note`` says why it differs from the one asked for (empty when it does not).
    """

    kind: str
    params: tuple[float, ...]
    converged: bool
    direction: int = 1
    note: str = ""

    def __call__(self, x: Any) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if not self.converged or self.kind not in _FORMS:
            return x
        return _FORMS[self.kind](x, *self.params)


def fit_direction(pred: Any, mos: Any) -> int:
    """+1 when MOS rises with the predictions (SRCC ≥ 0 or undefined), −1 otherwise."""
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(pred, mos).statistic
    return -1 if np.isfinite(rho) and rho < 0 else 1


def fit_logistic(pred: Any, mos: Any, kind: FitKind = "logistic5") -> LogisticFit:
    """Monotone least-squares fit of the logistic ``kind`` that maps ``pred`` onto ``mos``.

    The direction is the sign of SRCC and is enforced by bounds (``scipy.optimize.least_squares``,
    trf): for logistic5 ``b2 ≥ 0`` and ``b1``, ``b4`` share the direction's sign, so the
    sigmoid and the linear term can never pull against each other (no fall-then-rise); for
    logistic4 ``b1 − b2`` has the direction's sign. Fitted on z-scored data from several
    starts, lowest squared error kept. If the fit fails (no finite result or a constant curve)
    or there are no more points than parameters, it falls back logistic5 → logistic4 → linear,
    with a :class:`MetricWarning` and ``note``; the identity (``converged=False``) when even
    the line fails.
    """
    if kind not in _FALLBACK:
        raise ValueError(
            f"unknown logistic fit {kind!r}; choose one of {sorted(_FALLBACK)} or None"
        )
    x = np.asarray(pred, dtype=np.float64).ravel()
    y = np.asarray(mos, dtype=np.float64).ravel()
    direction = fit_direction(x, y)
    failed: list[str] = []
    for form in _FALLBACK[kind]:
        if x.size <= _N_PARAMS[form] and form != "linear":  # as many parameters as points
            failed.append(f"{form} needs more than {_N_PARAMS[form]} points")
            continue
        params = _fit_form(form, x, y, direction)
        if params is not None:
            note = f"{', '.join(failed)}; used {form}" if failed else ""
            if note:
                warnings.warn(f"fit_logistic: {note}", MetricWarning, 2)
            return LogisticFit(form, params, True, direction, note)
        failed.append(f"{form} fit failed")
    note = f"{', '.join(failed)}; used the raw predictions"
    warnings.warn(f"fit_logistic: {note}", MetricWarning, 2)
    return LogisticFit("identity", (), False, direction, note)


def _l5(b: np.ndarray, z: np.ndarray) -> np.ndarray:
    return b[0] * (special.expit(b[1] * (z - b[2])) - 0.5) + b[3] * z + b[4]


def _l5_jac(b: np.ndarray, z: np.ndarray) -> np.ndarray:
    e = special.expit(b[1] * (z - b[2]))
    d = b[0] * e * (1 - e)
    return np.column_stack([e - 0.5, d * (z - b[2]), -d * b[1], z, np.ones_like(z)])


def _l4(b: np.ndarray, z: np.ndarray) -> np.ndarray:  # lo + d · expit((z − b3) / w)
    return b[1] * special.expit((z - b[2]) / b[3]) + b[0]


def _l4_jac(b: np.ndarray, z: np.ndarray) -> np.ndarray:
    t = (z - b[2]) / b[3]
    e = special.expit(t)
    d = b[1] * e * (1 - e)
    return np.column_stack([np.ones_like(z), e, -d / b[3], -d * t / b[3]])


def _signed(s: int, limit: float) -> tuple[float, float]:
    """Bounds of a parameter whose sign is ``s``."""
    return (0.0, limit) if s > 0 else (-limit, 0.0)


def _setup(form: str, s: int, r: float) -> tuple[Callable[..., np.ndarray], Callable, list, list]:
    """Model, its Jacobian, (lower, upper) bounds and starts of a form in z-scored units,
    direction ``s``."""
    if form == "logistic5":
        bounds = [_signed(s, _MAX_AMP), (0.0, _MAX_SLOPE), (-10.0, 10.0), _signed(s, _MAX_AMP)]
        bounds.append((-_MAX_AMP, _MAX_AMP))
        # (|b1|, b2, b3, |b4|, b5): sigmoid, near-linear, wide, steep, mixed
        starts = [(4, 1.5, 0, 0, 0), (0, 1, 0, r, 0), (8, 0.5, 0, 0, 0), (3, 5, 0, 0, 0)]
        starts.append((2, 1.5, 0, r / 2, 0))
        starts = [(s * a, b2, b3, s * b4, b5) for a, b2, b3, b4, b5 in starts]
        return _l5, _l5_jac, bounds, starts
    bounds = [(-_MAX_AMP, _MAX_AMP), _signed(s, _MAX_AMP), (-10.0, 10.0), (1 / _MAX_SLOPE, 1e3)]
    starts = [(-2 * s, 4 * s, 0, 0.7), (-4 * s, 8 * s, 0, 2), (-1.5 * s, 3 * s, 0, 0.2)]
    return _l4, _l4_jac, bounds, starts


def _fit_form(form: str, x: np.ndarray, y: np.ndarray, s: int) -> tuple[float, ...] | None:
    """Parameters of ``form`` in the data's units, or None when no start gives a usable fit."""
    if x.size < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        return None
    mx, sx, my, sy = float(x.mean()), float(x.std()), float(y.mean()), float(y.std())
    if not (sx > 0 and sy > 0):
        return None
    z, v = (x - mx) / sx, (y - my) / sy
    r = float(np.mean(z * v))  # Pearson
    if form == "linear":
        slope = max(s * r, 0.0) * s
        return (slope * sy / sx, my - slope * sy * mx / sx) if slope != 0 else None
    model, jac, bounds, starts = _setup(form, s, float(np.clip(abs(r), _TINY, 1.0)))
    lower, upper = np.array(bounds).T
    best: tuple[float, np.ndarray] | None = None
    for p0 in starts:
        # strictly inside the bounds (a sign-fixed parameter may start at 0)
        p0 = np.clip(np.asarray(p0, dtype=np.float64), lower + _TINY, upper - _TINY)
        try:
            with np.errstate(all="ignore"):
                result = optimize.least_squares(
                    lambda b: model(b, z) - v,
                    p0,
                    jac=lambda b: jac(b, z),
                    bounds=(lower, upper),
                    method="trf",
                    x_scale="jac",
                    max_nfev=200,  # noise has no optimum worth more: the fit hops between steps
                )
        except Exception:  # any optimiser failure means: try the next start / simpler form
            continue
        sse = float(np.sum(result.fun**2))
        finite = np.all(np.isfinite(result.x)) and np.isfinite(sse)
        if not finite or np.ptp(model(result.x, z)) < 1e-9:
            continue
        if best is None or sse < best[0] * (1 - 1e-9):
            best = (sse, result.x)
    if best is None:
        return None
    if form == "logistic5":  # back to data units: z = (x − mx) / sx, y = my + sy · v
        b1, b2, b3, b4, b5 = (float(b) for b in best[1])
        return (b1 * sy, b2 / sx, mx + sx * b3, b4 * sy / sx, my + sy * (b5 - b4 * mx / sx))
    lo, d, b3, w = (float(b) for b in best[1])
    return (my + sy * (lo + d), my + sy * lo, mx + sx * b3, w * sx)


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
    """Pearson correlation of MOS with the predictions after the monotone ``fit``, signed by the
    fit's direction (a scorer that ranks backwards gets a negative PLCC, as its SRCC is).

    ``fit``: ``"logistic5"`` (default, VQEG), ``"logistic4"`` or ``None`` (raw predictions).
    """
    return plcc_with_fit(pred, mos, fit)[0]


def plcc_with_fit(
    pred: Any, mos: Any, fit: FitKind | None = "logistic5"
) -> tuple[float, LogisticFit | None]:
    """:func:`plcc` and the fitted mapping (None without a fit or with too little data)."""
    if fit is not None and fit not in _FALLBACK:
        raise ValueError(f"unknown logistic fit {fit!r}; choose one of {sorted(_FALLBACK)} or None")
    pair = _valid_pairs(pred, mos, "plcc")
    if pair is None:
        return float("nan"), None
    x, y = pair
    if fit is None:
        return float(stats.pearsonr(x, y).statistic), None
    mapping = fit_logistic(x, y, fit)
    mapped = mapping(x)
    if np.ptp(mapped) == 0:
        warnings.warn("plcc: the fitted mapping is constant; returning nan", MetricWarning, 2)
        return float("nan"), mapping
    r = float(stats.pearsonr(mapped, y).statistic)
    return (r * mapping.direction if mapping.converged else r), mapping


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
