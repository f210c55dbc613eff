"""Evaluation report directory: ``metrics.json``, ``report.md`` and PNG plots.

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot, no backend switch), so the
same functions serve the report and a notebook (``display(fig)``).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from vqpipe.eval.evaluate import (
    SMALL_N,
    Joined,
    by_columns,
    evaluate,
    group_masks,
    join_predictions,
    oriented_mos,
)
from vqpipe.eval.metrics import LogisticFit, fit_logistic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAX_PANELS = 24  # histogram small multiples; more groups are listed as left out
_SMALL_FACE = "#fdecea"  # background of panels whose group has n < SMALL_N


def format_value(value: Any, digits: int = 4) -> str:
    """A metric for people: ``0.9123``, or ``n/a`` when it is undefined (None / NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _with_target(table: pd.DataFrame) -> pd.DataFrame:
    if "target" in table.columns:
        return table
    return table.assign(target=oriented_mos(table))


def _colour_column(table: pd.DataFrame, by: Sequence[str]) -> str | None:
    """The first ``by`` column with more than one value (colours the ``all`` panel)."""
    for col in by_columns(by):
        if col in table.columns and table[col].nunique(dropna=False) > 1:
            return col
    return None


def scatter_figure(
    table: pd.DataFrame,
    scorer: str,
    row: dict[str, Any],
    mask: pd.Series | None = None,
    colour_by: str | None = None,
) -> Figure:
    """Prediction vs MOS of one group with the fitted monotone curve; SRCC, PLCC and n in the
    title (``n/a`` when undefined), the panel tinted and flagged when n < SMALL_N; points
    coloured by ``colour_by`` with a legend (the ``all`` panel)."""
    table = _with_target(table)
    t = table if mask is None else table[mask]
    t = t[t[f"{scorer}_score"].notna()]
    x, y = t[f"{scorer}_score"].to_numpy(float), t["target"].to_numpy(float)
    fig = _figure(4.8, 4.2)
    ax = fig.subplots()
    if colour_by is not None and t[colour_by].nunique(dropna=False) > 1:
        keys = t[colour_by].astype(object).where(t[colour_by].notna(), "(missing)")
        for k, key in enumerate(sorted(keys.unique(), key=str)):
            sel = (keys == key).to_numpy()
            ax.scatter(x[sel], y[sel], s=10, alpha=0.7, color=f"C{k % 10}", label=f"{key}")
        ax.legend(title=colour_by, loc="best", fontsize="x-small", title_fontsize="x-small")
    else:
        ax.scatter(x, y, s=10, alpha=0.7, color="C0")
    mapping = _quiet_fit(x, y) if isinstance(row.get("fit"), str) else None
    if mapping is not None and mapping.converged:  # the curve PLCC used, in MOS units
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, mapping(grid), color="black", lw=1.5)
    if mapping is not None and mapping.note:
        ax.text(0.01, 0.01, f"fit: {mapping.note}", transform=ax.transAxes, fontsize=7)
    n = int(row["n"])
    stats = f"SRCC {format_value(row['srcc'], 3)} · PLCC {format_value(row['plcc'], 3)} · n = {n}"
    title = f"{scorer} — {row['group']}\n{stats}"
    if row.get("small"):
        title += f"  (n < {SMALL_N}!)"
        ax.set_facecolor(_SMALL_FACE)
    ax.set_title(title, fontsize=9, color="C3" if row.get("small") else "black")
    if not np.isfinite(row["srcc"]) and row.get("note"):
        box = {"facecolor": "white", "edgecolor": "0.6", "alpha": 0.9}
        ax.text(0.5, 0.9, row["note"], transform=ax.transAxes, ha="center", fontsize=8, bbox=box)
    lower = bool(t["lower_better"].astype(bool).any())
    ax.set(xlabel=f"{scorer} score", ylabel="MOS (lower-better turned around)" if lower else "MOS")
    return fig


def _quiet_fit(x: np.ndarray, y: np.ndarray) -> LogisticFit:
    import warnings

    from vqpipe.eval.metrics import MetricWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricWarning)
        return fit_logistic(x, y)


def histogram_figure(
    table: pd.DataFrame,
    scorer: str,
    groups: Sequence[tuple[str, pd.Series]] | Sequence[Sequence[tuple[str, pd.Series]]],
) -> Figure:
    """Score histograms as small multiples, one panel per group, shared bins and x axis;
    panels of groups with n < SMALL_N are tinted and flagged. ``groups`` is one list of
    ``(label, mask)`` or a list of such sections (one per ``--by`` column): each section
    starts a new row of panels. At most MAX_PANELS panels; the rest are counted in the title."""
    sections = [list(s) for s in groups] if groups and not isinstance(groups[0][0], str) else []
    if not sections:
        sections = [list(groups)]  # type: ignore[arg-type]
    shown: list[list[tuple[str, pd.Series]]] = []
    budget = MAX_PANELS
    for section in sections:
        if budget > 0 and section:
            shown.append(section[:budget])
            budget -= len(shown[-1])
    cols = min(4, max(len(s) for s in shown))
    row_of = np.cumsum([0] + [math.ceil(len(s) / cols) for s in shown])
    rows = int(row_of[-1])
    scores = table[f"{scorer}_score"]
    valid = scores.dropna().to_numpy(float)
    fig = _figure(2.6 * cols + 0.6, 2.0 * rows + 0.6)
    grid = fig.subplots(rows, cols, sharex=True, squeeze=False)
    n_bins = int(np.clip(np.sqrt(max(len(valid), 1)), 8, 30))
    bins = np.histogram_bin_edges(valid, n_bins) if len(valid) else n_bins
    used = set()
    k = 0
    for s, section in enumerate(shown):
        for i, (label, mask) in enumerate(section):
            r, c = divmod(i, cols)
            ax = grid[row_of[s] + r, c]
            used.add((row_of[s] + r, c))
            values = scores[mask].dropna().to_numpy(float)
            ax.hist(values, bins=bins, color=f"C{k % 10}", alpha=0.85)
            k += 1
            small = len(values) < SMALL_N
            title = f"{label} (n={len(values)}{f' < {SMALL_N}!' if small else ''})"
            ax.set_title(_wrap(title, 34), fontsize=8, color="C3" if small else "black")
            if small:
                ax.set_facecolor(_SMALL_FACE)
            ax.tick_params(labelsize=7)
    for (r, c), ax in np.ndenumerate(grid):
        if (r, c) not in used:
            ax.set_axis_off()
    left_out = sum(len(s) for s in sections) - sum(len(s) for s in shown)
    suffix = f" ({left_out} more groups not shown)" if left_out > 0 else ""
    fig.suptitle(f"{scorer} score distribution{suffix}", fontsize=10)
    fig.supxlabel(f"{scorer} score", fontsize=9)
    fig.supylabel("count", fontsize=9)
    return fig


def _wrap(label: str, width: int = 12) -> str:
    """A group label on several lines when it is long: ``column=`` on its own line, then the
    value packed into lines of at most ``width`` characters, broken after spaces, ``_``, ``-``
    or ``/`` (a word longer than ``width`` is cut)."""
    if len(label) <= width:
        return label
    head, sep, tail = label.partition("=")
    if not sep:
        head, tail = "", label
    # not textwrap.wrap: it breaks only at spaces and hyphens, and group values are often
    # snake_case identifiers
    chunks = [c for c in re.findall(r"[^ _/-]*[ _/-]*", tail) if c]
    chunks = [p for c in chunks for p in (c[i : i + width] for i in range(0, len(c), width))]
    lines = [head + sep] if sep else []
    line = ""
    for chunk in chunks:
        if line and len(line) + len(chunk.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        line += chunk
    lines.append(line.rstrip())
    return "\n".join(ln for ln in lines if ln)


def bars_figure(metrics: pd.DataFrame) -> Figure:
    """SRCC and PLCC per group and scorer with bootstrap intervals; negative values drawn
    below a zero line, an undefined value as a hollow marker on the zero line labelled
    ``n/a`` (no bar: it has no height), groups with n < SMALL_N faded and starred. Long
    group labels are wrapped; labels are turned upright when even wrapped ones would not fit."""
    groups = list(dict.fromkeys(metrics["group"]))
    scorers = list(dict.fromkeys(metrics["scorer"]))
    width = 0.8 / len(scorers)
    slot = max(0.45 * len(scorers), 0.95)  # inches per group: a wrapped label fits in 0.95
    fig_width = min(24.0, max(6.0, slot * len(groups) + 2.5))
    per_group = (fig_width - 2.5) / len(groups)  # inches of axis per group
    rotate = per_group < 0.9
    chars = max(12, int(per_group * 14))  # 8 pt text: about 14 characters to the inch
    fig = _figure(fig_width, 6.0)
    axes = fig.subplots(2, 1, sharex=True)
    n_of = metrics.groupby("group", sort=False)["n"].min().reindex(groups)
    small = n_of < SMALL_N
    for ax, metric in zip(axes, ("srcc", "plcc"), strict=True):
        values = (
            metrics[[metric, f"{metric}_lo"]] if f"{metric}_lo" in metrics else metrics[[metric]]
        )
        low = float(np.nanmin(np.append(values.to_numpy(float).ravel(), 0.0)))
        ymin = min(0.0, math.floor(low * 10) / 10 - 0.05)
        ymax = 1.05
        for k, scorer in enumerate(scorers):
            m = metrics[metrics["scorer"] == scorer].set_index("group").reindex(groups)
            pos = np.arange(len(groups)) + (k - (len(scorers) - 1) / 2) * width
            v = m[metric].to_numpy(float)
            defined = np.isfinite(v)
            err = None
            if f"{metric}_lo" in m:
                lo, hi = m[f"{metric}_lo"].to_numpy(float), m[f"{metric}_hi"].to_numpy(float)
                err = np.nan_to_num(np.clip(np.vstack([v - lo, hi - v]), 0, None))
                err = err[:, defined]
            colour = f"C{k % 10}"
            alphas = np.where(small.to_numpy(), 0.4, 0.9)[defined]
            bars = ax.bar(
                pos[defined],
                v[defined],
                width,
                yerr=err,
                capsize=2,
                color=colour,
                label=scorer,
                error_kw={"lw": 0.8},
            )
            for bar, alpha in zip(bars, alphas, strict=True):
                bar.set_alpha(float(alpha))
            if (~defined).any():  # a marker, not a bar: a bar would read as a value
                undefined = pos[~defined]
                ax.plot(
                    undefined,
                    np.zeros(len(undefined)),
                    ls="none",
                    marker="o",
                    ms=7,
                    mfc="white",
                    mec=colour,
                    mew=1.5,
                    gid="n/a",
                    zorder=3,
                )
                for p in undefined:
                    ax.annotate(
                        "n/a",
                        (p, 0.0),
                        xytext=(0, 6),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize=7,
                        color="0.3",
                        rotation=90,
                    )
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylim(ymin, ymax)
        ax.set_ylabel(metric.upper())
        ax.grid(axis="y", alpha=0.3)
    # wrapped labels side by side; when even those do not fit, one line each, turned upright
    # (a turned multi-line label still spans its neighbours' width)
    sep = "  " if rotate else "\n"
    labels = [
        f"{g if rotate else _wrap(str(g), chars)}{sep}n={n}{' *' if s else ''}"
        for g, n, s in zip(groups, n_of, small, strict=True)
    ]
    axes[1].set_xticks(np.arange(len(groups)), labels, rotation=90 if rotate else 0, fontsize=8)
    for tick, s in zip(axes[1].get_xticklabels(), small, strict=True):
        tick.set_color("C3" if s else "black")
    axes[0].legend(loc="lower left", fontsize="small", ncols=min(len(scorers), 4))
    undefined = metrics[["srcc", "plcc"]].isna().to_numpy().any()
    notes = ["○ n/a: undefined (see report.md)"] if undefined else []
    if small.any():
        notes.insert(0, f"* faded: n < {SMALL_N}, unreliable")
    if "srcc_lo" in metrics:
        notes.append("whiskers: 95 % bootstrap interval")
    axes[1].set_xlabel(("   ·   " if fig_width >= 9 else "\n").join(notes), fontsize=8)
    fig.suptitle("SRCC and PLCC per group", fontsize=10)
    return fig


def figures(
    joined: Joined, metrics: pd.DataFrame, by: str | Sequence[str] | None
) -> dict[str, Figure]:
    """File name → figure: one scatter per scorer and group, one histogram grid per scorer
    (a row of panels per ``by`` column, one panel per group; the ``all`` panel alone when no
    column splits the data) and the comparison bars."""
    columns = by_columns(by)
    table = _with_target(joined.table)
    groups = group_masks(table, columns)
    colour_by = _colour_column(table, columns)
    sections = [[(g, m) for g, c, m in groups if c == col] for col in columns]
    hist_groups = [s for s in sections if s] or [[(groups[0][0], groups[0][2])]]
    out: dict[str, Figure] = {}
    for scorer in joined.scorers:
        rows = metrics[metrics["scorer"] == scorer].set_index("group")
        for label, _col, mask in groups:
            row = {"group": label, **rows.loc[label].to_dict()}
            name = f"scatter_{_slug(scorer)}_{_slug(label)}.png"
            out[name] = scatter_figure(
                table, scorer, row, mask, colour_by if label == "all" else None
            )
        out[f"hist_{_slug(scorer)}.png"] = histogram_figure(table, scorer, hist_groups)
    out["comparison.png"] = bars_figure(metrics)
    return out


def _interval(row: dict[str, Any], metric: str) -> str:
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return ""
    return f" [{lo:.3f}, {hi:.3f}]"


def write_report(
    pred: pd.DataFrame,
    mos: pd.DataFrame,
    out_dir: str | os.PathLike,
    by: str | Sequence[str] | None = "dataset",
    bootstrap: int = 200,
    seed: int = 0,
    mos_root: str | None = None,
    fused: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate and write ``metrics.json``, ``report.md`` and the plots; returns the metrics
    record (also what ``metrics.json`` holds). Undefined metrics are ``null`` in the JSON and
    ``n/a`` in the report; groups with n < SMALL_N are listed under ``small_groups``. MOS rows
    match as :func:`vqpipe.eval.matching.match_mos` says (relative paths under ``mos_root``);
    ``fused`` (a ``vqpipe fuse`` record) flags an ensemble evaluated on its fitted rows
    (``in_sample``)."""
    from vqpipe.rewards.fuse import in_sample, in_sample_warning

    columns = by_columns(by)
    joined = join_predictions(pred, mos, columns=columns, mos_root=mos_root)
    overlap = in_sample(joined.table["uri"], fused) if "ensemble" in joined.scorers else None
    metrics = evaluate(joined, None, by=columns, bootstrap=bootstrap, seed=seed)
    figs = figures(joined, metrics, columns)  # everything computed before anything is written
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figs.items():
        fig.savefig(out / name, dpi=100)
    records = json.loads(metrics.to_json(orient="records"))
    flagged = [{k: r[k] for k in ("scorer", "group", "n")} for r in records if r["small"]]
    record = {
        "join": joined.summary(),
        "matched_by": joined.match.by if joined.match else None,
        "ambiguous_basenames": joined.match.ambiguous if joined.match else 0,
        "missing_predictions": joined.missing,
        "without_mos": joined.extra,
        "failed": joined.failed,
        "by": columns,
        "small_n": SMALL_N,
        "small_groups": flagged,
        "metrics": records,
        "bootstrap": bootstrap,
        "plots": list(figs),
        "in_sample": overlap,
        "warnings": [in_sample_warning(overlap, len(joined.table))] if overlap else [],
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    (out / "report.md").write_text(_markdown(joined, metrics, record))
    return record


def _markdown(joined: Joined, metrics: pd.DataFrame, record: dict[str, Any]) -> str:
    by = ", ".join(record["by"]) or "none"
    lines = [
        "# Evaluation report",
        "",
        f"Matched {len(joined.table)} predictions with MOS; "
        f"{len(joined.missing)} MOS rows had no prediction, {len(joined.extra)} "
        f"predictions had no MOS, failed scores: {joined.summary()['failed'] or 'none'}. "
        f"Groups by: {by}.",
        "",
        "| scorer | group | n | SRCC | KRCC | PLCC | note |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in metrics.to_dict("records"):
        n = f"{r['n']} ⚠" if r["small"] else str(r["n"])
        lines.append(
            f"| {r['scorer']} | {r['group']} | {n} "
            f"| {format_value(r['srcc'])}{_interval(r, 'srcc')} | {format_value(r['krcc'])} "
            f"| {format_value(r['plcc'])}{_interval(r, 'plcc')} | {r['note']} |"
        )
    lines.append("")
    if record["small_groups"]:
        names = ", ".join(
            f"{g['scorer']}/{g['group']} (n={g['n']})" for g in record["small_groups"]
        )
        lines += [f"⚠ Fewer than {SMALL_N} scored items, correlations unreliable: {names}.", ""]
    lines += [
        "n/a: undefined (fewer than 3 items, or all MOS / all predictions equal). PLCC after a "
        "monotone logistic5 mapping, signed like SRCC."
        + (" Intervals: 95 % bootstrap." if record["bootstrap"] else ""),
        "",
    ]
    lines += [f"⚠ {w}." for w in record.get("warnings", [])] + [""] * bool(record.get("warnings"))
    lines += [f"![{p}]({p})" for p in record["plots"]]
    return "\n".join(lines) + "\n"
