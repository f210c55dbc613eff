"""Join quality tables with MOS tables and compute SRCC / KRCC / PLCC per scorer and dataset,
with bootstrap confidence intervals; the cross-dataset protocol's median over splits."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vqpipe.eval.metrics import MetricWarning, fit_logistic, krcc, plcc, srcc


@dataclass
class Joined:
    """Predictions matched to MOS by URI, and what did not match (reported, never hidden)."""

    table: pd.DataFrame  # uri, dataset, mos, <scorer>_score ...
    scorers: list[str]
    missing: list[str] = field(default_factory=list)  # in the MOS table, not predicted
    extra: list[str] = field(default_factory=list)  # predicted, not in the MOS table
    failed: dict[str, list[str]] = field(default_factory=dict)  # scorer → URIs with no score

    def summary(self) -> dict[str, Any]:
        return {
            "matched": len(self.table),
            "missing_predictions": len(self.missing),
            "without_mos": len(self.extra),
            "failed": {k: len(v) for k, v in self.failed.items()},
        }


def score_columns(pred: pd.DataFrame) -> list[str]:
    """Scorer names of a quality table (``<name>_score`` columns)."""
    return [c[: -len("_score")] for c in pred.columns if c.endswith("_score")]


def join_predictions(
    pred: pd.DataFrame, mos: pd.DataFrame, scorers: Sequence[str] | None = None
) -> Joined:
    """Match a quality table (``uri``, ``<scorer>_score``) with a MOS table (``uri`` or
    ``path``, ``mos``; optional ``dataset``, ``lower_better``) on the URI."""
    mos = mos.copy()
    if "uri" not in mos.columns:
        if "path" not in mos.columns:
            raise ValueError("the MOS table needs a 'uri' or 'path' column")
        mos["uri"] = mos["path"].astype(str)
    if "mos" not in mos.columns:
        raise ValueError("the MOS table needs a 'mos' column")
    if "dataset" not in mos.columns:
        mos["dataset"] = "all"
    if "lower_better" not in mos.columns:
        mos["lower_better"] = False
    if mos["uri"].duplicated().any():
        raise ValueError("the MOS table lists a URI more than once")
    scorers = list(scorers) if scorers is not None else score_columns(pred)
    if not scorers:
        raise ValueError("the predictions have no <scorer>_score column")
    pred = pred.drop_duplicates("uri", keep="last")
    cols = ["uri"] + [f"{s}_score" for s in scorers]
    table = mos[["uri", "dataset", "mos", "lower_better"]].merge(pred[cols], on="uri")
    missing = sorted(set(mos["uri"]) - set(pred["uri"]))
    extra = sorted(set(pred["uri"]) - set(mos["uri"]))
    failed = {s: table.loc[table[f"{s}_score"].isna(), "uri"].tolist() for s in scorers}
    return Joined(table, scorers, missing, extra, {k: v for k, v in failed.items() if v})


def _bootstrap(
    x: np.ndarray, y: np.ndarray, n: int, seed: int, metrics: dict[str, Any]
) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in metrics}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        for _ in range(n):
            idx = rng.integers(0, len(x), len(x))
            for name, fn in metrics.items():
                draws[name].append(fn(x[idx], y[idx]))
    return {
        k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
        for k, v in draws.items()
    }


def _fitted(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        if np.ptp(x) == 0:
            return x
        return fit_logistic(x, y)(x)


def evaluate(
    pred: pd.DataFrame,
    mos: pd.DataFrame,
    by: str | None = "dataset",
    scorers: Sequence[str] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """SRCC, KRCC, PLCC (logistic5) per scorer (and per ``by`` group, plus ``all``), with 95 %
    bootstrap intervals (``bootstrap`` resamples; 0 turns them off; PLCC's resample Pearson
    after the logistic mapping fitted on the whole group). MOS of datasets marked
    ``lower_better`` is negated first, so higher correlations are better everywhere."""
    joined = pred if isinstance(pred, Joined) else join_predictions(pred, mos, scorers)
    table = joined.table.copy()
    table["target"] = np.where(table["lower_better"].astype(bool), -table["mos"], table["mos"])
    groups: list[tuple[str, pd.DataFrame]] = [("all", table)]
    if by is not None and by in table.columns and table[by].nunique() > 1:
        groups += [(str(k), g) for k, g in table.groupby(by, sort=True)]
    rows = []
    for scorer in joined.scorers:
        for name, group in groups:
            ok = group[f"{scorer}_score"].notna()
            x = group.loc[ok, f"{scorer}_score"].to_numpy(np.float64)
            y = group.loc[ok, "target"].to_numpy(np.float64)
            row = {"scorer": scorer, "group": name, "n": int(ok.sum()), "failed": int((~ok).sum())}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MetricWarning)
                row.update(srcc=srcc(x, y), krcc=krcc(x, y), plcc=plcc(x, y))
            if bootstrap and len(x) >= 3:
                # PLCC intervals resample Pearson of the mapping fitted once on the group
                mapped = _fitted(x, y)
                pearson = {"srcc": srcc, "plcc": lambda a, b: plcc(a, b, fit=None)}
                ci = _bootstrap(x, y, bootstrap, seed, {"srcc": pearson["srcc"]})
                ci.update(_bootstrap(mapped, y, bootstrap, seed, {"plcc": pearson["plcc"]}))
                row.update(
                    srcc_lo=ci["srcc"][0],
                    srcc_hi=ci["srcc"][1],
                    plcc_lo=ci["plcc"][0],
                    plcc_hi=ci["plcc"][1],
                )
            rows.append(row)
    return pd.DataFrame(rows)


def median_over_splits(
    pred: pd.DataFrame,
    mos: pd.DataFrame,
    n_splits: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
    group_col: str | None = None,
    scorers: Sequence[str] | None = None,
) -> pd.DataFrame:
    """The papers' protocol: median SRCC / PLCC over ``n_splits`` random test splits (split by
    ``group_col`` — e.g. reference content for synthetic datasets — when given)."""
    joined = join_predictions(pred, mos, scorers)
    table = joined.table
    if group_col is not None:
        keys = mos.set_index(mos["uri"] if "uri" in mos else mos["path"].astype(str))[group_col]
        table = table.assign(_group=table["uri"].map(keys))
    else:
        table = table.assign(_group=table["uri"])
    units = table["_group"].unique()
    rng = np.random.default_rng(seed)
    results = []
    for split in range(n_splits):
        chosen = rng.choice(units, max(1, round(len(units) * test_fraction)), replace=False)
        part = table[table["_group"].isin(chosen)]
        sub = Joined(part.drop(columns="_group"), joined.scorers)
        metrics = evaluate(sub, None, by=None, bootstrap=0)
        results.append(metrics.assign(split=split))
    allm = pd.concat(results)
    return (
        allm.groupby("scorer")[["srcc", "plcc"]]
        .median()
        .reset_index()
        .assign(n_splits=n_splits, test_fraction=test_fraction)
    )
