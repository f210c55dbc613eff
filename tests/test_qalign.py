"""Q-Align scorer: official prompts, fused batched inference == the plain model forward."""

import numpy as np
import pytest
import torch
from PIL import Image

from vqpipe.models.mplug_owl2 import IMAGE_TOKEN_INDEX, MPLUGOwl2Config
from vqpipe.scorers.qalign import QAlignScorer, qalign_prompt
from vqpipe.scoring import LEVELS, create_scorer, level_score


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    sizes = [(40, 30), (30, 40), (28, 28), (97, 61), (13, 50), (64, 64), (31, 29)]
    return [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for w, h in (sizes[i % len(sizes)] for i in range(n))
    ]


@pytest.fixture(scope="module")
def scorer(qalign_checkpoint):
    return create_scorer("qalign", checkpoint=str(qalign_checkpoint))


@pytest.fixture(scope="module")
def video_scorer(qalign_checkpoint, scorer):
    return QAlignScorer(qalign_checkpoint, task="video", model=scorer.model)


def naive_level_logits(scorer, frames_per_item):
    """The official way: the full prompt with −200, images spliced, full forward, last row."""
    ids = torch.tensor([scorer.prompt_ids])
    out = []
    with torch.no_grad():
        for frames in frames_per_item:
            pixels = scorer.processor(frames)
            logits = scorer.model(ids, images=[pixels]).logits[0, -1]
            out.append(logits[scorer.level_ids])
    return torch.stack(out)


def test_official_prompts():
    assert qalign_prompt("quality") == (
        "USER: How would you rate the quality of this image?\n<|image|>\n"
        "ASSISTANT: The quality of the image is"
    )
    assert qalign_prompt("aesthetics") == (
        "USER: How would you rate the aesthetics of this image?\n<|image|>\n"
        "ASSISTANT: The aesthetics of the image is"
    )
    assert qalign_prompt("video") == (
        "USER: How would you rate the quality of this video?\n<|image|>\n"
        "ASSISTANT: The quality of the video is"
    )
    with pytest.raises(ValueError, match="task"):
        qalign_prompt("sharpness")


def test_level_ids_are_first_pieces_in_level_order(scorer):
    assert scorer.level_ids.tolist() == [scorer.tokenizer.first_piece(w) for w in LEVELS]
    assert len(set(scorer.level_ids.tolist())) == 5


@pytest.mark.parametrize("task", ["quality", "aesthetics"])
def test_fused_scores_equal_the_plain_forward(qalign_checkpoint, scorer, task):
    s = (
        scorer
        if task == "quality"
        else QAlignScorer(qalign_checkpoint, task=task, model=scorer.model)
    )
    items = images(6)
    details = s.score_details(items)
    ref = naive_level_logits(s, [[im] for im in items])
    np.testing.assert_allclose(details["score"], level_score(ref).numpy(), atol=1e-4)
    np.testing.assert_allclose(details["probs"], torch.softmax(ref, -1).numpy(), atol=1e-5)
    assert details["probs"].shape == (6, 5)
    np.testing.assert_allclose(details["probs"].sum(1), 1, atol=1e-5)
    assert ((details["score"] >= 1) & (details["score"] <= 5)).all()


def test_prompts_change_the_scores(qalign_checkpoint, scorer):
    other = QAlignScorer(qalign_checkpoint, task="aesthetics", model=scorer.model)
    items = images(3)
    assert not np.allclose(scorer.score(items), other.score(items))


def test_batched_equals_one_by_one_and_prefix_cache_is_exact(qalign_checkpoint, scorer):
    items = images(7, seed=1)
    batched = scorer.score(items)
    single = np.concatenate([scorer.score([im]) for im in items])
    np.testing.assert_allclose(batched, single, atol=1e-4)
    plain = QAlignScorer(qalign_checkpoint, model=scorer.model, prefix_cache=False)
    np.testing.assert_allclose(plain.score(items), batched, atol=1e-4)


def test_videos_of_different_lengths_batch_like_one_by_one(video_scorer):
    frames = images(6, seed=2)
    videos = [frames[:3], frames[3:4], frames[4:6]]
    batched = video_scorer.score_details(videos)
    single = np.concatenate([video_scorer.score([v]) for v in videos])
    np.testing.assert_allclose(batched["score"], single, atol=1e-4)
    ref = naive_level_logits(video_scorer, videos)
    np.testing.assert_allclose(batched["score"], level_score(ref).numpy(), atol=1e-4)


def test_video_frames_are_one_sequence_not_an_average(video_scorer, scorer):
    frames = images(3, seed=3)
    as_video = video_scorer.score([frames])[0]
    per_frame = video_scorer.score([[f] for f in frames])
    assert not np.isclose(as_video, per_frame.mean())
    # An image task over a frame list averages the frames (Q-Align's IQA-on-video rule).
    np.testing.assert_allclose(scorer.score([frames])[0], scorer.score(frames).mean(), atol=1e-5)


def test_long_videos_are_thinned_evenly_to_max_frames(qalign_checkpoint, video_scorer):
    capped = QAlignScorer(qalign_checkpoint, task="video", max_frames=3, model=video_scorer.model)
    frames = images(7, seed=4)
    kept = [frames[i] for i in (0, 3, 6)]
    np.testing.assert_allclose(capped.score([frames]), video_scorer.score([kept]), atol=1e-5)


def test_default_frame_cap_fits_the_context(qalign_checkpoint, video_scorer):
    cfg = video_scorer.model.config
    n = video_scorer.max_frames
    text = len(video_scorer.prompt_ids) - 1
    assert text + n * cfg.tokens_per_image <= cfg.max_position_embeddings
    assert text + (n + 1) * cfg.tokens_per_image > cfg.max_position_embeddings
    official = MPLUGOwl2Config()  # 2048 positions, 65 tokens per frame, 27 prompt tokens
    assert (official.max_position_embeddings - 27) // official.tokens_per_image == 31


def test_preprocessor_needs_no_model_and_matches_the_scorer(qalign_checkpoint, scorer):
    prep = QAlignScorer.make_preprocessor(checkpoint=str(qalign_checkpoint))
    im = images(1)[0]
    np.testing.assert_array_equal(prep(im)["pixels"], scorer.preprocess(im)["pixels"])
    inputs = [prep(im)["pixels"][None] for im in images(2)]  # as the decode stage hands them on
    assert [len(x) for x in inputs] == [1, 1]
    np.testing.assert_allclose(
        scorer.predict_items(inputs)["score"], scorer.score(images(2)), atol=1e-5
    )


def test_metadata_names_scale_task_and_fingerprint(scorer):
    meta = scorer.metadata()
    assert meta["task"] == "quality" and meta["score_range"] == [1.0, 5.0]
    assert meta["checkpoint_fingerprint"].startswith("sha256:")
    assert meta["prob_labels"] == list(LEVELS)
    assert scorer.prompt_ids.count(IMAGE_TOKEN_INDEX) == 1


def test_unreachable_default_checkpoint_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="local dir or an s3"):
        create_scorer("qalign", checkpoint="q-future/not-here")
