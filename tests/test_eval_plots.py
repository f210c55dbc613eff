"""The report's figures: numbers on every scatter, signed and n/a bars, coloured 'all' panel,
small-multiple histograms, small groups flagged."""

import numpy as np
import pandas as pd
import pytest

from vqpipe.eval import evaluate, join_predictions
from vqpipe.eval.report import bars_figure, figures, format_value


@pytest.fixture(scope="module")
def report():
    rng = np.random.default_rng(3)
    sizes = {"koniq": 50, "live": 30, "flat": 12, "tiny": 5}
    dataset = [name for name, n in sizes.items() for _ in range(n)]
    mos = rng.uniform(1, 5, len(dataset))
    mos[np.array(dataset) == "flat"] = 2.0
    mos_table = pd.DataFrame({"uri": [f"u{i}" for i in range(len(mos))], "mos": mos})
    mos_table["dataset"] = dataset
    pred = pd.DataFrame(
        {
            "uri": mos_table["uri"],
            "good_score": np.tanh(mos - 3) + rng.normal(0, 0.1, len(mos)),
            "backwards_score": -mos + rng.normal(0, 0.8, len(mos)),
        }
    )
    joined = join_predictions(pred, mos_table)
    metrics = evaluate(joined, None, by="dataset", bootstrap=20)
    return joined, metrics, figures(joined, metrics, "dataset")


def test_every_scatter_shows_srcc_plcc_and_n(report):
    _, metrics, figs = report
    for r in metrics.to_dict("records"):
        slug = r["group"]
        title = figs[f"scatter_{r['scorer']}_{slug}.png"].axes[0].get_title()
        assert f"SRCC {format_value(r['srcc'], 3)}" in title
        assert f"PLCC {format_value(r['plcc'], 3)}" in title and f"n = {r['n']}" in title
        assert ("n < 10" in title) == (r["n"] < 10)
    assert "SRCC n/a" in figs["scatter_good_flat.png"].axes[0].get_title()


def test_fit_curve_is_monotone_and_all_panel_coloured_by_group(report):
    _, _, figs = report
    ax = figs["scatter_backwards_koniq.png"].axes[0]
    (curve,) = ax.get_lines()
    assert np.all(np.diff(curve.get_ydata()) <= 1e-12)  # backwards scorer: falling curve
    legend = figs["scatter_good_all.png"].axes[0].get_legend()
    assert legend is not None
    assert [t.get_text() for t in legend.get_texts()] == ["flat", "koniq", "live", "tiny"]
    assert len(figs["scatter_good_all.png"].axes[0].collections) == 4
    assert figs["scatter_good_koniq.png"].axes[0].get_legend() is None


def test_histograms_are_small_multiples(report):
    _, _, figs = report
    axes = [a for a in figs["hist_good.png"].axes if a.axison]
    titles = [a.get_title() for a in axes]
    assert titles == ["flat (n=12)", "koniq (n=50)", "live (n=30)", "tiny (n=5 < 10!)"]
    assert all(len(a.patches) > 0 for a in axes)


def test_bars_draw_negative_values_and_mark_undefined_groups(report):
    _, metrics, _ = report
    fig = bars_figure(metrics)
    srcc_ax, plcc_ax = fig.axes[:2]
    undefined = metrics["srcc"].isna().sum()
    assert undefined == 2  # flat, for both scorers
    for ax, metric in ((srcc_ax, "srcc"), (plcc_ax, "plcc")):
        heights = [p.get_height() for p in ax.patches if not p.get_hatch()]
        lowest = metrics[metric].min()
        assert lowest < -0.5 and min(heights) == pytest.approx(lowest)
        assert ax.get_ylim()[0] < lowest
        assert sum(1 for p in ax.patches if p.get_hatch()) == undefined
        assert sum(t.get_text() == "n/a" for t in ax.texts) == undefined
    ticks = [t.get_text() for t in plcc_ax.get_xticklabels()]
    assert "tiny\nn=5 *" in ticks and "koniq\nn=50" in ticks


def test_figures_render_to_png(report, tmp_path):
    _, _, figs = report
    fig = figs["comparison.png"]
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
