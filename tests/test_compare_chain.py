"""The reward chain as a new user types it: ``score → pairs → compare → eval``; ``compare``
reads ``vqpipe pairs``' output as it is (or the columns ``--a-column`` / ``--b-column``
name), and a manifest without pair columns is one line before any checkpoint probe."""

import numpy as np
import pandas as pd
import pytest

from tests.test_compare_pairs import corpus  # noqa: F401 — anchors + three test images
from tests.test_pipeline import checkpoint  # noqa: F401 — the tiny Gamma checkpoint
from vqpipe.cli import main
from vqpipe.storage import read_quality_table


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return captured.out


@pytest.mark.slow
def test_score_pairs_compare_eval(
    ray_local,
    corpus,  # noqa: F811
    checkpoint,  # noqa: F811
    qalign_checkpoint,
    tmp_path,
    capsys,
):
    images = [*corpus["tests"], *corpus["anchors"][:3]]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"uri": images, "prompt_id": ["p0"] * 3 + ["p1"] * 3}).to_csv(
        manifest, index=False
    )
    quality, pairs, prefs = tmp_path / "quality", tmp_path / "pairs", tmp_path / "prefs"
    _run(capsys, "score", manifest, "--out", quality, "--scorer", f"gamma:checkpoint={checkpoint}")
    _run(capsys, "pairs", quality, "--group", "prompt_id", "--score", "gamma_score", "--out", pairs)
    made = pd.read_parquet(pairs)
    assert len(made) == 2
    c2s = f"compare2score:checkpoint={qalign_checkpoint},temperature=1.0,batch_size=4"
    _run(capsys, "compare", pairs, "--out", prefs, "--scorer", c2s)
    compared = read_quality_table(str(prefs)).sort_values("group").reset_index(drop=True)
    made = made.sort_values("group").reset_index(drop=True)
    assert compared["uri_a"].tolist() == made["uri_rejected"].tolist()  # a = rejected
    assert compared["uri_b"].tolist() == made["uri_chosen"].tolist()  # b = chosen
    assert compared["uri_chosen"].tolist() == made["uri_chosen"].tolist()  # carried
    assert compared["error"].isna().all() and np.isfinite(compared["p_b_better"]).all()

    swapped = tmp_path / "swapped"
    _run(capsys, "compare", pairs, "--out", swapped, "--scorer", c2s,
         "--a-column", "uri_chosen", "--b-column", "uri_rejected")  # fmt: skip
    other = read_quality_table(str(swapped)).sort_values("group").reset_index(drop=True)
    assert other["uri_a"].tolist() == made["uri_chosen"].tolist()
    np.testing.assert_allclose(  # the same two orders, asked the other way round
        other["p_b_better_ab"], 1 - compared["p_b_better_ba"], atol=1e-5
    )

    rng = np.random.default_rng(0)
    mos = pd.DataFrame({"path": [p.rsplit("/", 1)[1] for p in images], "mos": rng.uniform(1, 5, 6)})
    mos.to_csv(tmp_path / "mos.csv", index=False)
    out = _run(capsys, "eval", quality, "--mos", tmp_path / "mos.csv", "--out", tmp_path / "r")
    assert "matched 6," in out and "6 by basename" in out


def test_manifest_without_pair_columns_fails_before_the_checkpoint_probe(
    qalign_checkpoint, tmp_path, capsys, monkeypatch
):
    import vqpipe.io.checkpoints
    import vqpipe.pipeline.validate

    def no_probe(*args, **kwargs):
        raise AssertionError("the checkpoint was probed before the manifest's columns")

    monkeypatch.setattr(vqpipe.pipeline.validate, "check_checkpoint", no_probe)
    monkeypatch.setattr(vqpipe.io.checkpoints, "probe_checkpoint", no_probe)
    manifest = tmp_path / "pairs.csv"
    pd.DataFrame({"left": ["x.png"], "right": ["y.png"]}).to_csv(manifest, index=False)
    argv = ["compare", manifest, "--out", tmp_path / "o", "--scorer", "compare2score"]
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqpipe: error: ") and len(err.strip().splitlines()) == 1
    assert "no 'uri_a' and no 'uri_b' column" in err and "--a-column" in err
    assert "left, right" in err
    assert main([str(a) for a in [*argv, "--a-column", "left", "--b-column", "rite"]]) == 2
    err = capsys.readouterr().err
    assert "no 'rite' column" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
