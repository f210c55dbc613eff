"""Calibration of score columns to a MOS scale (``vqpipe calibrate``).

Each score column gets a monotone map fitted on the rows of a MOS table (joined on ``uri`` as
``vqpipe eval`` joins): ``logistic`` is the monotone logistic5 fit of the PLCC metric
(:func:`vqpipe.eval.metrics.fit_logistic`, falling back to logistic4 / linear), ``isotonic``
is the pool-adjacent-violators fit of :func:`scipy.optimize.isotonic_regression` (scikit-learn
is not a dependency; scipy's is the same algorithm), interpolated linearly between its block
ends and constant beyond them. The direction of both is the sign of SRCC. k-fold
cross-validation gives out-of-fold predictions for the reported CV SRCC / PLCC / RMSE; the map
written is fitted on every row. The JSON describes each map fully (parameters, or the
interpolation points), so :func:`apply_map` needs nothing else.
"""

from __future__ import annotations

import io
import json
import math
import sys
import warnings
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vqpipe.errors import UserError
from vqpipe.io.fs import url_to_fs
from vqpipe.schema import CALIBRATED, URI, derived_column, score_column, score_prefix

METHODS = ("logistic", "isotonic")
FORMAT = "vqpipe.calibration"
VERSION = 1
MIN_ROWS = 3
_LOGISTIC_PARAMS = {"logistic5": 5, "logistic4": 4, "linear": 2, "identity": 0}


# --- the maps ---------------------------------------------------------------------------


def fit_map(x: np.ndarray, y: np.ndarray, method: str) -> dict[str, Any]:
    """A monotone map of ``x`` onto ``y`` as a JSON-able dict (see :func:`apply_map`)."""
    from vqpipe.eval.metrics import MetricWarning, fit_direction, fit_logistic

    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if method == "logistic":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetricWarning)
            fit = fit_logistic(x, y, "logistic5")
        return {
            "method": "logistic",
            "kind": fit.kind,
            "params": [float(p) for p in fit.params],
            "direction": int(fit.direction),
            "note": fit.note,
        }
    if method == "isotonic":
        from scipy.optimize import isotonic_regression

        increasing = fit_direction(x, y) > 0
        ux, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        means = np.bincount(inverse, weights=y) / counts  # tied predictions: one point
        fitted = isotonic_regression(means, weights=counts, increasing=increasing).x
        # keep only the ends of each constant block: the same linear interpolation
        change = np.r_[True, fitted[1:] != fitted[:-1]] | np.r_[fitted[:-1] != fitted[1:], True]
        return {
            "method": "isotonic",
            "x": ux[change].tolist(),
            "y": fitted[change].tolist(),
            "direction": 1 if increasing else -1,
        }
    raise UserError(f"unknown calibration method {method!r}; choose one of {', '.join(METHODS)}")


def apply_map(spec: dict[str, Any], x: Any) -> np.ndarray:
    """The map of :func:`fit_map` on ``x`` (float64; NaN stays NaN)."""
    from vqpipe.eval.metrics import LogisticFit

    x = np.asarray(x, np.float64)
    if spec["method"] == "logistic":
        kind = spec["kind"]
        fit = LogisticFit(kind, tuple(spec["params"]), kind != "identity", spec["direction"])
        with np.errstate(all="ignore"):
            return np.where(np.isnan(x), np.nan, fit(x))
    out = np.interp(x, spec["x"], spec["y"])  # constant beyond the ends
    return np.where(np.isnan(x), np.nan, out)


def fold_ids(n: int, folds: int, seed: int) -> np.ndarray:
    """Each row's fold: a seeded permutation dealt round-robin into ``min(folds, n)`` folds."""
    return np.random.default_rng(seed).permutation(n) % max(1, min(folds, n))


def cross_fit(x: np.ndarray, y: np.ndarray, method: str, folds: int, seed: int) -> np.ndarray:
    """Out-of-fold predictions: each fold mapped by the map fitted on the other folds."""
    fold = fold_ids(len(x), folds, seed)
    out = np.full(len(x), np.nan)
    for f in np.unique(fold):
        test = fold == f
        if test.all():  # one fold: nothing to hold out
            return apply_map(fit_map(x, y, method), x)
        out[test] = apply_map(fit_map(x[~test], y[~test], method), x[test])
    return out


def cv_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """SRCC, PLCC (Pearson: the predictions are on the MOS scale already) and RMSE."""
    from scipy import stats

    ok = np.isfinite(pred) & np.isfinite(y)
    p, t = pred[ok], y[ok]
    nan = float("nan")
    if len(p) < MIN_ROWS or np.ptp(p) == 0 or np.ptp(t) == 0:
        return {"srcc": nan, "plcc": nan, "rmse": nan}
    return {
        "srcc": float(stats.spearmanr(p, t).statistic),
        "plcc": float(stats.pearsonr(p, t).statistic),
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
    }


# --- MOS-matched rows ---------------------------------------------------------------------


def score_names(columns: list[str], wanted: list[str] | None, what: str) -> list[str]:
    """The score columns to use: ``wanted`` (``gamma`` or ``gamma_score``), else every
    ``*_score`` column of ``columns``; a missing one is a :class:`UserError`."""
    if not wanted:
        names = [c for c in columns if c.endswith("_score") and not c.startswith("ensemble")]
        if not names:
            raise UserError(f"{what} has no <scorer>_score column (columns: {', '.join(columns)})")
        return names
    names = []
    for name in wanted:
        column = name if name in columns else score_column(score_prefix(name))
        if column not in columns or not column.endswith("_score"):
            raise UserError(
                f"--column {name!r}: no score column {column!r} in {what} "
                f"(columns: {', '.join(columns)})"
            )
        names.append(column)
    return list(dict.fromkeys(names))


def matched_rows(
    table: str,
    mos: str,
    columns: list[str] | None,
    storage_options: dict[str, Any] | None,
    mos_root: str | None = None,
) -> tuple[Any, list[str]]:
    """The table's rows matched with the MOS table (``vqpipe eval``'s rule:
    :func:`vqpipe.eval.matching.match_mos`), joined with it, and the score columns; the
    ``uri`` column is read first, then only the matched rows (a pushed-down filter). No match
    is a one-line :class:`UserError` with an example of each side."""
    import pyarrow.dataset as pads

    from vqpipe.eval.evaluate import join_predictions
    from vqpipe.eval.matching import match_mos, no_match_message
    from vqpipe.io.tables import read_table
    from vqpipe.rewards.table import TableSource

    source = TableSource(table, storage_options)
    source.require([URI], "the table needs the column")
    names = score_names(source.columns, columns, table)
    try:
        mos_frame = read_table(mos, storage_options)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the MOS table {mos}: {type(exc).__name__}: {exc}") from None
    keys = mos_frame["uri"] if "uri" in mos_frame else mos_frame.get("path")
    if keys is None or "mos" not in mos_frame:
        raise UserError(
            f"the MOS table {mos} needs 'uri' (or 'path') and 'mos' columns "
            f"(it has {', '.join(map(str, mos_frame.columns))})"
        )
    data = pads.dataset(source.parts, schema=source.schema, format="parquet", filesystem=source.fs)
    all_uris = data.to_table(columns=[URI]).column(URI).to_pylist()
    keys = keys.astype(str).tolist()
    match = match_mos([str(u) for u in all_uris], keys, mos_root)
    if not len(match):
        raise UserError(f"{mos}: {no_match_message(all_uris, keys, mos_root)}")
    uris = pa.array(sorted({all_uris[i] for i in match.table_index}), type=pa.string())
    pred = data.to_table(columns=[URI, *names], filter=pc.field(URI).isin(uris)).to_pandas()
    try:
        joined = join_predictions(pred, mos_frame, [score_prefix(n) for n in names], (), mos_root)
    except ValueError as exc:
        raise UserError(f"{mos}: {exc}") from None
    if len(match) < len(keys) or match.ambiguous:  # partial: one line, the counts
        print(f"{mos}: {match.note()}", file=sys.stderr)
    return joined.table, names


# --- the calibration file -----------------------------------------------------------------


def calibrate(
    table: str,
    mos: str,
    out: str,
    method: str = "logistic",
    columns: list[str] | None = None,
    folds: int = 5,
    seed: int = 0,
    storage_options: dict[str, Any] | None = None,
    mos_root: str | None = None,
) -> dict[str, Any]:
    """Fit a map per score column, write ``out`` (the calibration JSON) and the plot beside it
    (``.png``); returns the calibration record (MOS rows matched as ``vqpipe eval`` matches
    them, relative paths against ``mos_root``)."""
    if method not in METHODS:
        raise UserError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    if folds < 2:
        raise UserError(f"--folds {folds}: use at least 2")
    joined, names = matched_rows(table, mos, columns, storage_options, mos_root)
    record: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "method": method,
        "folds": folds,
        "seed": seed,
        "source": {"table": table, "mos": mos, "mos_root": mos_root},
        "mos_range": [float(joined["mos"].min()), float(joined["mos"].max())]
        if len(joined)
        else None,
        "columns": {},
    }
    points = {}
    for name in names:
        rows = joined[joined[name].notna() & joined["mos"].notna()]
        x, y = rows[name].to_numpy(np.float64), rows["mos"].to_numpy(np.float64)
        if len(x) < MIN_ROWS or np.ptp(x) == 0:
            raise UserError(
                f"{name}: {len(x)} scored rows with MOS"
                + (", all with one score" if len(x) and np.ptp(x) == 0 else "")
                + f"; at least {MIN_ROWS} distinct ones are needed to calibrate"
            )
        oof = cross_fit(x, y, method, folds, seed)
        record["columns"][name] = {
            "output": derived_column(name, CALIBRATED),
            "map": fit_map(x, y, method),
            "n": len(x),
            "raw": {"srcc": cv_metrics(x, y)["srcc"]},
            "cv": cv_metrics(oof, y),
        }
        points[name] = (x, y)
    fs, path = url_to_fs(out, storage_options)
    try:
        parent = path.rsplit("/", 1)[0] if "/" in path else ""
        if parent:
            fs.makedirs(parent, exist_ok=True)
        fs.pipe(path, json.dumps(record, indent=2).encode())
        fs.pipe(plot_path(path), calibration_png(record, points))
    except (OSError, PermissionError) as exc:
        raise UserError(f"cannot write {out}: {type(exc).__name__}: {exc}") from None
    record["plot"] = plot_path(out)
    return record


def plot_path(path: str) -> str:
    """``calib.json`` → ``calib.png`` (the figure beside the file)."""
    return (path[: -len(".json")] if path.endswith(".json") else path) + ".png"


def calibration_png(record: dict[str, Any], points: dict[str, tuple]) -> bytes:
    """One panel per column: score vs MOS, the fitted map, CV SRCC / PLCC in the title."""
    from matplotlib.figure import Figure

    names = list(record["columns"])
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    for ax, name in zip(axes, names, strict=False):
        entry = record["columns"][name]
        x, y = points[name]
        ax.scatter(x, y, s=8, alpha=0.6, color="C0")
        grid = np.linspace(float(x.min()), float(x.max()), 200)
        ax.plot(grid, apply_map(entry["map"], grid), color="black", lw=1.5)
        cv = entry["cv"]
        ax.set_title(
            f"{name} → {entry['output']} ({entry['map'].get('kind', entry['map']['method'])})\n"
            f"CV SRCC {cv['srcc']:.3f} · PLCC {cv['plcc']:.3f} · n = {entry['n']}",
            fontsize=9,
        )
        ax.set(xlabel=name, ylabel="MOS")
    for ax in axes[len(names) :]:
        ax.set_axis_off()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _finite_list(value: Any, what: str, length: int | None = None) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        raise UserError(f"{what}: expected a list of finite numbers")
    if length is not None and len(value) != length:
        raise UserError(f"{what}: expected {length} numbers, got {len(value)}")
    return value


def validate_calibration(record: Any, where: str) -> dict[str, Any]:
    """``record`` if it is a calibration this version can apply, else a one-line
    :class:`UserError` that says what is wrong (``where`` names the file)."""
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise UserError(f'{where}: not a vqpipe calibration (no "format": "{FORMAT}")')
    if record.get("version") != VERSION:
        raise UserError(f"{where}: calibration version {record.get('version')!r}, not {VERSION}")
    columns = record.get("columns")
    if not isinstance(columns, dict) or not columns:
        raise UserError(f'{where}: no "columns" to calibrate')
    for name, entry in columns.items():
        what = f"{where}: column {name!r}"
        if not isinstance(entry, dict) or not isinstance(entry.get("map"), dict):
            raise UserError(f'{what}: no "map"')
        if not isinstance(entry.get("output"), str) or not entry["output"]:
            raise UserError(f'{what}: no "output" column name')
        spec = entry["map"]
        method = spec.get("method")
        if method not in METHODS:
            raise UserError(
                f"{what}: unknown method {method!r}; choose one of {', '.join(METHODS)}"
            )
        if spec.get("direction") not in (1, -1):
            raise UserError(f'{what}: "direction" must be 1 or -1')
        if method == "logistic":
            kind = spec.get("kind")
            if kind not in _LOGISTIC_PARAMS:
                raise UserError(
                    f"{what}: unknown logistic kind {kind!r}; one of {', '.join(_LOGISTIC_PARAMS)}"
                )
            _finite_list(spec.get("params"), f"{what}: params", _LOGISTIC_PARAMS[kind])
        else:
            xs = _finite_list(spec.get("x"), f"{what}: x")
            ys = _finite_list(spec.get("y"), f"{what}: y", len(xs))
            if not xs:
                raise UserError(f"{what}: an isotonic map needs at least one point")
            if np.any(np.diff(xs) <= 0):
                raise UserError(f"{what}: x must increase strictly")
            steps = np.diff(ys) * spec["direction"]
            if (steps < 0).any():
                raise UserError(f"{what}: y is not monotone in the map's direction")
    return record


def load_calibration(path: str, storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Read and validate a calibration JSON (one-line :class:`UserError` otherwise)."""
    try:
        fs, local = url_to_fs(path, storage_options)
        text = fs.cat_file(local).decode()
    except FileNotFoundError:
        raise UserError(f"--calibration {path}: no such file") from None
    except Exception as exc:
        raise UserError(f"--calibration {path}: cannot read it: {type(exc).__name__}") from None
    try:
        record = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from None
    return validate_calibration(record, path)


def check_columns(record: dict[str, Any], columns: list[str], what: str) -> list[str]:
    """The calibration's columns that ``columns`` has; none is a :class:`UserError`."""
    present = [c for c in record["columns"] if c in columns]
    if not present:
        raise UserError(
            f"the calibration maps {', '.join(record['columns'])}, none of which {what} has "
            f"(it has {', '.join(columns)})"
        )
    return present


# --- applying it --------------------------------------------------------------------------


def calibrate_batch(batch: dict[str, np.ndarray], calibration: dict[str, Any]) -> dict:
    """A Ray Data ``map_batches`` stage over numpy batches (the scoring job, before its write
    stage): ``<column>_calibrated`` for each calibrated column present (NaN → NaN)."""
    for name, entry in calibration["columns"].items():
        if name in batch:
            values = np.asarray(batch[name], np.float64)
            batch[entry["output"]] = apply_map(entry["map"], values).astype(np.float32)
    return batch


def calibrate_table(batch: pa.Table, calibration: dict[str, Any]) -> pa.Table:
    """The same over a pyarrow batch (``vqpipe calibrate --apply``, ``vqpipe fuse``): nulls
    stay nulls; an existing output column is replaced."""
    for name, entry in calibration["columns"].items():
        if name not in batch.column_names:
            continue
        values = batch[name].to_numpy(zero_copy_only=False).astype(np.float64)  # null → NaN
        mapped = apply_map(entry["map"], values).astype(np.float32)
        array = pa.array(mapped, mask=np.isnan(mapped), type=pa.float32())
        if entry["output"] in batch.column_names:
            batch = batch.drop_columns([entry["output"]])
        batch = batch.append_column(entry["output"], array)
    return batch


class ApplyJob:
    """``vqpipe calibrate --apply``: checks before Ray in the constructor, the job in run()."""

    def __init__(
        self, calibration: str, table: str, out: str, storage_options: dict[str, Any] | None
    ) -> None:
        from vqpipe.rewards.table import TableSource, output_target

        self.record = load_calibration(calibration, storage_options)
        self.source = TableSource(table, storage_options)
        self.present = check_columns(self.record, self.source.columns, table)
        self.target = output_target(out, storage_options, table)
        self.out = out

    def run(self) -> dict[str, Any]:
        from vqpipe.rewards.table import count_rows, source_rows, write_dataset

        ds = self.source.dataset().map_batches(
            calibrate_table, fn_args=(self.record,), batch_format="pyarrow"
        )
        write_dataset(ds, self.target, source_rows(self.source))
        outputs = [self.record["columns"][c]["output"] for c in self.present]
        return {"rows": count_rows(self.target), "columns": outputs, "out": self.out}
