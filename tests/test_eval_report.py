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
