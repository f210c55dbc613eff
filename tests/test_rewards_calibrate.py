"""`vqpipe calibrate` and `vqpipe fuse` as a user types them, on a synthetic table where two
scorers are different monotone functions of MOS plus noise; one-line errors."""

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats
from scipy.optimize import isotonic_regression

from vqpipe.cli import main
from vqpipe.rewards.calibrate import apply_map, fit_map
from vqpipe.rewards.fuse import ensemble

N, FIT = 400, 300  # the first FIT rows have MOS for fitting; the rest are held out


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A quality table with ``a_score = sigmoid(MOS)`` and ``b_score = log(MOS)`` (independent
    noise), a NULL ``b_score`` and an error row; the MOS of the first FIT rows as CSV."""
    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(3)
    mos = rng.uniform(1, 5, N)
    a = 1 / (1 + np.exp(-1.2 * (mos - 3))) + rng.normal(0, 0.035, N)
    b = 2.0 * np.log(mos) + rng.normal(0, 0.12, N)
    b[7] = np.nan  # scored by a only
    error = [None] * N
    error[11] = "decode: truncated"
    a[11] = b[11] = np.nan
    uris = [f"s3://lake/img/{k:04d}.jpg" for k in range(N)]
    (root / "quality").mkdir()
    table = pa.table(
        {
            "uri": uris,
            "a_score": pa.array(a, mask=np.isnan(a), type=pa.float32()),
            "b_score": pa.array(b, mask=np.isnan(b), type=pa.float32()),
            "error": pa.array(error, type=pa.string()),
        }
    )
    pq.write_table(table.slice(0, 200), root / "quality" / "part-0.parquet")
    pq.write_table(table.slice(200), root / "quality" / "part-1.parquet")
    pd.DataFrame({"uri": uris[:FIT], "mos": mos[:FIT]}).to_csv(root / "mos.csv", index=False)
    pd.DataFrame({"uri": uris, "mos": mos}).to_csv(root / "mos_all.csv", index=False)
    return root, mos


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def test_isotonic_map_equals_scipy_and_interpolates():
    x = np.array([0.1, 0.2, 0.2, 0.4, 0.5, 0.9])
    y = np.array([1.0, 3.0, 2.0, 2.0, 4.0, 5.0])
    spec = fit_map(x, y, "isotonic")
    # tied x average first (2.5 at 0.2), then PAV: [1, 2.5, 2 → 2.25 (pooled 2.5, 2)...]
    ux = np.array([0.1, 0.2, 0.4, 0.5, 0.9])
    ref = isotonic_regression([1.0, 2.5, 2.0, 4.0, 5.0], weights=[1, 2, 1, 1, 1]).x
    assert np.allclose(apply_map(spec, ux), ref)
    assert np.allclose(ref, [1.0, 7 / 3, 7 / 3, 4.0, 5.0])  # by hand: (2.5·2 + 2) / 3
    assert apply_map(spec, [0.0, 2.0, np.nan])[:2].tolist() == [1.0, 5.0]  # flat beyond
    assert np.isnan(apply_map(spec, [np.nan])[0])
    down = fit_map(x, -y, "isotonic")
    assert down["direction"] == -1 and np.allclose(apply_map(down, ux), -ref)


def test_ensemble_renormalises_over_missing_scores():
    c = np.array([[3.0, 5.0], [np.nan, 4.0], [np.nan, np.nan], [2.0, np.nan]])
    score, spread = ensemble(c, np.array([0.75, 0.25]))
    assert score[:2].tolist() == [3.5, 4.0] and np.isnan(score[2]) and score[3] == 2.0
    assert spread[0] == pytest.approx(1.0) and np.isnan(spread[1:]).all()
    only_zero = ensemble(np.array([[np.nan, 4.0]]), np.array([1.0, 0.0]))[0]
    assert only_zero.tolist() == [4.0]  # only zero-weight scorers left: they count equally


@pytest.mark.parametrize("method", ["logistic", "isotonic"])
def test_calibrated_scores_recover_the_mos_scale_and_the_ensemble_wins(
    ray_local, synthetic, tmp_path, capsys, method
):
    root, mos = synthetic
    calib = tmp_path / "calib.json"
    out = _run(capsys, "calibrate", root / "quality", "--mos", root / "mos.csv", "--method",
               method, "--out", calib)  # fmt: skip
    assert "a_score" in out and "CV SRCC" in out
    record = json.loads(calib.read_text())
    assert set(record["columns"]) == {"a_score", "b_score"}
    assert record["columns"]["a_score"]["output"] == "a_calibrated"
    assert (tmp_path / "calib.png").stat().st_size > 1000
    for entry in record["columns"].values():
        assert entry["cv"]["plcc"] > 0.9 and entry["n"] >= FIT - 2

    applied = tmp_path / "applied"
    assert "added a_calibrated, b_calibrated to 400 rows" in _run(
        capsys, "calibrate", "--apply", calib, root / "quality", "--out", applied
    )
    table = pd.read_parquet(applied).set_index("uri").sort_index()
    held = table.iloc[FIT:]  # rows whose MOS the fit never saw
    truth = mos[FIT:]
    for column in ("a_calibrated", "b_calibrated"):
        ok = held[column].notna().to_numpy()
        values = held[column].to_numpy(np.float64)[ok]
        assert stats.pearsonr(values, truth[ok]).statistic >= 0.95  # raw Pearson: MOS scale
        assert abs(values.mean() - truth[ok].mean()) < 0.15
    assert table["b_calibrated"].isna().sum() == 2  # the NULL and the error row stay NULL

    fused = tmp_path / "fused"
    out = _run(capsys, "fuse", root / "quality", "--calibration", calib, "--mos",
               root / "mos.csv", "--out", fused)  # fmt: skip
    assert "weights: a_score" in out
    fuse_record = json.loads((fused / "_fuse.json").read_text())
    assert all(w > 0.1 for w in fuse_record["weights"].values())
    assert sum(fuse_record["weights"].values()) == pytest.approx(1.0)
    frame = pd.read_parquet(fused).set_index("uri").sort_index()
    assert frame.loc["s3://lake/img/0007.jpg", "ensemble_score"] == pytest.approx(
        frame.loc["s3://lake/img/0007.jpg", "a_calibrated"]
    )  # b is NULL: a alone
    assert np.isnan(frame.loc["s3://lake/img/0011.jpg", "ensemble_score"])
    assert frame["ensemble_spread"].notna().sum() == N - 2

    report = tmp_path / "report"
    out = _run(capsys, "eval", fused, "--mos", root / "mos_all.csv", "--out", report,
               "--bootstrap", 0)  # fmt: skip
    metrics = json.loads((report / "metrics.json").read_text())["metrics"]
    srcc = {m["scorer"]: m["srcc"] for m in metrics if m["group"] == "all"}
    assert set(srcc) == {"a", "b", "ensemble"} and "ensemble" in out
    print(f"{method}: SRCC a {srcc['a']:.4f}  b {srcc['b']:.4f}  ensemble {srcc['ensemble']:.4f}")
    assert srcc["ensemble"] > max(srcc["a"], srcc["b"])


def test_fuse_without_mos_has_equal_weights(ray_local, synthetic, tmp_path, capsys):
    root, _ = synthetic
    calib = tmp_path / "calib.json"
    _run(capsys, "calibrate", root / "quality", "--mos", root / "mos.csv", "--out", calib)
    out = _run(capsys, "fuse", root / "quality", "--calibration", calib, "--out", tmp_path / "f")
    assert "a_score 0.500, b_score 0.500 (equal: no --mos)" in out
    frame = pd.read_parquet(tmp_path / "f")
    both = frame[["a_calibrated", "b_calibrated"]].mean(axis=1, skipna=False)
    ok = both.notna()
    assert np.allclose(frame.loc[ok, "ensemble_score"], both[ok], atol=1e-5)


def _calibration(tmp_path, synthetic_root, capsys):
    calib = tmp_path / "good.json"
    _run(capsys, "calibrate", synthetic_root / "quality", "--mos", synthetic_root / "mos.csv",
         "--out", calib, "--column", "a")  # fmt: skip
    return calib


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["calibrate", "{q}", "--mos", "{mos}", "--out", "{t}/c.json", "--column", "c"],
         "--column 'c': no score column 'c_score'"),
        (["calibrate", "{q}", "--mos", "{t}/nomos.csv", "--out", "{t}/c.json"],
         "needs 'uri' (or 'path') and 'mos' columns"),
        (["calibrate", "{q}", "--mos", "{mos}", "--out", "{t}/c.json", "--method", "spline"],
         "invalid choice: 'spline'"),
        (["calibrate", "{q}", "--out", "{t}/c.json"], "give --mos MOS"),
        (["calibrate", "--apply", "{t}/bad.json", "{q}", "--out", "{t}/o"], "is not valid JSON"),
        (["calibrate", "--apply", "{t}/unknown.json", "{q}", "--out", "{t}/o"],
         "unknown method 'spline'"),
        (["calibrate", "--apply", "{t}/short.json", "{q}", "--out", "{t}/o"],
         "params: expected 5 numbers"),
        (["calibrate", "--apply", "{t}/nope.json", "{q}", "--out", "{t}/o"], "no such file"),
        (["calibrate", "--apply", "{t}/other.json", "{q}", "--out", "{t}/o"],
         "none of which"),
        (["fuse", "{q}", "--calibration", "{t}/good.json", "--out", "{t}/o"],
         "an ensemble needs two"),
        (["fuse", "{q}", "--calibration", "{t}/bad.json", "--out", "{t}/o"], "not valid JSON"),
    ],
)  # fmt: skip
def test_mistakes_are_one_line(synthetic, tmp_path, capsys, argv, expected):
    root, _ = synthetic
    good = _calibration(tmp_path, root, capsys)
    record = json.loads(good.read_text())
    (tmp_path / "bad.json").write_text("{not json")
    unknown = json.loads(json.dumps(record))
    unknown["columns"]["a_score"]["map"]["method"] = "spline"
    (tmp_path / "unknown.json").write_text(json.dumps(unknown))
    short = json.loads(json.dumps(record))
    short["columns"]["a_score"]["map"]["params"] = [1.0]
    (tmp_path / "short.json").write_text(json.dumps(short))
    other = json.loads(json.dumps(record))
    other["columns"] = {"z_score": record["columns"]["a_score"]}
    (tmp_path / "other.json").write_text(json.dumps(other))
    (tmp_path / "nomos.csv").write_text("uri,score\na,1\n")
    names = {"q": root / "quality", "mos": root / "mos.csv", "t": tmp_path}
    rc = main([a.format(**names) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("vqpipe: error:") and expected in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "c.json").exists()


def test_calibrate_apply_and_fuse_on_s3(ray_local, synthetic, s3_bucket, s3_server, capsys):
    """The table, the MOS, the calibration file and every output on the loopback S3 server;
    the same numbers as the local run of the same commands."""
    root, _ = synthetic
    bucket, fs = s3_bucket
    for part in (root / "quality").glob("*.parquet"):
        fs.put(str(part), f"{bucket}/quality/{part.name}")
    fs.put(str(root / "mos.csv"), f"{bucket}/mos.csv")
    s3, options = f"s3://{bucket}", ["--storage-options", json.dumps(s3_server)]
    table, mos, calib = f"{s3}/quality/", f"{s3}/mos.csv", f"{s3}/calib/calib.json"
    out = _run(capsys, "calibrate", table, "--mos", mos, "--out", calib, *options)
    assert "a_score" in out and fs.exists(f"{bucket}/calib/calib.json")
    record = json.loads(fs.cat(f"{bucket}/calib/calib.json"))
    assert set(record["columns"]) == {"a_score", "b_score"}
    _run(capsys, "calibrate", "--apply", calib, table, "--out", f"{s3}/applied/", *options)
    _run(capsys, "fuse", table, "--calibration", calib, "--mos", mos, "--out", f"{s3}/f/", *options)
    applied = pd.read_parquet(f"{s3}/applied/", storage_options=s3_server).sort_values("uri")
    fused = pd.read_parquet(f"{s3}/f/", storage_options=s3_server).sort_values("uri")
    assert len(applied) == len(fused) == N and fused["uri"].is_unique
    expected = apply_map(record["columns"]["a_score"]["map"], applied["a_score"].to_numpy())
    ok = applied["a_score"].notna().to_numpy()
    assert np.allclose(applied["a_calibrated"].to_numpy()[ok], expected[ok], atol=1e-5)
    assert fused["ensemble_score"].notna().sum() == N - 1  # the error row has no score at all
    assert fs.exists(f"{bucket}/f/_fuse.json")
