"""Evaluation report directory: ``metrics.json``, ``report.md`` and PNG plots."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vqpipe.eval.evaluate import Joined, evaluate, join_predictions
from vqpipe.eval.metrics import fit_logistic


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)


def plot_scatter(joined: Joined, scorer: str, group: str, path: Path) -> None:
    """Prediction vs MOS with the fitted logistic5 curve."""
    plt = _plt()
    t = joined.table if group == "all" else joined.table[joined.table["dataset"] == group]
    t = t[t[f"{scorer}_score"].notna()]
    x, y = t[f"{scorer}_score"].to_numpy(float), t["mos"].to_numpy(float)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.scatter(x, y, s=8, alpha=0.6)
    if len(x) >= 5 and np.ptp(x) > 0:
        fit = fit_logistic(x, y)
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, fit(grid), color="C3", label="logistic5 fit")
        ax.legend(loc="best")
    ax.set(xlabel=f"{scorer} score", ylabel="MOS", title=f"{scorer} — {group} (n={len(x)})")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_histograms(joined: Joined, scorer: str, path: Path) -> None:
    """Score histogram per dataset."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, g in joined.table.groupby("dataset"):
        ax.hist(g[f"{scorer}_score"].dropna(), bins=30, alpha=0.5, label=str(name))
    ax.set(xlabel=f"{scorer} score", ylabel="count", title=f"{scorer} score distribution")
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_bars(metrics: pd.DataFrame, path: Path) -> None:
    """SRCC and PLCC per scorer and group, with bootstrap intervals when present."""
    plt = _plt()
    groups = list(dict.fromkeys(metrics["group"]))
    scorers = list(dict.fromkeys(metrics["scorer"]))
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 1.5 * len(groups) * len(scorers)), 3.5))
    width = 0.8 / len(scorers)
    for ax, metric in zip(axes, ("srcc", "plcc"), strict=True):
        for k, scorer in enumerate(scorers):
            m = metrics[metrics["scorer"] == scorer].set_index("group").reindex(groups)
            pos = np.arange(len(groups)) + k * width
            err = None
            if f"{metric}_lo" in m:
                err = np.abs(
                    np.vstack([m[metric] - m[f"{metric}_lo"], m[f"{metric}_hi"] - m[metric]])
                )
            ax.bar(pos, m[metric], width, yerr=err, label=scorer, capsize=2)
        ax.set_xticks(np.arange(len(groups)) + 0.4 - width / 2, groups, rotation=30)
        ax.set(title=metric.upper(), ylim=(min(0, float(metrics[metric].min())), 1))
    axes[0].legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _interval(row: dict[str, Any], metric: str) -> str:
    lo = row.get(f"{metric}_lo")
    return f" [{lo:.3f}, {row[f'{metric}_hi']:.3f}]" if lo is not None and pd.notna(lo) else ""


def write_report(
    pred: pd.DataFrame,
    mos: pd.DataFrame,
    out_dir: str | os.PathLike,
    by: str | None = "dataset",
    bootstrap: int = 200,
    seed: int = 0,
) -> dict[str, Any]:
    """Evaluate and write ``metrics.json``, ``report.md`` and the plots; returns the metrics
    record (also what ``metrics.json`` holds)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    joined = join_predictions(pred, mos)
    metrics = evaluate(joined, None, by=by, bootstrap=bootstrap, seed=seed)
    plots = []
    for scorer in joined.scorers:
        for group in metrics.loc[metrics["scorer"] == scorer, "group"]:
            name = f"scatter_{_slug(scorer)}_{_slug(group)}.png"
            plot_scatter(joined, scorer, group, out / name)
            plots.append(name)
        name = f"hist_{_slug(scorer)}.png"
        plot_histograms(joined, scorer, out / name)
        plots.append(name)
    plot_bars(metrics, out / "comparison.png")
    plots.append("comparison.png")
    record = {
        "join": joined.summary(),
        "missing_predictions": joined.missing,
        "without_mos": joined.extra,
        "failed": joined.failed,
        "metrics": json.loads(metrics.to_json(orient="records")),
        "bootstrap": bootstrap,
        "plots": plots,
    }
    (out / "metrics.json").write_text(json.dumps(record, indent=2))
    lines = [
        "# Evaluation report",
        "",
        f"Matched {len(joined.table)} predictions with MOS; "
        f"{len(joined.missing)} MOS rows had no prediction, {len(joined.extra)} "
        f"predictions had no MOS, failed scores: {joined.summary()['failed'] or 'none'}.",
        "",
        "| scorer | group | n | SRCC | KRCC | PLCC |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in metrics.to_dict("records"):
        lines.append(
            f"| {r['scorer']} | {r['group']} | {r['n']} | {r['srcc']:.4f}{_interval(r, 'srcc')} "
            f"| {r['krcc']:.4f} | {r['plcc']:.4f}{_interval(r, 'plcc')} |"
        )
    lines += ["", "Intervals: 95 % bootstrap." if bootstrap else "", ""]
    lines += [f"![{p}]({p})" for p in plots]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return record
