"""Direct pairwise comparison (`vqpipe compare`): the pair probabilities equal the
Compare2Score scorer's own comparisons, both orders, batched == one by one, errors as rows,
resume, local files and the loopback S3 server."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from tests.test_compare2score_lmm import llava_dir  # noqa: F401 — the tiny LLaVA fixture
from vqpipe.cli import main
from vqpipe.scorers.anchor_sets import load_anchor_set
from vqpipe.scorers.compare2score import Compare2ScoreScorer
from vqpipe.scorers.pairwise import compare_images, compare_pairs, pair_outputs
from vqpipe.scoring import create_scorer
from vqpipe.storage import QualityTable, read_quality_table

OUTPUTS = ("p_b_better_ab", "p_b_better_ba", "p_b_better", "order_gap")


def test_pair_outputs_by_hand():
    """Logits that put all mass on one word: P = that word's weight; T scales the logits."""
    big = torch.tensor([[0.0, 0.0, 0.0, 0.0, 60.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    low = torch.tensor([[60.0, 0.0, 0.0, 0.0, 0.0], [0.0, 60.0, 0.0, 0.0, 0.0]])
    out = pair_outputs(big, low, temperature=1.0)
    # pair 0: b superior with a first; a inferior with b first → b better both ways
    # pair 1: uniform (P = 0.5) with a first; a "worse" (0.25) with b first → 1 − 0.25
    np.testing.assert_allclose(out["p_b_better_ab"], [1.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(out["p_b_better_ba"], [1.0, 0.75], atol=1e-12)
    np.testing.assert_allclose(out["p_b_better"], [1.0, 0.625], atol=1e-12)
    np.testing.assert_allclose(out["order_gap"], [0.0, -0.25], atol=1e-12)
    np.testing.assert_allclose(out["level_probs_ab"][1], np.full(5, 0.2), atol=1e-12)
    flat = pair_outputs(big, low, temperature=1e6)  # very hot: every word equally likely
    np.testing.assert_allclose(flat["p_b_better"], 0.5, atol=1e-4)


@pytest.fixture(scope="module")
def c2s(qalign_checkpoint, tmp_path_factory):
    return create_scorer(
        "compare2score",
        checkpoint=str(qalign_checkpoint),
        temperature=1.0,  # random tiny weights: sharper comparisons than the official /100
        cache_dir=str(tmp_path_factory.mktemp("c2s-cache")),
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The bundled anchors' files and three test images (PNG) written here."""
    root = tmp_path_factory.mktemp("pairs")
    anchors = load_anchor_set()
    anchor_files = [str(anchors.root / f) for f in anchors.table["file"]]
    rng = np.random.default_rng(7)
    tests = []
    for i in range(3):
        path = root / f"test{i}.png"
        Image.fromarray(rng.integers(0, 256, (40 + 5 * i, 56, 3), dtype=np.uint8)).save(path)
        tests.append(str(path))
    (root / "broken.png").write_bytes(b"not a png at all")
    return {"root": root, "anchors": anchor_files, "tests": tests}


def _pixels(scorer, paths):
    return np.stack([scorer.processor.to_uint8(Image.open(p)) for p in paths])


def test_anchor_first_pairs_equal_the_scorers_anchor_comparisons(c2s, corpus):
    anchors, tests = corpus["anchors"], corpus["tests"]
    m = len(anchors)
    ref = c2s.comparison.probs(_pixels(c2s, tests))  # [test, anchor]: P(test ≻ anchor_j)
    a = [anchors[j] for t in range(len(tests)) for j in range(m)]
    b = [tests[t] for t in range(len(tests)) for j in range(m)]
    out = compare_images(c2s, a, b)
    np.testing.assert_allclose(out["p_b_better_ab"], ref.reshape(-1), atol=1e-5)
    # every ordered pair of anchors: the mean of both orders is the anchor matrix
    every = compare_images(
        c2s, [anchors[j] for i in range(m) for j in range(m)], [x for x in anchors for _ in anchors]
    )
    np.testing.assert_allclose(every["p_b_better"].reshape(m, m), c2s.anchor_matrix, atol=1e-5)
    assert np.abs(every["order_gap"]).max() > 1e-3  # random weights: a real position bias


def test_batched_equals_one_by_one_and_swapping_the_inputs(c2s, qalign_checkpoint, corpus):
    paths = corpus["anchors"][:2] + corpus["tests"]
    images = list(_pixels(c2s, paths))
    # best-of-n: image 0 is the reference, first in three pairs; one pair repeats
    a, b = [0, 0, 0, 3, 1, 0], [2, 3, 4, 1, 4, 2]
    batched = compare_pairs(c2s, images, a, b)
    for n in range(len(a)):
        one = compare_pairs(c2s, [images[a[n]], images[b[n]]], [0], [1])
        for key in (*OUTPUTS, "level_probs_ab", "level_probs_ba"):
            np.testing.assert_allclose(batched[key][n], one[key][0], atol=1e-5, err_msg=key)
    naive = Compare2ScoreScorer(
        qalign_checkpoint,
        model=c2s.model,
        temperature=1.0,
        prefix_cache=False,  # full two-image sequences: the prefix KV cache changes nothing
        anchor_matrix=c2s.anchor_matrix,
    )
    full = compare_pairs(naive, images, a, b)
    for key in OUTPUTS:
        np.testing.assert_allclose(full[key], batched[key], atol=1e-4, err_msg=key)
    swapped = compare_pairs(c2s, images, b, a)
    np.testing.assert_allclose(swapped["p_b_better_ab"], 1 - batched["p_b_better_ba"], atol=1e-6)
    np.testing.assert_allclose(swapped["p_b_better"], 1 - batched["p_b_better"], atol=1e-6)
    np.testing.assert_allclose(swapped["order_gap"], batched["order_gap"], atol=1e-6)
    np.testing.assert_allclose(swapped["level_probs_ab"], batched["level_probs_ba"], atol=1e-6)


def test_zero_shot_lmm_pairs_equal_its_anchor_comparisons(llava_dir, corpus):  # noqa: F811
    lmm = create_scorer("compare2score-lmm", checkpoint=str(llava_dir))
    anchors, tests = corpus["anchors"], corpus["tests"][:2]
    m = len(anchors)
    ref = lmm.comparison.probs([np.asarray(Image.open(t).convert("RGB")) for t in tests])
    out = compare_images(
        lmm, [anchors[j] for _ in tests for j in range(m)], [t for t in tests for _ in range(m)]
    )
    np.testing.assert_allclose(out["p_b_better_ab"], ref.reshape(-1), atol=1e-5)
    assert out["level_probs_ba"].shape == (len(tests) * m, 5)


# ------------------------------------------------------------------------ the job, via the CLI
def _manifest(corpus, path):
    """Anchor-first pairs (one anchor repeated: best-of-n) and four rows that cannot be
    compared: a missing file, an undecodable one, a null side, a video."""
    anchors, tests, root = corpus["anchors"], corpus["tests"], corpus["root"]
    rows = [
        {"uri_a": anchors[j], "uri_b": t, "group": f"g{k}"}
        for k, t in enumerate(tests)
        for j in (0, 2, 4)
    ]
    rows += [
        {"uri_a": anchors[1], "uri_b": str(root / "missing.png"), "group": "bad"},
        {"uri_a": str(root / "broken.png"), "uri_b": tests[0], "group": "bad"},
        {"uri_a": anchors[1], "uri_b": None, "group": "bad"},
        {"uri_a": str(root / "clip.mp4"), "uri_b": tests[0], "group": "bad"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return rows


def _scorer_arg(checkpoint, batch_size):
    return f"compare2score:checkpoint={checkpoint},temperature=1.0,batch_size={batch_size}"


def _by_key(table):
    return table.assign(k=table["key"].astype(int)).sort_values("k").reset_index(drop=True)


@pytest.mark.slow
def test_compare_job_through_the_cli_errors_resume_and_s3(
    ray_local, c2s, qalign_checkpoint, corpus, tmp_path, s3_server, s3_bucket, capsys
):
    manifest = tmp_path / "pairs.parquet"
    rows = _manifest(corpus, manifest)
    out = tmp_path / "prefs"
    args = ["compare", str(manifest), "--out", str(out), "--rows-per-file", "4"]
    assert main([*args, "--scorer", _scorer_arg(qalign_checkpoint, 4)]) == 0
    table = _by_key(read_quality_table(str(out)))
    assert len(table) == len(rows)  # one row per pair
    assert table["uri"].tolist() == [f"{manifest}#{i}" for i in range(len(rows))]
    assert table["group"].tolist() == [r["group"] for r in rows]  # carried
    ok = table[table["error"].isna()]
    assert len(ok) == 9
    pixels = _pixels(c2s, corpus["tests"])
    ref = c2s.comparison.probs(pixels)  # [test, anchor]
    expected = [ref[k, j] for k in range(3) for j in (0, 2, 4)]
    np.testing.assert_allclose(ok["p_b_better_ab"], expected, atol=1e-5)
    mean, gap = (
        (ok["p_b_better_ab"] + ok["p_b_better_ba"]) / 2,
        ok["p_b_better_ab"] - ok["p_b_better_ba"],
    )
    np.testing.assert_allclose(ok["p_b_better"], mean, atol=1e-6)  # float32 columns
    np.testing.assert_allclose(ok["order_gap"], gap, atol=1e-6)
    assert all(len(p) == 5 and abs(sum(p) - 1) < 1e-5 for p in ok["level_probs_ba"])
    errors = table["error"].tolist()[9:]
    assert errors[0].startswith("read: uri_b: not found")
    assert errors[1].startswith("decode: uri_a: cannot decode image")
    assert errors[2] == "read: manifest row 11 has no uri_b (None)"
    assert errors[3].startswith("decode: uri_a: a video")
    bad = table.iloc[9:]
    assert bad[list(OUTPUTS)].isna().all().all() and bad["level_probs_ab"].isna().all()
    job = json.loads((out / "_job.json").read_text())
    assert job["task"] == "compare-pairs" and job["summary"]["errors"] == 4

    # resume after completion: nothing new is written, Ray has nothing to do
    parts = {p: os.path.getmtime(p) for p in QualityTable(str(out)).parts()}
    capsys.readouterr()
    assert main([*args, "--scorer", _scorer_arg(qalign_checkpoint, 4)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compared_pairs"] == 0 and summary["shards_already_done"] == 1
    assert {p: os.path.getmtime(p) for p in QualityTable(str(out)).parts()} == parts

    # the same pairs on the loopback S3 server, one pair per call: equal to the batched run
    bucket, fs = s3_bucket

    def upload(path):
        if path is None:
            return None
        if os.path.exists(path):
            fs.put(path, f"{bucket}/img/{os.path.basename(path)}")
        return f"s3://{bucket}/img/{os.path.basename(path)}"

    uploaded = [{**r, "uri_a": upload(r["uri_a"]), "uri_b": upload(r["uri_b"])} for r in rows]
    with fs.open(f"{bucket}/pairs/pairs.parquet", "wb") as fh:
        pq.write_table(pa.Table.from_pylist(uploaded), fh)
    s3_out = f"s3://{bucket}/prefs"
    s3_args = ["compare", f"s3://{bucket}/pairs/", "--out", s3_out]
    options = ["--storage-options", json.dumps(s3_server)]
    assert main([*s3_args, *options, "--scorer", _scorer_arg(qalign_checkpoint, 1)]) == 0
    remote = _by_key(read_quality_table(s3_out, s3_server))
    assert len(remote) == len(rows)
    assert remote["uri"].tolist() == [
        f"s3://{bucket}/pairs/pairs.parquet#{i}" for i in range(len(rows))
    ]
    for key in OUTPUTS:
        np.testing.assert_allclose(remote[key][:9], table[key][:9], atol=1e-5, err_msg=key)
    assert remote["error"][9].startswith("read: uri_b: not found")
    assert remote["error"][10].startswith("decode: uri_a: cannot decode image")


@pytest.mark.parametrize(
    "scorer, manifest_rows, message",
    [
        ("compare2scor", None, "unknown scorer 'compare2scor'; did you mean 'compare2score'"),
        ("gamma", None, "scorer gamma cannot compare two given images"),
        ("CKPT,column=prefs", None, "column=prefs does not apply to vqpipe compare"),
        ("CKPT", [{"uri_a": "x.png", "uri": "y.png"}], "has no 'uri_b' column"),
    ],
)
def test_mistakes_are_one_line_before_ray(
    qalign_checkpoint, tmp_path, capsys, scorer, manifest_rows, message
):
    manifest = tmp_path / "pairs.csv"
    pd.DataFrame(manifest_rows or [{"uri_a": "x.png", "uri_b": "y.png"}]).to_csv(
        manifest, index=False
    )
    scorer = scorer.replace("CKPT", f"compare2score:checkpoint={qalign_checkpoint}")
    out = tmp_path / "out"
    assert main(["compare", str(manifest), "--out", str(out), "--scorer", scorer]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vqpipe: error: ") and message in err and "\n" not in err
    assert not out.exists()
