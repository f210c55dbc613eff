"""A calibrated ensemble of scorers (``vqpipe fuse``).

``ensemble_score`` = Σ wᵢ cᵢ / Σ wᵢ over the calibrated scores cᵢ a row has (a NULL score
drops out and the others' weights are renormalised; when only zero-weight scorers are left
they count equally; no score at all → NULL). ``ensemble_spread`` = the standard deviation
(ddof 0) of a row's calibrated scores, NULL with fewer than two: how much the methods
disagree, a flag for review.

Weights: equal without a MOS table. With one, non-negative least squares
(``scipy.optimize.nnls``) of the centred MOS on the centred calibrated scores, normalised to
sum 1, fitted on *out-of-fold* calibrated scores (each column re-calibrated by the
calibration's method on the other folds: stacking, so a map that overfits its own rows earns
no weight for it). The ensemble's CV SRCC / PLCC come from an outer loop over the same folds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from vqpipe.errors import UserError
from vqpipe.schema import ENSEMBLE_SCORE, ENSEMBLE_SPREAD

FUSE_RECORD = "_fuse.json"


def ensemble(calibrated: np.ndarray, weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ensemble_score, ensemble_spread)`` of ``[rows, scorers]`` calibrated scores (NaN =
    missing) with non-negative ``weights`` (see the module docstring)."""
    c = np.asarray(calibrated, np.float64)
    present = np.isfinite(c)
    values = np.where(present, c, 0.0)
    w = np.where(present, np.asarray(weights, np.float64)[None, :], 0.0)
    total = w.sum(axis=1)
    fallback = (total <= 0) & present.any(axis=1)  # only zero-weight scorers: equal weights
    w[fallback] = present[fallback].astype(np.float64)
    total = w.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(total > 0, (w * values).sum(axis=1) / total, np.nan)
        count = present.sum(axis=1)
        mean = values.sum(axis=1) / np.maximum(count, 1)
        var = (np.where(present, (values - mean[:, None]) ** 2, 0.0)).sum(axis=1)
        spread = np.where(count >= 2, np.sqrt(var / np.maximum(count, 1)), np.nan)
    return score, spread


def nnls_weights(calibrated: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Non-negative weights summing to 1 that fit the centred target from the centred
    calibrated scores (complete rows); equal weights when NNLS gives all zeros."""
    from scipy.optimize import nnls

    a = calibrated - calibrated.mean(axis=0)
    w, _ = nnls(a, target - target.mean())
    if not np.any(w > 0):
        return np.full(calibrated.shape[1], 1.0 / calibrated.shape[1])
    return w / w.sum()


def fuse_table(batch: pa.Table, calibration: dict[str, Any], weights: dict[str, float]) -> Any:
    """``map_batches`` over pyarrow batches: the calibrated columns, then the ensemble."""
    from vqpipe.rewards.calibrate import calibrate_table

    batch = calibrate_table(batch, calibration)
    outputs = [calibration["columns"][c]["output"] for c in weights]
    c = np.column_stack(
        [batch[o].to_numpy(zero_copy_only=False).astype(np.float64) for o in outputs]
    )
    score, spread = ensemble(c, np.array(list(weights.values())))
    for name, values in ((ENSEMBLE_SCORE, score), (ENSEMBLE_SPREAD, spread)):
        if name in batch.column_names:
            batch = batch.drop_columns([name])
        values = values.astype(np.float32)
        batch = batch.append_column(name, pa.array(values, mask=np.isnan(values)))
    return batch


def fit_weights(
    table: str,
    mos: str,
    calibration: dict[str, Any],
    columns: list[str],
    storage_options: dict[str, Any] | None,
    mos_root: str | None = None,
) -> dict[str, Any]:
    """Stacked NNLS weights on the MOS-matched rows, with the CV metrics of the ensemble and
    of each calibrated column on the same rows, and the URIs of the rows fitted on
    (``fitted_uris``: ``vqpipe eval`` warns when it evaluates the ensemble on them)."""
    from vqpipe.rewards.calibrate import cross_fit, cv_metrics, fold_ids, matched_rows

    joined, _ = matched_rows(table, mos, columns, storage_options, mos_root)
    y = joined["mos"].to_numpy(np.float64)
    folds, seed = int(calibration.get("folds", 5)), int(calibration.get("seed", 0))
    oof = np.full((len(joined), len(columns)), np.nan)
    for k, name in enumerate(columns):
        x = joined[name].to_numpy(np.float64)
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() >= 3 and np.ptp(x[ok]) > 0:
            method = calibration["columns"][name]["map"]["method"]
            oof[ok, k] = cross_fit(x[ok], y[ok], method, folds, seed)
    complete = np.isfinite(oof).all(axis=1) & np.isfinite(y)
    if complete.sum() < max(3, len(columns) + 1):
        raise UserError(
            f"{mos}: {int(complete.sum())} rows have MOS and every calibrated score; too few "
            "to fit ensemble weights (leave out --mos for equal weights)"
        )
    c, t = oof[complete], y[complete]
    weights = nnls_weights(c, t)
    fold = fold_ids(len(t), folds, seed + 1)  # outer folds for the ensemble's own CV
    held = np.full(len(t), np.nan)
    for f in np.unique(fold):
        test = fold == f
        if test.all():
            held = ensemble(c, weights)[0]
            break
        held[test] = ensemble(c[test], nnls_weights(c[~test], t[~test]))[0]
    singles = {name: cv_metrics(c[:, k], t) for k, name in enumerate(columns)}
    return {
        "weights": dict(zip(columns, weights.tolist(), strict=True)),
        "n": int(complete.sum()),
        "fitted_uris": sorted(joined["uri"][complete].astype(str)),
        "cv": {"ensemble": cv_metrics(held, t), **singles},
    }


class FuseJob:
    """``vqpipe fuse``: checks (and the weights, from the MOS rows only) before Ray, the
    table-wide job in :meth:`run`."""

    def __init__(
        self,
        table: str,
        calibration: str,
        out: str,
        mos: str | None = None,
        storage_options: dict[str, Any] | None = None,
        mos_root: str | None = None,
    ) -> None:
        from vqpipe.rewards.calibrate import check_columns, load_calibration
        from vqpipe.rewards.table import TableSource, output_target

        self.calibration = load_calibration(calibration, storage_options)
        self.source = TableSource(table, storage_options)
        self.columns = check_columns(self.calibration, self.source.columns, table)
        missing = [c for c in self.calibration["columns"] if c not in self.columns]
        if missing:
            raise UserError(
                f"{table} has no {', '.join(map(repr, missing))} column: the calibration's "
                "columns are the ensemble's members"
            )
        if len(self.columns) < 2:
            raise UserError(
                f"the calibration maps one column ({self.columns[0]}): an ensemble needs two"
            )
        self.target = output_target(out, storage_options, table)
        self.out, self.table, self.mos = out, table, mos
        if mos is None:
            equal = 1.0 / len(self.columns)
            self.fit: dict[str, Any] = {"weights": dict.fromkeys(self.columns, equal)}
        else:
            self.fit = fit_weights(
                table, mos, self.calibration, self.columns, storage_options, mos_root
            )

    def run(self) -> dict[str, Any]:
        from vqpipe.rewards.table import count_rows, source_rows, write_dataset, write_record

        ds = self.source.dataset().map_batches(
            fuse_table, fn_args=(self.calibration, self.fit["weights"]), batch_format="pyarrow"
        )
        write_dataset(ds, self.target, source_rows(self.source))
        record = {"source": self.table, "mos": self.mos, **self.fit}
        record["rows"] = count_rows(self.target)
        write_record(self.target, FUSE_RECORD, record)
        return {**record, "out": self.out}


def fuse_record(table: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The ``_fuse.json`` of a table written by ``vqpipe fuse`` (None for any other table)."""
    import json

    from vqpipe.storage import QualityTable

    try:
        target = QualityTable(table, storage_options)
        return json.loads(target.fs.cat_file(target.path(FUSE_RECORD)).decode())
    except Exception:  # not a fused table (a file, no record, unreadable): nothing to warn about
        return None


def in_sample(uris: Any, record: dict[str, Any] | None) -> dict[str, Any] | None:
    """How many of ``uris`` (the rows an evaluation matched) the ensemble's weights were
    fitted on (``fuse --mos``), with fuse's cross-validated metrics; None without overlap."""
    fitted = set((record or {}).get("fitted_uris") or ())
    overlap = len(fitted.intersection(map(str, uris)))
    if not overlap:
        return None
    cv = (record.get("cv") or {}).get("ensemble", {})
    return {
        "column": ENSEMBLE_SCORE,
        "rows": overlap,
        "fitted": len(fitted),
        "mos": record.get("mos"),
        "cv_srcc": cv.get("srcc"),
        "cv_plcc": cv.get("plcc"),
    }


def in_sample_warning(info: dict[str, Any], matched: int) -> str:
    """The one-line warning of :func:`in_sample`."""
    cv = info.get("cv_srcc")
    cv_text = f"; fuse's cross-validated SRCC is {cv:.3f}" if isinstance(cv, float) else ""
    return (
        f"{info['column']}'s weights were fitted on {info['rows']} of these {matched} rows "
        f"(vqpipe fuse --mos {info['mos']}): its correlations here are in-sample, optimistic"
        f"{cv_text}; evaluate on other rows"
    )
