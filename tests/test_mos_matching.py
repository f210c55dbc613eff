"""MOS rows matched to quality-table rows by one rule (``eval``, ``calibrate``, ``fuse``): by
URI, by path under ``--mos-root``, by unique basename; zero matches and unreadable inputs are
one line; an ensemble evaluated on the rows ``fuse --mos`` fitted it on is flagged."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from tests.test_rewards_calibrate import FIT, synthetic  # noqa: F401 — the calibration table
from vqpipe.cli import main
from vqpipe.eval.matching import canonical, match_mos


@pytest.fixture
def corpus(tmp_path):
    """A quality table of local absolute URIs under ``data/`` (reached through a symlink
    ``link/``): ``koniq/<i>.jpg`` and two ``dup.jpg`` in different folders."""
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    (data / "koniq").mkdir(parents=True)
    (data / "x").mkdir()
    os.symlink(data, tmp_path / "link")
    files = [data / "koniq" / f"{i:03d}.jpg" for i in range(30)]
    files += [data / "koniq" / "dup.jpg", data / "x" / "dup.jpg"]
    for f in files:
        f.write_bytes(b"")
    mos = rng.uniform(1, 5, len(files))
    pred = pd.DataFrame(
        {"uri": [str(f) for f in files], "good_score": mos + rng.normal(0, 0.2, len(files))}
    )
    pred.to_parquet(tmp_path / "pred.parquet")
    return tmp_path, files, mos


def _eval(tmp_path, mos_frame, *extra, out="r"):
    mos_frame.to_csv(tmp_path / "mos.csv", index=False)
    argv = ["eval", tmp_path / "pred.parquet", "--mos", tmp_path / "mos.csv"]
    return main([str(a) for a in [*argv, "--out", tmp_path / out, "--bootstrap", "0", *extra]])


def _one_line_error(capsys, rc):
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.startswith("vqpipe: error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_relative_paths_match_under_mos_root_through_a_symlink(corpus, capsys):
    tmp_path, files, mos = corpus
    keys = [str(f.relative_to(tmp_path / "data")) for f in files]  # koniq/000.jpg, x/dup.jpg
    frame = pd.DataFrame({"path": keys, "mos": mos})
    assert _eval(tmp_path, frame, "--mos-root", tmp_path / "link") == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["join"]["matched"] == 32 and record["matched_by"]["path"] == 32
    assert "matched 32 by path" in out
    joined_n = next(m["n"] for m in record["metrics"] if m["group"] == "all")
    assert joined_n == 32


def test_unique_basenames_match_ambiguous_ones_do_not(corpus, capsys):
    tmp_path, files, mos = corpus
    keys = [f.name for f in files]  # 000.jpg … and dup.jpg twice
    frame = pd.DataFrame({"uri": keys, "mos": mos})
    frame.loc[0, "uri"] = str(files[0])  # one full URI: matched by uri
    frame = frame.drop(index=31)  # one dup.jpg key left: its name is still two table rows
    assert _eval(tmp_path, frame) == 0
    out = capsys.readouterr().out
    record = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert record["matched_by"] == {"uri": 1, "path": 0, "basename": 29}
    assert record["ambiguous_basenames"] == 1 and record["missing_predictions"] == ["dup.jpg"]
    assert "matched 1 by uri, 29 by basename; 1 MOS keys with a file name held by" in out


def test_no_match_is_one_line_with_an_example_of_each_side(corpus, capsys):
    tmp_path, files, mos = corpus
    frame = pd.DataFrame({"path": [f"koniq/{f.name}" for f in files], "mos": mos})
    frame.loc[30:, "path"] = ["other/a.png", "other/b.png"]
    frame["path"] = "images/" + frame["path"].str.replace(".jpg", ".JPG")
    err = _one_line_error(capsys, _eval(tmp_path, frame))
    assert str(files[0]) in err and "images/koniq/000.JPG" in err and "--mos-root" in err
    assert not (tmp_path / "r").exists()


def test_missing_mos_and_out_on_a_file_are_one_line(corpus, capsys):
    tmp_path, files, mos = corpus
    argv = ["eval", str(tmp_path / "pred.parquet"), "--mos", str(tmp_path / "missing.csv")]
    err = _one_line_error(capsys, main([*argv, "--out", str(tmp_path / "r")]))
    assert "missing.csv" in err and "no such file" in err
    (tmp_path / "afile").write_text("x")
    frame = pd.DataFrame({"uri": [str(f) for f in files], "mos": mos})
    err = _one_line_error(capsys, _eval(tmp_path, frame, out="afile"))
    assert "afile is a file" in err
    err = _one_line_error(capsys, _eval(tmp_path, frame, out="afile/r"))
    assert "is a file, not a folder" in err


def test_match_rules_by_hand(tmp_path):
    (tmp_path / "d").mkdir()
    os.symlink(tmp_path / "d", tmp_path / "l")
    assert canonical("file:///a/b.jpg") == "/a/b.jpg"
    assert canonical("b.jpg", "s3://lake/set/") == "s3://lake/set/b.jpg"
    assert canonical("x/b.jpg", str(tmp_path / "l")) == str(tmp_path.resolve() / "d/x/b.jpg")
    uris = ["s3://lake/set/a.jpg", "s3://lake/set/b.jpg", f"file://{tmp_path}/d/c.jpg", "/z/e.jpg"]
    keys = ["e.jpg", "b.jpg", str(tmp_path / "l" / "c.jpg"), "s3://lake/set/a.jpg", "zz.jpg"]
    m = match_mos(uris, keys, "s3://lake/set")
    assert dict(zip(m.mos_index.tolist(), m.table_index.tolist(), strict=True)) == {
        0: 3,
        1: 1,
        2: 2,
        3: 0,
    }
    assert m.by == {"uri": 1, "path": 2, "basename": 1} and m.ambiguous == 0
    assert "matched 4 of 5 MOS rows" in m.note()


def test_calibrate_matches_relative_keys_under_mos_root(synthetic, tmp_path, capsys):  # noqa: F811
    root, mos = synthetic
    frame = pd.DataFrame({"path": [f"img/{k:04d}.jpg" for k in range(FIT)], "mos": mos[:FIT]})
    frame.to_csv(tmp_path / "rel.csv", index=False)
    argv = ["calibrate", root / "quality", "--mos", tmp_path / "rel.csv"]
    rc = main([str(a) for a in [*argv, "--out", tmp_path / "c.json", "--mos-root", "s3://lake"]])
    assert rc == 0, capsys.readouterr().err
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["columns"]["a_score"]["n"] == FIT - 1  # row 11 has no score
    assert main([str(a) for a in [*argv, "--out", tmp_path / "b.json"]]) == 0  # by basename
    assert json.loads((tmp_path / "b.json").read_text())["columns"] == record["columns"]
    frame["path"] = frame["path"].str.replace(".jpg", ".png")
    frame.to_csv(tmp_path / "rel.csv", index=False)
    err = _one_line_error(capsys, main([str(a) for a in [*argv, "--out", tmp_path / "d.json"]]))
    assert "s3://lake/img/0000.jpg" in err and "img/0000.png" in err
    assert not (tmp_path / "d.json").exists()


def test_eval_of_a_fused_table_on_its_fitted_rows_warns(
    ray_local,
    synthetic,  # noqa: F811
    tmp_path,
    capsys,
):
    root, _ = synthetic
    calib, fused = tmp_path / "calib.json", tmp_path / "fused"
    run = [
        ["calibrate", root / "quality", "--mos", root / "mos.csv", "--out", calib],
        ["fuse", root / "quality", "--calibration", calib, "--mos", root / "mos.csv", "--out"],
    ]
    run[1].append(fused)
    for argv in run:
        assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    capsys.readouterr()
    record = json.loads((fused / "_fuse.json").read_text())
    assert len(record["fitted_uris"]) == record["n"] == FIT - 2  # rows 7 and 11 incomplete
    argv = ["eval", fused, "--mos", root / "mos.csv", "--out", tmp_path / "r", "--bootstrap", "0"]
    assert main([str(a) for a in argv]) == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("vqpipe eval: warning:")]
    assert len(warning) == 1 and f"fitted on {FIT - 2} of these {FIT} rows" in warning[0]
    assert "cross-validated SRCC" in warning[0]
    stored = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert stored["in_sample"]["rows"] == FIT - 2
    assert "in-sample" in (tmp_path / "r" / "report.md").read_text()
    held_out = pd.read_csv(root / "mos_all.csv").iloc[FIT:]  # the rows fuse never saw
    held_out.to_csv(tmp_path / "held.csv", index=False)
    argv[3] = tmp_path / "held.csv"
    assert main([str(a) for a in argv]) == 0
    assert "warning" not in capsys.readouterr().err
