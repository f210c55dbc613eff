"""Compare2Score: anchor sets, P_a, prefix caching == naive, batching, MAP scores, official."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import norm, spearmanr

from vqpipe.scorers.anchor_sets import (
    OFFICIAL_ANCHOR_MATRIX,
    AnchorSet,
    check_anchor_matrix,
    load_anchor_set,
    write_anchor_set,
)
from vqpipe.scorers.compare2score import (
    COMPARE_PROMPT,
    Compare2ScoreScorer,
    add_test_rows,
    map_scores,
)
from vqpipe.scoring import create_scorer, thurstone_map, thurstone_objective

OFFICIAL = Path(__file__).parent / "data" / "qalign_official"


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (30 + 3 * i, 40, 3), dtype=np.uint8)) for i in range(n)
    ]


@pytest.fixture(scope="module")
def scorer(qalign_checkpoint, tmp_path_factory):
    return create_scorer(
        "compare2score",
        checkpoint=str(qalign_checkpoint),
        temperature=1.0,  # random tiny weights: sharper comparisons than the official /100
        cache_dir=str(tmp_path_factory.mktemp("c2s-cache")),
    )


def test_write_and_load_an_anchor_set(tmp_path):
    rows = []
    for i, (mos, std) in enumerate([(1.0, 0.5), (1.5, 0.2), (3.0, 0.9), (3.2, 0.3), (5.0, 0.1)]):
        path = tmp_path / f"img{i}.png"
        Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(path)
        rows.append({"path": str(path), "mos": mos, "std": std})
    anchors = write_anchor_set(pd.DataFrame(rows), tmp_path / "set", alpha=2, beta=1)
    # intervals [1, 3) and [3, 5]: lowest σ in each → img1 (σ .2) and img4 (σ .1)
    assert anchors.table["source"].tolist() == ["img1.png", "img4.png"]
    assert len(load_anchor_set(tmp_path / "set")) == 2 and anchors.matrix is None
    assert [im.size for im in anchors.images()] == [(8, 8), (8, 8)]
    with pytest.raises(FileNotFoundError, match=r"anchors\.csv"):
        load_anchor_set(tmp_path)


def test_bundled_anchor_set_spans_the_scale():
    anchors = load_anchor_set()
    assert len(anchors) == 5
    assert anchors.table["mos"].is_monotonic_increasing
    assert anchors.fingerprint.startswith("sha256:")


def test_anchor_matrix_checks():
    check_anchor_matrix(OFFICIAL_ANCHOR_MATRIX, 5)
    with pytest.raises(ValueError, match="1 - P"):
        check_anchor_matrix(np.array([[0.5, 0.9], [0.9, 0.5]]), 2)
    with pytest.raises(ValueError, match="diagonal"):
        check_anchor_matrix(np.array([[0.4, 0.5], [0.5, 0.5]]), 2)


def test_prompt_places_anchor_first_and_test_second(scorer):
    assert COMPARE_PROMPT.startswith("USER: <|image|> <|image|> Compared with the first image")
    assert scorer.prompt_ids.count(-200) == 2 and scorer.prompt_ids[0] == 1
    assert len(set(scorer.word_ids_.tolist())) == 5


def test_computed_anchor_matrix_is_complementary(scorer):
    p = scorer.anchor_matrix
    np.testing.assert_allclose(np.diag(p), 0.5)
    np.testing.assert_allclose(p + p.T, 1.0, atol=1e-12)
    raw = scorer.comparison.probs(scorer.anchor_pixels)
    np.testing.assert_allclose(p, (raw + 1 - raw.T) / 2, atol=1e-6)
    assert np.abs(raw - 0.5).max() > 1e-3  # the model does prefer some anchors


def test_cached_anchor_matrix_equals_recomputed(qalign_checkpoint, scorer):
    files = list(Path(scorer._cache_dir, "compare2score").glob("*.json"))
    assert len(files) == 1  # written by the first scorer
    again = Compare2ScoreScorer(
        qalign_checkpoint, temperature=1.0, cache_dir=scorer._cache_dir, model=None
    )
    np.testing.assert_allclose(again.anchor_matrix, scorer.anchor_matrix, atol=0)
    np.testing.assert_allclose(again.comparison.compute_matrix(), scorer.anchor_matrix, atol=1e-6)


def test_prefix_cached_equals_naive_and_batch_equals_one_by_one(qalign_checkpoint, scorer):
    pixels = np.stack([scorer.processor.to_uint8(im) for im in images(4)])
    cached = scorer.comparison_logits(pixels)
    naive = Compare2ScoreScorer(
        qalign_checkpoint,
        model=scorer.model,
        temperature=1.0,
        prefix_cache=False,
        anchor_matrix=scorer.anchor_matrix,
    )
    torch.testing.assert_close(naive.comparison_logits(pixels), cached, rtol=1e-4, atol=1e-4)
    # the official way: one full two-image forward per pair, anchor first
    ids = torch.tensor([scorer.prompt_ids])
    anchors = scorer.processor.normalize(scorer.anchor_pixels)
    test = scorer.processor.normalize(pixels)
    with torch.no_grad():
        for b in (0, 3):
            for j in (0, 4):
                out = scorer.model(ids, images=torch.stack([anchors[j], test[b]])).logits
                ref = out[0, -1, scorer.word_ids_]
                torch.testing.assert_close(cached[b, j], ref, rtol=1e-4, atol=1e-4)
    items = images(4)
    batched = scorer.score_details(items)
    single = [scorer.score_details([im]) for im in items]
    for key in ("score", "thurstone", "score_100"):
        np.testing.assert_allclose(batched[key], [s[key][0] for s in single], atol=1e-4)
    assert batched["probs"].shape == (4, 5)


def test_scores_are_the_map_of_the_extended_matrix(scorer):
    out = scorer.score_details(images(3, seed=5))
    c = add_test_rows(scorer.anchor_matrix, out["probs"].astype(np.float64))
    for b in range(3):
        # the reported value is the last coordinate of the optimum of the stated objective
        full = np.asarray(thurstone_map(c[b]))
        assert full[-1] == pytest.approx(out["thurstone"][b], abs=1e-5)
        span = full.max() - full.min()
        assert out["score_100"][b] == pytest.approx(100 * (full[-1] - full.min()) / span, abs=1e-3)


def test_brighter_is_better_stub_orders_scores_by_brightness(scorer, monkeypatch):
    """Force the comparison head: prefer the brighter image → MAP scores follow brightness."""
    anchor_light = scorer.anchor_pixels.reshape(len(scorer.anchor_pixels), -1).mean(1) / 255

    def brighter(pixels):
        light = np.asarray(pixels).reshape(len(pixels), -1).mean(1) / 255
        diff = torch.tensor(light[:, None] - anchor_light[None, :], dtype=torch.float32)
        steps = torch.arange(-2, 3, dtype=torch.float32)  # inferior .. superior
        return 8 * diff[..., None] * steps

    monkeypatch.setattr(scorer, "comparison_logits", brighter)
    grey = [Image.new("RGB", (32, 32), (v, v, v)) for v in (200, 20, 120, 250, 60)]
    scores = scorer.score(grey)
    assert np.argsort(scores).tolist() == [1, 4, 2, 0, 3]


def official_adam(c, steps=100, seed=0):
    """The official optimiser (Adam lr 0.1, 100 steps, U[0,1) init, Φ, 1e-6 floor)."""
    torch.manual_seed(seed)
    c = torch.tensor(c, dtype=torch.float32)
    s = torch.rand(c.shape[0], requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        phi = 0.5 * (1 + torch.erf((s[:, None] - s) / np.sqrt(2.0)))
        loss = -(torch.sum(c * torch.log(torch.clamp(phi, min=1e-6))) - torch.sum(s**2) / 2)
        loss.backward()
        opt.step()
    return s.detach().numpy().astype(np.float64)


def test_exact_map_agrees_with_the_official_adam_ranking_and_is_optimal():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 1, size=(40, 5))
    ours = map_scores(OFFICIAL_ANCHOR_MATRIX, p)["thurstone"]
    official = []
    for row in p:
        c = add_test_rows(OFFICIAL_ANCHOR_MATRIX, row[None])[0]
        q = official_adam(c)
        official.append(q[-1] - q.mean())
        ours_q = np.asarray(thurstone_map(c))
        # the true optimum of the stated (negative, minimised) objective: never worse than
        # Adam's point after 100 steps
        assert thurstone_objective(ours_q, c) <= thurstone_objective(q - q.mean(), c) + 1e-9
    assert spearmanr(ours, official).statistic > 0.99
    # Hand check of Φ: one anchor pair with P = 0.5 everywhere gives all-zero scores.
    flat = map_scores(np.full((2, 2), 0.5), np.full((1, 2), 0.5))
    assert flat["thurstone"][0] == pytest.approx(0.0, abs=1e-9)
    assert norm.cdf(0) == 0.5


def test_pair_logits_equal_the_official_two_image_forward():
    ref = np.load(OFFICIAL / "reference.npz")
    table = pd.DataFrame({"file": ["inputs/img0.png"], "mos": [3.0], "std": [0.5]})
    anchors = AnchorSet(root=OFFICIAL, table=table, matrix=np.array([[0.5]]))
    c2s = Compare2ScoreScorer(OFFICIAL, anchors=anchors)
    assert c2s.prompt_ids == ref["input_ids_pair"].tolist()
    assert c2s.word_ids_.tolist() == ref["compare_level_ids"].tolist()
    test = c2s.processor.to_uint8(Image.open(OFFICIAL / "inputs" / "img1.png"))[None]
    ours = c2s.comparison_logits(test)[0, 0].numpy()
    official = ref["logits_pair_full"][0, -1, ref["compare_level_ids"]]
    np.testing.assert_allclose(ours, official, atol=1e-4)
