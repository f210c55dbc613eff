"""Reward data on the demo corpus (scored once for the module, through the CLI): how often
Gamma-demo pairs agree with the MOS order, calibration + ensemble with the brightness scorer,
and `vqpipe score --calibration`."""

import json

import numpy as np
import pandas as pd
import pytest

from vqpipe.cli import main
from vqpipe.data.synthetic import make_image_dataset
from vqpipe.rewards.calibrate import apply_map

pytestmark = pytest.mark.slow  # scoring the corpus with Gamma on CPU


@pytest.fixture(scope="module")
def scored(ray_local, tmp_path_factory):
    """2 contents × 26 images, scored by Gamma (bundled demo checkpoint) and brightness from a
    manifest that carries ``content_id`` (the group of the pairs)."""
    root = tmp_path_factory.mktemp("rewards-demo")
    corpus = make_image_dataset(root / "corpus", n_contents=2, seed=2026)
    manifest = root / "manifest.parquet"
    corpus[["path", "content_id"]].rename(columns={"path": "uri"}).to_parquet(manifest)
    mos = root / "mos.csv"
    corpus[["path", "mos"]].rename(columns={"path": "uri"}).to_csv(mos, index=False)
    quality = root / "quality"
    argv = ["score", str(manifest), "--out", str(quality), "--rows-per-file", "64"]
    argv += ["--scorer", "gamma:device=cpu,batch_size=32", "--scorer", "brightness"]
    assert main(argv) == 0
    return root, quality, mos, corpus


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


def test_gamma_pairs_agree_with_the_mos_order(scored, tmp_path, capsys):
    _, quality, _, corpus = scored
    out = tmp_path / "pairs"
    _run(capsys, "pairs", quality, "--group", "content_id", "--score", "gamma_score",
         "--strategy", "all", "--margin", 0.05, "--out", out)  # fmt: skip
    pairs = pd.read_parquet(out)
    mos = corpus.set_index("path")["mos"]
    agree = (pairs["uri_chosen"].map(mos) > pairs["uri_rejected"].map(mos)).mean()
    print(f"\n{len(pairs)} Gamma-demo pairs (margin 0.05): {agree:.3f} agree with the MOS order")
    assert len(pairs) > 100 and set(pairs["group"]) == {0, 1}
    assert (pairs["margin"] > 0.05).all()


def test_ensemble_with_brightness_is_not_worse_than_gamma(scored, tmp_path, capsys):
    _, quality, mos, _ = scored
    calib = tmp_path / "calib.json"
    print(_run(capsys, "calibrate", quality, "--mos", mos, "--out", calib))
    fused = tmp_path / "fused"
    print(_run(capsys, "fuse", quality, "--calibration", calib, "--mos", mos, "--out", fused))
    _run(capsys, "eval", fused, "--mos", mos, "--out", tmp_path / "report", "--bootstrap", 0)
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())["metrics"]
    srcc = {m["scorer"]: m["srcc"] for m in metrics if m["group"] == "all"}
    print(f"SRCC gamma {srcc['gamma']:.4f}  brightness {srcc['brightness']:.4f}  "
          f"ensemble {srcc['ensemble']:.4f}")  # fmt: skip
    weights = json.loads((fused / "_fuse.json").read_text())["weights"]
    assert weights["gamma_score"] > weights["brightness_score"]
    assert srcc["ensemble"] >= srcc["gamma"] - 0.01


def test_score_with_calibration_adds_calibrated_columns(scored, tmp_path, capsys):
    root, quality, mos, _ = scored
    calib = tmp_path / "calib.json"
    _run(capsys, "calibrate", quality, "--mos", mos, "--out", calib, "--method", "isotonic")
    out = tmp_path / "q2"
    argv = ["score", root / "corpus" / "images", "--out", out, "--scorer", "brightness"]
    _run(capsys, *argv, "--calibration", calib)
    table = pd.read_parquet(out)
    assert "brightness_calibrated" in table and "gamma_calibrated" not in table
    spec = json.loads(calib.read_text())["columns"]["brightness_score"]["map"]
    expected = apply_map(spec, table["brightness_score"].to_numpy(np.float64))
    assert np.allclose(table["brightness_calibrated"], expected, atol=1e-5)
    job = json.loads((out / "_job.json").read_text())
    assert "calibration" in job["signature"]
