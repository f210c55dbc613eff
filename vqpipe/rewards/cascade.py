"""The band of a cheap → expensive cascade: which rows need the expensive score.

A curation keeps a row when its expensive score ``e`` passes a threshold ``t`` (``keep="above"``:
``e >= t``; ``"below"``: ``e < t``, the complement). A cascade decides by the cheap score ``c``
outside a band ``[lo, hi]`` (``c > hi``: the side the curation keeps; ``c < lo``: the other; the
cheap score is assumed to rise with the expensive one) and by ``e`` inside it. Over a sample
scored by both, :func:`plan_band` finds the band whose decisions agree with ``e``'s on at least
a ``target`` share of the rows while sending the fewest rows into the band.

With the rows sorted by ``c`` and the band covering sorted positions ``[i, j)`` (whole runs of
equal ``c``), the disagreements are the kept rows below the band plus the dropped rows above it,
``A(i) + B(j)``, with ``A`` non-decreasing in ``i`` and ``B`` non-increasing in ``j``: for each
``i`` the smallest admissible ``j`` only moves right as ``i`` does, so two pointers find the
narrowest band in O(n log n) (the sort).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

KEEPS = ("above", "below")


@dataclass(frozen=True)
class Band:
    """A planned band and what it does on the sample it was planned on."""

    lo: float
    hi: float
    agreement: float
    """Share of rows whose cascade decision equals the expensive scorer's."""
    sent: float
    """Share of rows inside the band (scored by the expensive scorer)."""
    rows: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decisions(expensive: np.ndarray, threshold: float, keep: str = "above") -> np.ndarray:
    """The curation's keep (True) / drop per row from the expensive score."""
    if keep not in KEEPS:
        raise ValueError(f"keep must be one of {KEEPS}, not {keep!r}")
    e = np.asarray(expensive, np.float64)
    return e >= threshold if keep == "above" else e < threshold


def cascade_decisions(
    cheap: np.ndarray,
    expensive: np.ndarray,
    lo: float,
    hi: float,
    threshold: float,
    keep: str = "above",
) -> np.ndarray:
    """Keep / drop per row as the cascade decides: by ``expensive`` for ``lo <= cheap <= hi``,
    else by the side of the band ``cheap`` lies on."""
    c = np.asarray(cheap, np.float64)
    inside = (c >= lo) & (c <= hi)
    above = c > hi
    by_cheap = above if keep == "above" else ~above
    return np.where(inside, decisions(expensive, threshold, keep), by_cheap)


def evaluate_band(
    cheap: np.ndarray,
    expensive: np.ndarray,
    lo: float,
    hi: float,
    threshold: float,
    keep: str = "above",
) -> Band:
    """A band applied to a sample: its agreement with the expensive decisions and share sent."""
    c = np.asarray(cheap, np.float64)
    truth = decisions(expensive, threshold, keep)
    cascade = cascade_decisions(c, expensive, lo, hi, threshold, keep)
    n = len(c)
    inside = float(np.mean((c >= lo) & (c <= hi))) if n else 0.0
    return Band(lo, hi, float(np.mean(cascade == truth)) if n else 1.0, inside, n)


def plan_band(
    cheap: np.ndarray,
    expensive: np.ndarray,
    threshold: float,
    keep: str = "above",
    target: float = 0.99,
) -> Band:
    """The band on ``cheap`` that sends the fewest rows on while the cascade's decisions agree
    with ``expensive``'s on at least ``target`` of the rows (ties: the higher agreement, then
    the lower band). An
    empty band (no row needs the expensive score) is ``lo == hi`` at a value between two cheap
    scores (the midpoint), or one beyond the ends. Rows must be finite (drop NULLs first)."""
    c = np.asarray(cheap, np.float64)
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], not {target}")
    if len(c) == 0:
        raise ValueError("no rows")
    order = np.argsort(c, kind="stable")
    c = c[order]
    kept = decisions(np.asarray(expensive, np.float64)[order], threshold, keep)
    # the cheap side: rows above the band count as kept ("above") or dropped ("below")
    wrong_below = kept if keep == "above" else ~kept  # decided "other side" but truth differs
    n = len(c)
    cuts = np.concatenate([[0], np.flatnonzero(np.diff(c) > 0) + 1, [n]])  # run boundaries
    below = np.concatenate([[0], np.cumsum(wrong_below)])[cuts]  # A at each cut
    above = (np.sum(~wrong_below) - np.concatenate([[0], np.cumsum(~wrong_below)]))[cuts]  # B
    allowed = math.floor((1 - target) * n + 1e-9)
    best: tuple[int, int, int, int] | None = None  # (sent, errors, i, j) over cut indices
    j = 0
    for i in range(len(cuts)):
        j = max(j, i)
        while j < len(cuts) - 1 and below[i] + above[j] > allowed:
            j += 1
        errors = int(below[i] + above[j])
        if errors > allowed:
            break  # A only grows with i: no later i fits either
        candidate = (int(cuts[j] - cuts[i]), errors, i, j)
        if best is None or candidate[:2] < best[:2]:
            best = candidate
    assert best is not None  # the band of every row has no error
    _, _, i, j = best
    if j > i:
        lo, hi = float(c[cuts[i]]), float(c[cuts[j] - 1])
    elif i == 0:  # empty: a value between the runs at the cut, or beyond the ends
        lo = hi = float(c[0]) - 1.0
    elif i == len(cuts) - 1:
        lo = hi = float(c[-1]) + 1.0
    else:
        lo = hi = (float(c[cuts[i] - 1]) + float(c[cuts[i]])) / 2
    return evaluate_band(c, np.asarray(expensive, np.float64)[order], lo, hi, threshold, keep)


def widen(band: Band, digits: int = 6) -> tuple[float, float]:
    """``(lo, hi)`` rounded outwards to ``digits`` decimals, so the printed band still holds
    every row the exact one does."""
    scale = 10.0**digits
    return math.floor(band.lo * scale) / scale, math.ceil(band.hi * scale) / scale
