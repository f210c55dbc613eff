"""The embedded default job (README command (a)), its scoring stage and the CLI around it."""

import json

import numpy as np
import pandas as pd
import pytest

from vqpipe.cli import main
from vqpipe.demo import ImageScoringStage
from vqpipe.scorers.gamma import demo_checkpoint

needs_demo_checkpoint = pytest.mark.skipif(
    not demo_checkpoint().exists(), reason="bundled demo checkpoint not built"
)


@needs_demo_checkpoint
def test_demo_job_scores_unseen_contents_with_the_bundled_checkpoint(ray_local, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--contents", "6", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = pd.read_parquet(tmp_path / "quality_table")
    corpus = pd.read_parquet(tmp_path / "corpus" / "mos.parquet")
    assert sorted(table["path"]) == sorted(corpus["path"])  # every image exactly once
    assert table["error"].isna().all() and np.isfinite(table["gamma_score"]).all()
    assert np.stack(table["gamma_probs"]).shape == (len(corpus), 5)
    # The demo checkpoint ranks contents it never saw (trained on seed-0 contents).
    assert summary["metrics"]["srcc"] >= 0.85
    assert (tmp_path / "demo_summary.json").exists()


@needs_demo_checkpoint
def test_scoring_stage_turns_bad_files_into_error_rows(tmp_path):
    from PIL import Image

    good = tmp_path / "good.png"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(good)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"\x89PNG not really")
    stage = ImageScoringStage("gamma", {"device": "cpu"})
    batch = {"path": np.array([str(good), str(empty), str(tmp_path / "missing.png"), str(junk)])}
    out = stage(batch)
    assert len(out["gamma_score"]) == 4
    assert np.isfinite(out["gamma_score"][0]) and out["error"][0] is None
    for i in (1, 2, 3):
        assert np.isnan(out["gamma_score"][i]) and out["error"][i]
    assert "FileNotFoundError" in out["error"][2]


def test_version_and_scorers_commands(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["scorers"]) == 0
    assert "gamma" in capsys.readouterr().out
