"""Our native mPLUG-Owl2 / Q-Align against outputs of the official implementation (see
tests/data/qalign_official/README.md): same pixels, same token ids, same logits."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM, PromptTokenizer
from vqpipe.scorers.qalign import QAlignScorer, qalign_prompt
from vqpipe.scoring import LEVELS

DATA = Path(__file__).parent / "data" / "qalign_official"


@pytest.fixture(scope="module")
def ref():
    return np.load(DATA / "reference.npz")


@pytest.fixture(scope="module")
def scorer():
    return QAlignScorer(DATA)


def inputs():
    return [Image.open(DATA / "inputs" / f"img{i}.png") for i in range(6)]


def videos():
    return [
        [Image.open(DATA / "inputs" / f"video{v}" / f"frame{f}.png") for f in range(3)]
        for v in range(3)
    ]


def test_prompts_are_the_official_strings(ref):
    assert qalign_prompt("quality") == str(ref["prompt_quality"])
    assert qalign_prompt("aesthetics") == str(ref["prompt_aesthetics"])
    assert qalign_prompt("video") == str(ref["prompt_video"])


def test_preprocessing_is_bit_exact(ref, scorer):
    np.testing.assert_array_equal(scorer.processor(inputs()).numpy(), ref["pixel_values"])
    frames = np.stack([scorer.processor(v).numpy() for v in videos()])
    np.testing.assert_array_equal(frames, ref["video_pixel_values"])


@pytest.mark.parametrize("name", ["quality", "aesthetics", "video", "pair"])
def test_prompt_token_ids(ref, name):
    tok = PromptTokenizer.from_pretrained(DATA)
    assert tok.encode_prompt(str(ref[f"prompt_{name}"])) == ref[f"input_ids_{name}"].tolist()


def test_level_ids(ref, scorer):
    official = ref["level_ids"].tolist()  # excellent, good, fair, poor, bad
    assert scorer.level_ids.tolist() == official[::-1]  # ours: bad .. excellent
    assert [scorer.tokenizer.first_piece(w) for w in LEVELS[::-1]] == official


@torch.no_grad()
def test_full_logits_of_one_and_two_image_sequences(ref):
    model = MPLUGOwl2ForCausalLM.from_pretrained(DATA)
    pixels = torch.from_numpy(ref["pixel_values"])
    one = model(torch.from_numpy(ref["input_ids_quality"])[None], images=pixels[:1]).logits
    np.testing.assert_allclose(one.numpy(), ref["logits_full_quality_img0"], atol=1e-4)
    pair = model(torch.from_numpy(ref["input_ids_pair"])[None], images=pixels[:2]).logits
    assert pair.shape[1] == int(ref["pair_seq_len"])
    np.testing.assert_allclose(pair.numpy(), ref["logits_pair_full"], atol=1e-4)
    batch = model(torch.from_numpy(ref["input_ids_quality"])[None].repeat(6, 1), images=pixels)
    np.testing.assert_allclose(batch.logits[:, -1].numpy(), ref["logits_quality_batch"], atol=1e-4)


def test_fused_scorer_scores(ref, scorer):
    details = scorer.score_details(inputs())
    np.testing.assert_allclose(details["score"], ref["scores_quality"], atol=1e-4)
    official = ref["logits_quality_batch"][:, ref["level_ids"][::-1]]
    probs = np.exp(official - official.max(1, keepdims=True))
    np.testing.assert_allclose(details["probs"], probs / probs.sum(1, keepdims=True), atol=1e-5)
    aesthetics = QAlignScorer(DATA, task="aesthetics", model=scorer.model)
    np.testing.assert_allclose(aesthetics.score(inputs()), ref["scores_aesthetics"], atol=1e-4)
    video = QAlignScorer(DATA, task="video", model=scorer.model)
    np.testing.assert_allclose(video.score(videos()), ref["scores_video"], atol=1e-4)
    # The older GitHub scorer's 0..1 scale is (score - 1) / 4.
    np.testing.assert_allclose(
        (details["score"] - 1) / 4, ref["scores_quality_scorer01"], atol=1e-4
    )
