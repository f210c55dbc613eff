"""The report's figures: numbers on every scatter, signed bars and n/a markers, coloured 'all'
panel, small-multiple histograms for every ``by`` column, wrapped labels that do not overlap,
small groups flagged."""

import numpy as np
import pandas as pd
import pytest

from vqpipe.eval import evaluate, join_predictions
from vqpipe.eval.report import _wrap, bars_figure, figures, format_value


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
        # undefined values: no bar (a bar reads as a value), a hollow marker on the zero line
        assert not any(p.get_hatch() for p in ax.patches)
        assert len(ax.patches) == len(metrics) - undefined
        markers = [ln for ln in ax.get_lines() if ln.get_gid() == "n/a"]
        assert sum(len(ln.get_xdata()) for ln in markers) == undefined
        assert all(np.all(ln.get_ydata() == 0) and ln.get_marker() == "o" for ln in markers)
        assert all(ln.get_markerfacecolor() == "white" for ln in markers)
        assert sum(t.get_text() == "n/a" for t in ax.texts) == undefined
    ticks = [t.get_text() for t in plcc_ax.get_xticklabels()]
    assert "tiny\nn=5 *" in ticks and "koniq\nn=50" in ticks


def test_figures_render_to_png(report, tmp_path):
    _, _, figs = report
    fig = figs["comparison.png"]
    fig.savefig(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


@pytest.fixture(scope="module")
def two_columns():
    """Two ``by`` columns with long snake_case values: the labels a new user's table has."""
    rng = np.random.default_rng(5)
    n = 160
    sources = ["camera_uploads_2024", "web_crawl_licensed", "studio_masters_archive"]
    splits = ["train_holdout_a", "validation_set", "test_final_release"]
    mos = pd.DataFrame(
        {
            "uri": [f"u{i}" for i in range(n)],
            "mos": rng.uniform(1, 5, n),
            "source": rng.choice(sources, n),
            "split": rng.choice(splits, n),
        }
    )
    pred = pd.DataFrame({"uri": mos["uri"], "good_score": mos["mos"] + rng.normal(0, 1, n)})
    pred["other_score"] = rng.normal(0, 1, n)
    by = ["source", "split"]
    joined = join_predictions(pred, mos, columns=by)
    metrics = evaluate(joined, None, by=by, bootstrap=0)
    return joined, metrics, figures(joined, metrics, by)


def _overlaps(labels) -> list[tuple[str, str]]:
    boxes = [(t.get_text(), t.get_window_extent()) for t in labels if t.get_text()]
    return [(a, b) for i, (a, p) in enumerate(boxes) for b, q in boxes[i + 1 :] if p.overlaps(q)]


def test_two_by_columns_histograms_for_every_group(two_columns):
    _, _, figs = two_columns
    for scorer in ("good", "other"):
        axes = [a for a in figs[f"hist_{scorer}.png"].axes if a.axison]
        titles = [a.get_title().replace("\n", "") for a in axes]
        assert len(titles) == 6
        assert [t.split(" (n=")[0] for t in titles] == [
            "source=camera_uploads_2024",
            "source=studio_masters_archive",
            "source=web_crawl_licensed",
            "split=test_final_release",
            "split=train_holdout_a",
            "split=validation_set",
        ]
        assert all(len(a.patches) > 0 for a in axes)
        # one row of panels per column: the split panels start a new row
        rows = {round(a.get_position().y0, 3) for a in axes}
        assert len(rows) == 2


def test_comparison_labels_wrapped_and_not_overlapping(two_columns, tmp_path):
    *_, figs = two_columns
    fig = figs["comparison.png"]
    fig.savefig(tmp_path / "c.png", dpi=100)  # lays the figure out: real text extents
    ticks = fig.axes[1].get_xticklabels()
    texts = [t.get_text() for t in ticks]
    assert "source=\ncamera_\nuploads_2024\nn=" in "".join(texts)
    assert all(max(len(line) for line in t.split("\n")) <= 14 for t in texts)
    assert _overlaps(ticks) == []


def test_many_groups_rotate_their_labels_without_overlap(tmp_path):
    groups = [f"dataset=collection_number_{k:02d}" for k in range(40)]
    metrics = pd.DataFrame(
        {
            "scorer": "good",
            "group": groups,
            "n": 50,
            "srcc": np.linspace(-0.2, 0.9, len(groups)),
            "plcc": np.linspace(-0.1, 0.8, len(groups)),
        }
    )
    fig = bars_figure(metrics)
    fig.savefig(tmp_path / "c.png", dpi=100)
    ticks = fig.axes[1].get_xticklabels()
    assert {t.get_rotation() for t in ticks} == {90.0}
    assert "dataset=collection_number_07  n=50" in [t.get_text() for t in ticks]
    assert _overlaps(ticks) == []


def test_wrap_keeps_short_labels_and_cuts_long_words():
    assert _wrap("koniq") == "koniq" and _wrap("split=test") == "split=test"
    assert _wrap("synthetic-iqa", 16) == "synthetic-iqa"
    assert _wrap("synthetic-iqa") == "synthetic-\niqa"
    assert _wrap("distortion=gaussian_blur") == "distortion=\ngaussian_\nblur"
    assert _wrap("x" * 30) == "x" * 12 + "\n" + "x" * 12 + "\n" + "x" * 6
