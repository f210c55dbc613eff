"""The embedded default job (README command (a)) and the CLI around it."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from vqpipe.cli import main
from vqpipe.demo import oracle_comparison_matrix, oracle_level_logits
from vqpipe.scoring import level_score, thurstone_map


def test_demo_job_writes_quality_table_and_metrics(ray_local, tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--contents", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    table = pd.read_parquet(tmp_path / "quality_table")
    corpus = pd.read_parquet(tmp_path / "corpus" / "mos.parquet")
    held_out = corpus[corpus["split"] != "train"]
    # every held-out image is scored exactly once
    assert sorted(table["uri"]) == sorted(held_out["path"])
    assert summary["scored"] == len(held_out) and summary["images"] == len(corpus)
    assert len(summary["anchors"]) == 5
    for name in ("thurstone_score", "level_score"):
        assert np.isfinite(table[name]).all()
        assert summary["metrics"][name]["srcc"] > 0.95
    assert (tmp_path / "demo_summary.json").exists()


def test_oracle_matrix_is_a_valid_comparison_matrix():
    anchors_mos, anchors_std = np.array([1.5, 2.5, 3.5]), np.array([0.4, 0.6, 0.5])
    P = oracle_comparison_matrix(
        np.array([3.0, 1.0]), np.array([0.5, 0.3]), anchors_mos, anchors_std
    )
    assert P.shape == (2, 4, 4)
    np.testing.assert_allclose(P + P.transpose(0, 2, 1), 1.0)
    assert P[0, 3, 1] == pytest.approx(stats.norm.cdf(0.5 / np.hypot(0.5, 0.6)))
    q = thurstone_map(P)
    assert q[0, 3] > q[1, 3]  # the better test image scores higher


def test_oracle_level_logits_peak_at_the_mos_level():
    scores = level_score(oracle_level_logits(np.array([1.0, 3.0, 5.0]), np.array([0.3] * 3)))
    assert scores[0] < 1.2 and abs(scores[1] - 3.0) < 1e-9 and scores[2] > 4.8


def test_version_and_scorers_commands(capsys):
    assert main(["version"]) == 0
    assert capsys.readouterr().out.strip()
    assert main(["scorers"]) == 0
