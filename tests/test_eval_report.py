"""vqpipe eval: joins reported, metrics equal direct computation, report files valid."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from vqpipe.cli import main
from vqpipe.eval import evaluate, join_predictions, median_over_splits, plcc, srcc
from vqpipe.eval.report import write_report


@pytest.fixture
def tables():
    rng = np.random.default_rng(0)
    n = 60
    mos = pd.DataFrame(
        {
            "path": [f"s3://lake/img{i}.jpg" for i in range(n)],
            "mos": rng.uniform(1, 5, n),
            "dataset": ["koniq"] * 30 + ["live"] * 30,
            "lower_better": [False] * 30 + [True] * 30,
        }
    )
    pred = pd.DataFrame(
        {
            "uri": [*mos["path"][:55], "s3://lake/other.jpg"],  # 5 missing, 1 extra
            "good_score": [*(mos["mos"][:55] + rng.normal(0, 0.3, 55)), 3.0],
            "noise_score": list(rng.uniform(0, 1, 56)),
            "good_probs": [[0.2] * 5] * 56,
            "error": [None] * 56,
        }
    )
    pred.loc[3, "good_score"] = np.nan  # a failed row
    pred.loc[3, "error"] = "decode: broken"
    return pred, mos


def test_join_reports_missing_extra_and_failed(tables):
    pred, mos = tables
    joined = join_predictions(pred, mos)
    assert joined.scorers == ["good", "noise"]
    assert len(joined.table) == 55
    assert joined.missing == sorted(f"s3://lake/img{i}.jpg" for i in range(55, 60))
    assert joined.extra == ["s3://lake/other.jpg"]
    assert joined.failed == {"good": ["s3://lake/img3.jpg"]}


def test_metrics_equal_direct_computation(tables):
    pred, mos = tables
    m = evaluate(pred, mos, bootstrap=50).set_index(["scorer", "group"])
    t = join_predictions(pred, mos).table
    koniq = t[(t["dataset"] == "koniq") & t["good_score"].notna()]
    row = m.loc[("good", "koniq")]
    assert row["n"] == len(koniq) == 29 and row["failed"] == 1
    assert row["srcc"] == pytest.approx(srcc(koniq["good_score"], koniq["mos"]))
    assert row["plcc"] == pytest.approx(plcc(koniq["good_score"], koniq["mos"]))
    assert row["srcc_lo"] <= row["srcc"] <= row["srcc_hi"]
    live = t[t["dataset"] == "live"]  # lower is better there: MOS negated
    expected = srcc(live["good_score"], -live["mos"])
    assert m.loc[("good", "live"), "srcc"] == pytest.approx(expected)
    assert m.loc[("good", "koniq"), "srcc"] > 0.9 > m.loc[("noise", "koniq"), "srcc"]
    assert set(m.index.get_level_values("group")) == {"all", "koniq", "live"}


def test_median_over_one_full_split_is_the_metric(tables):
    pred, mos = tables
    mos = mos.assign(lower_better=False)
    full = evaluate(pred, mos, by=None, bootstrap=0).set_index("scorer")
    med = median_over_splits(pred, mos, n_splits=1, test_fraction=1.0).set_index("scorer")
    assert med.loc["good", "srcc"] == pytest.approx(full.loc["good", "srcc"])
    ten = median_over_splits(pred, mos, n_splits=10, test_fraction=0.5, group_col="dataset")
    assert (ten["n_splits"] == 10).all()


def test_report_directory(tables, tmp_path):
    pred, mos = tables
    record = write_report(pred, mos, tmp_path / "report", bootstrap=20)
    out = tmp_path / "report"
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["join"] == {
        "matched": 55,
        "missing_predictions": 5,
        "without_mos": 1,
        "failed": {"good": 1},
    }
    assert stored["metrics"] == record["metrics"]
    for name in record["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert Image.open(out / name).size[0] > 100
    assert "scatter_good_koniq.png" in record["plots"] and "comparison.png" in record["plots"]
    text = (out / "report.md").read_text()
    assert "| good | koniq | 29 |" in text and "5 MOS rows had no prediction" in text


def test_eval_command(tables, tmp_path, capsys):
    pred, mos = tables
    pred.to_parquet(tmp_path / "pred.parquet")
    mos.to_csv(tmp_path / "mos.csv", index=False)
    code = main(
        [
            "eval",
            str(tmp_path / "pred.parquet"),
            "--mos",
            str(tmp_path / "mos.csv"),
            "--out",
            str(tmp_path / "r"),
            "--bootstrap",
            "0",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "SRCC" in printed and "5 MOS rows without prediction" in printed
    assert (tmp_path / "r" / "report.md").exists()


@pytest.fixture
def awkward(tmp_path):
    """A MOS table with a group whose MOS are all equal, an n=2 group and an n=6 group; the
    quality table carries a ``source`` column, the MOS table a ``split`` column."""
    rng = np.random.default_rng(7)
    sizes = {"big": 40, "flat": 12, "pair": 2, "tiny": 6}
    dataset = [name for name, n in sizes.items() for _ in range(n)]
    n = len(dataset)
    mos_values = rng.uniform(1, 5, n)
    mos_values[[d == "flat" for d in dataset]] = 3.0
    mos = pd.DataFrame(
        {
            "path": [f"/data/{i}.png" for i in range(n)],
            "mos": mos_values,
            "dataset": dataset,
            "split": np.where(np.arange(n) % 3 == 0, "test", "train"),
        }
    )
    pred = pd.DataFrame(
        {
            "uri": mos["path"],
            "good_score": mos_values + rng.normal(0, 0.4, n),
            "backwards_score": -mos_values + rng.normal(0, 0.4, n),
            "source": np.where(np.arange(n) % 2 == 0, "camera", "web"),
        }
    )
    pred.to_parquet(tmp_path / "pred.parquet")
    mos.to_csv(tmp_path / "mos.csv", index=False)
    return tmp_path, pred, mos


def _eval(tmp_path, out, *extra):
    return main(
        [
            "eval",
            str(tmp_path / "pred.parquet"),
            "--mos",
            str(tmp_path / "mos.csv"),
            "--out",
            str(tmp_path / out),
            "--bootstrap",
            "20",
            *extra,
        ]
    )


def test_eval_undefined_metrics_are_na_and_small_groups_flagged(awkward, capsys):
    tmp_path, _, _ = awkward
    assert _eval(tmp_path, "r") == 0
    lines = capsys.readouterr().out.splitlines()
    flat = next(line for line in lines if line.startswith("good") and " flat " in line)
    assert "SRCC n/a" in flat and "PLCC n/a" in flat and "MOS all equal" in flat
    pair = next(line for line in lines if line.startswith("good") and " pair " in line)
    assert "SRCC n/a" in pair and "n < 10" not in pair  # undefined says why instead
    tiny = next(line for line in lines if line.startswith("good") and " tiny " in line)
    assert "n < 10" in tiny and "n/a" not in tiny
    big = next(line for line in lines if line.startswith("good") and " big " in line)
    assert "⚠" not in big
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    rows = {(r["scorer"], r["group"]): r for r in record["metrics"]}
    assert rows[("good", "flat")]["srcc"] is None and rows[("good", "flat")]["plcc"] is None
    assert rows[("good", "pair")]["n"] == 2 and rows[("good", "pair")]["srcc"] is None
    assert rows[("good", "tiny")]["small"] and not rows[("good", "big")]["small"]
    assert {(g["scorer"], g["group"]) for g in record["small_groups"]} == {
        (s, g) for s in ("good", "backwards") for g in ("pair", "tiny")
    }
    assert rows[("backwards", "big")]["srcc"] < -0.8 and rows[("backwards", "big")]["plcc"] < -0.8
    text = (tmp_path / "r" / "report.md").read_text()
    assert "| good | flat | 12 | n/a | n/a | n/a | MOS all equal" in text
    assert "| good | tiny | 6 ⚠ |" in text and "good/tiny (n=6)" in text
    for name in record["plots"]:
        assert (tmp_path / "r" / name).read_bytes()[:4] == b"\x89PNG"


def test_eval_by_any_column_of_either_table_several_allowed(awkward, capsys):
    tmp_path, pred, mos = awkward
    assert _eval(tmp_path, "a", "--by", "split", "--by", "source") == 0
    assert _eval(tmp_path, "b", "--by", "split,source") == 0
    a = json.loads((tmp_path / "a" / "metrics.json").read_text())
    b = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert a["metrics"] == b["metrics"] and a["by"] == ["split", "source"]
    rows = {(r["scorer"], r["group"]): r for r in a["metrics"]}
    groups = {g for _, g in rows}
    assert groups == {"all", "split=test", "split=train", "source=camera", "source=web"}
    web = pred["source"] == "web"  # a column of the quality table only
    expected = srcc(pred.loc[web, "good_score"], mos.loc[web, "mos"])
    assert rows[("good", "source=web")]["srcc"] == pytest.approx(expected)
    assert rows[("good", "source=web")]["n"] == int(web.sum())
    test = mos["split"] == "test"  # a column of the MOS table only
    assert rows[("good", "split=test")]["n"] == int(test.sum())
    assert "scatter_good_source_web.png" in a["plots"]
    assert _eval(tmp_path, "c", "--by", "split") == 0  # one column: plain values as labels
    c = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert {r["group"] for r in c["metrics"]} == {"all", "test", "train"}


def test_eval_unknown_by_column_is_a_one_line_error(awkward, capsys):
    tmp_path, _, _ = awkward
    assert _eval(tmp_path, "r", "--by", "dataset,nope") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'nope'" in err and "split" in err
    assert not (tmp_path / "r" / "report.md").exists()


def test_eval_refuses_a_score_as_group_column_and_skips_nan_mos(awkward, capsys):
    tmp_path, pred, mos = awkward
    assert _eval(tmp_path, "r", "--by", "good_score") == 2
    assert "distinct values" in capsys.readouterr().err
    mos.loc[0, "mos"] = np.nan  # a MOS row without a rating: not a pair, not a crash
    mos.to_csv(tmp_path / "mos.csv", index=False)
    assert _eval(tmp_path, "r", "--by", "dataset") == 0
    rows = json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    big = next(r for r in rows if r["scorer"] == "good" and r["group"] == "big")
    assert big["n"] == 39 and big["failed"] == 0
    assert big["srcc"] == pytest.approx(srcc(pred["good_score"][1:40], mos["mos"][1:40]))
