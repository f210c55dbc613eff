"""Compare2Score anchor selection (Zhu et al., NeurIPS 2024, Eq. (4))."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # vqpipe.scoring is imported by every scorer worker: no pandas there
    import pandas as pd


def select_anchors(
    mos_table: pd.DataFrame,
    alpha: int = 5,
    beta: int = 1,
    mos_col: str = "mos",
    std_col: str = "std",
) -> pd.DataFrame:
    """Pick ``beta`` anchors in each of ``alpha`` equal MOS intervals, least rating variance first.

    The MOS range ``[min, max]`` of the table is cut into ``alpha`` equal intervals (the last
    one closed); in each, the ``beta`` rows with the smallest ``std`` are chosen (ties: lower
    MOS, then table order). Returns those rows sorted by MOS, with an ``interval`` column.
    An interval with fewer than ``beta`` images contributes what it has, with a warning.
    """
    if alpha < 1 or beta < 1:
        raise ValueError("select_anchors: alpha and beta must be >= 1")
    missing = {mos_col, std_col} - set(mos_table.columns)
    if missing:
        raise ValueError(f"select_anchors: MOS table lacks column(s) {sorted(missing)}")
    table = mos_table.dropna(subset=[mos_col, std_col]).reset_index(drop=True)
    if table.empty:
        raise ValueError("select_anchors: no rows with both MOS and std")
    mos = table[mos_col].to_numpy(dtype=np.float64)
    low, high = mos.min(), mos.max()
    width = (high - low) / alpha
    if width > 0:
        interval = np.minimum(((mos - low) / width).astype(np.int64), alpha - 1)
    else:
        interval = np.zeros(len(mos), dtype=np.int64)
    table = table.assign(interval=interval, _order=np.arange(len(table)))
    ranked = table.sort_values(["interval", std_col, mos_col, "_order"], kind="stable")
    chosen = ranked.groupby("interval", sort=True).head(beta)
    short = [i for i in range(alpha) if (chosen["interval"] == i).sum() < beta]
    if short:
        warnings.warn(
            f"select_anchors: interval(s) {short} hold fewer than beta={beta} images",
            UserWarning,
            stacklevel=2,
        )
    return chosen.sort_values([mos_col, "_order"]).drop(columns="_order").reset_index(drop=True)
