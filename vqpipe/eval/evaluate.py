"""Join quality tables with MOS tables and compute SRCC / KRCC / PLCC per scorer and dataset,
with bootstrap confidence intervals; the cross-dataset protocol's median over splits."""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from vqpipe.eval.matching import MosMatch, match_mos, no_match_message
from vqpipe.eval.metrics import MetricWarning, krcc, plcc, plcc_with_fit, srcc


@dataclass
class Joined:
    """Predictions matched to MOS by URI, and what did not match (reported, never hidden)."""

    table: pd.DataFrame  # uri, dataset, mos, <scorer>_score ...
    scorers: list[str]
    missing: list[str] = field(default_factory=list)  # in the MOS table, not predicted
    extra: list[str] = field(default_factory=list)  # predicted, not in the MOS table
    failed: dict[str, list[str]] = field(default_factory=dict)  # scorer → URIs with no score
    match: MosMatch | None = None  # how the MOS rows were matched (vqpipe.eval.matching)

    def summary(self) -> dict[str, Any]:
        return {
            "matched": len(self.table),
            "missing_predictions": len(self.missing),
            "without_mos": len(self.extra),
            "failed": {k: len(v) for k, v in self.failed.items()},
        }


SMALL_N = 10
"""Groups with fewer scored items than this are flagged: their correlations are unreliable."""
MAX_GROUPS = 50
"""A group column with more distinct values than this is refused (a score or an id, not a
grouping: one scatter per value)."""


def score_columns(pred: pd.DataFrame) -> list[str]:
    """Scorer names of a quality table (``<name>_score`` columns)."""
    return [c[: -len("_score")] for c in pred.columns if c.endswith("_score")]


def by_columns(by: str | Sequence[str] | None) -> list[str]:
    """``"dataset"``, ``"dataset,split"`` or ``["dataset", "split"]`` → a list of column names."""
    if by is None:
        return []
    items = [by] if isinstance(by, str) else list(by)
    names = [part.strip() for item in items for part in str(item).split(",")]
    return list(dict.fromkeys(n for n in names if n))


def join_predictions(
    pred: pd.DataFrame,
    mos: pd.DataFrame,
    scorers: Sequence[str] | None = None,
    columns: Sequence[str] = (),
    mos_root: str | None = None,
) -> Joined:
    """Match a quality table (``uri``, ``<scorer>_score``) with a MOS table (``uri`` or
    ``path``, ``mos``; optional ``dataset``, ``lower_better``) by URI, by path relative to
    ``mos_root``, or by unique basename (:func:`vqpipe.eval.matching.match_mos`; the joined
    ``uri`` is the quality table's); ``columns`` (e.g. group columns) are carried over from
    the MOS table, else from the quality table. No match at all is a :class:`ValueError`
    naming an example of each side."""
    mos_columns = ", ".join(map(str, mos.columns))
    mos = mos.copy()
    if "uri" not in mos.columns:
        if "path" not in mos.columns:
            raise ValueError("the MOS table needs a 'uri' or 'path' column")
        mos["uri"] = mos["path"].astype(str)
    if "mos" not in mos.columns:
        raise ValueError("the MOS table needs a 'mos' column")
    if "lower_better" not in mos.columns:
        mos["lower_better"] = False
    if mos["uri"].duplicated().any():
        raise ValueError("the MOS table lists a URI more than once")
    scorers = list(scorers) if scorers is not None else score_columns(pred)
    if not scorers:
        raise ValueError("the predictions have no <scorer>_score column")
    scores = [f"{s}_score" for s in scorers]
    wanted = list(dict.fromkeys(["dataset", *columns]))
    unknown = [c for c in wanted[1:] if c not in mos.columns and c not in pred.columns]
    if unknown:
        raise ValueError(
            f"no column {', '.join(map(repr, unknown))} in the MOS table "
            f"({mos_columns}) or the quality table "
            f"({', '.join(map(str, pred.columns))})"
        )
    base = ["uri", "mos", "lower_better"]
    from_mos = [c for c in wanted if c in mos.columns and c not in base]
    from_pred = [c for c in wanted if c not in mos.columns and c in pred.columns]
    from_pred = [c for c in from_pred if c not in ("uri", *scores)]
    pred = pred.drop_duplicates("uri", keep="last")
    keys = mos["uri"].astype(str).tolist()
    uris = pred["uri"].astype(str).tolist()
    match = match_mos(uris, keys, mos_root)
    if len(match) == 0 and len(mos) and len(pred):
        raise ValueError(no_match_message(uris, keys, mos_root))
    mos["uri"] = pd.Series(keys, index=mos.index, dtype=object)
    mos.iloc[match.mos_index, mos.columns.get_loc("uri")] = [uris[i] for i in match.table_index]
    table = mos[[*base, *from_mos]].merge(pred[["uri", *scores, *from_pred]], on="uri")
    if "dataset" not in table.columns:
        table["dataset"] = "all"
    table["dataset"] = table["dataset"].fillna("all")
    table = table[
        [
            "uri",
            "dataset",
            "mos",
            "lower_better",
            *scores,
            *table.columns.drop(["uri", "dataset", "mos", "lower_better", *scores]),
        ]
    ]
    matched_keys = set(match.mos_index.tolist())
    missing = sorted(k for i, k in enumerate(keys) if i not in matched_keys)
    extra = sorted(set(uris) - set(table["uri"]))
    failed = {s: table.loc[table[f"{s}_score"].isna(), "uri"].tolist() for s in scorers}
    failed = {k: v for k, v in failed.items() if v}
    return Joined(table, scorers, missing, extra, failed, match)


def _bootstrap(
    x: np.ndarray, y: np.ndarray, n: int, seed: int, metrics: dict[str, Any]
) -> dict[str, tuple[float, float]]:
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in metrics}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", MetricWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN draws: the interval is NaN
        for _ in range(n):
            idx = rng.integers(0, len(x), len(x))
            for name, fn in metrics.items():
                draws[name].append(fn(x[idx], y[idx]))
        return {
            k: (float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
            for k, v in draws.items()
        }


def group_masks(
    table: pd.DataFrame, by: str | Sequence[str] | None
) -> list[tuple[str, str | None, pd.Series]]:
    """``(label, column, mask)`` per group: ``all`` first, then each value of each ``by``
    column that has more than one value (labels are ``value``, or ``column=value`` when
    there are several columns; missing values are ``(missing)``)."""
    columns = by_columns(by)
    groups: list[tuple[str, str | None, pd.Series]] = [
        ("all", None, pd.Series(True, index=table.index))
    ]
    for col in columns:
        if col not in table.columns:
            raise ValueError(f"no group column {col!r} in the joined table")
        keys = table[col].map(_group_key)
        count = keys.nunique()
        if count < 2:
            continue
        if count > MAX_GROUPS:
            raise ValueError(
                f"group column {col!r} has {count} distinct values (at most {MAX_GROUPS}): "
                "group by a categorical column, not a score or an id"
            )
        for key in sorted(keys.unique(), key=_sort_key):
            label = str(key) if len(columns) == 1 else f"{col}={key}"
            groups.append((label, col, keys == key))
    return groups


def _group_key(value: Any) -> Any:
    """Missing values are one group, ``(missing)``; unhashable values group by their text."""
    if value is None or (pd.api.types.is_scalar(value) and pd.isna(value)):
        return "(missing)"
    return value if isinstance(value, Hashable) else str(value)


def _sort_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, str(value))


def _undefined_reason(x: np.ndarray, y: np.ndarray) -> str:
    if len(x) < 3:
        return f"{len(x)} scored item(s), at least 3 needed: correlations undefined"
    if np.ptp(y) == 0:
        return "MOS all equal: correlations undefined"
    if np.ptp(x) == 0:
        return "predictions all equal: correlations undefined"
    return ""


def oriented_mos(table: pd.DataFrame) -> np.ndarray:
    """MOS with higher is better in every row: rows marked ``lower_better`` (DMOS) flipped on
    their scale, ``scale_low + scale_high − mos``, where the row gives its scale, else negated.
    Correlations within a dataset are the same either way; the scale keeps a flipped dataset on
    the range of the others when groups pool several."""
    mos = table["mos"].to_numpy(np.float64)
    if "lower_better" not in table:
        return mos
    flip = table["lower_better"].astype(bool).to_numpy()
    ends = np.full(len(mos), np.nan)
    if "scale_low" in table and "scale_high" in table:
        ends = table["scale_low"].to_numpy(np.float64) + table["scale_high"].to_numpy(np.float64)
    turned = np.where(np.isfinite(ends), ends - mos, -mos)
    return np.where(flip, turned, mos)


def evaluate(
    pred: pd.DataFrame | Joined,
    mos: pd.DataFrame | None,
    by: str | Sequence[str] | None = "dataset",
    scorers: Sequence[str] | None = None,
    bootstrap: int = 200,
    seed: int = 0,
    mos_root: str | None = None,
) -> pd.DataFrame:
    """SRCC, KRCC, PLCC (monotone logistic5) per scorer, for ``all`` and per group of each
    ``by`` column (MOS table or quality table; several allowed), with 95 % bootstrap intervals
    (``bootstrap`` resamples; 0 turns them off; PLCC's resample Pearson after the mapping
    fitted once on the group). MOS of datasets marked ``lower_better`` is turned around first
    (:func:`oriented_mos`), so higher correlations are better everywhere. Undefined metrics
    are NaN (never an error), with the reason in ``note``; ``small`` flags groups with
    n < :data:`SMALL_N`; ``fit`` is the mapping PLCC used (a fallback is explained in
    ``note``). MOS rows match as
    :func:`join_predictions` matches them (``mos_root``: what relative paths are under)."""
    columns = by_columns(by)
    if isinstance(pred, Joined):
        joined = pred
    else:
        joined = join_predictions(pred, mos, scorers, columns, mos_root)
    table = joined.table.copy()
    table["target"] = oriented_mos(table)
    rows = []
    for scorer in joined.scorers:
        for name, col, mask in group_masks(table, columns):
            group = table[mask]
            scored = group[f"{scorer}_score"].notna()
            ok = scored & np.isfinite(group["target"].astype(np.float64))  # MOS may be NaN
            x = group.loc[ok, f"{scorer}_score"].to_numpy(np.float64)
            y = group.loc[ok, "target"].to_numpy(np.float64)
            row = {"scorer": scorer, "by": col, "group": name, "failed": int((~scored).sum())}
            rows.append({**row, **_group_metrics(x, y, bootstrap, seed)})
    return pd.DataFrame(rows)


def _group_metrics(x: np.ndarray, y: np.ndarray, bootstrap: int, seed: int) -> dict[str, Any]:
    reason = _undefined_reason(x, y)
    nan = float("nan")
    row: dict[str, Any] = {"n": len(x), "small": len(x) < SMALL_N}
    row.update(srcc=nan, krcc=nan, plcc=nan, fit=None)
    if bootstrap:
        row.update(srcc_lo=nan, srcc_hi=nan, plcc_lo=nan, plcc_hi=nan)
    if reason:
        return {**row, "note": reason}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        value, mapping = plcc_with_fit(x, y)
        row.update(srcc=srcc(x, y), krcc=krcc(x, y), plcc=value)
    notes = []
    if mapping is not None:
        row["fit"] = mapping.kind
        notes += [mapping.note] if mapping.note else []
    if row["small"]:
        notes.append(f"n < {SMALL_N}: unreliable")
    if bootstrap and mapping is not None:
        # PLCC intervals resample Pearson of the mapping fitted once on the group
        sign = mapping.direction if mapping.converged else 1
        ci = _bootstrap(x, y, bootstrap, seed, {"srcc": srcc})
        pearson = {"plcc": lambda a, b: sign * plcc(a, b, fit=None)}
        ci.update(_bootstrap(mapping(x), y, bootstrap, seed, pearson))
        row.update(srcc_lo=ci["srcc"][0], srcc_hi=ci["srcc"][1])
        row.update(plcc_lo=ci["plcc"][0], plcc_hi=ci["plcc"][1])
    return {**row, "note": "; ".join(notes)}


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
    joined = join_predictions(pred, mos, scorers, [group_col] if group_col else ())
    table = joined.table
    if group_col is not None:
        table = table.assign(_group=table[group_col])
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
