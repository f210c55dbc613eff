"""Zero-shot Compare2Score on a tiny random transformers LLaVA built here."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vqpipe.scorers.anchor_sets import AnchorSet
from vqpipe.scorers.compare2score_lmm import ANSWER_PREFIX, QUESTION
from vqpipe.scoring import COMPARISON_LEVELS, create_scorer

WORDS = (
    "<unk> <s> </s> <pad> <image> USER ASSISTANT : ? , . Compared with the first image what "
    "is your quality rating for second The of to than " + " ".join(COMPARISON_LEVELS)
).split()


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
        ),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=28,
            patch_size=14,
            projection_dim=32,
        ),
        text_config=LlamaConfig(
            vocab_size=len(WORDS),
            hidden_size=64,
            intermediate_size=96,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=256,
        ),
        image_token_id=vocab["<image>"],
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(4.0)  # sharper random comparisons
    path = tmp_path_factory.mktemp("llava") / "tiny-llava"
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def images(n, seed=0):
    rng = np.random.default_rng(seed)
    return [
        Image.fromarray(rng.integers(0, 256, (24 + i, 32, 3), dtype=np.uint8)) for i in range(n)
    ]


@pytest.fixture(scope="module")
def scorer(llava_dir):
    return create_scorer("compare2score-lmm", checkpoint=str(llava_dir))


def test_zero_shot_scores_follow_the_anchor_matrix_inference(scorer):
    assert scorer.text.endswith(f"{QUESTION}\nASSISTANT: {ANSWER_PREFIX}")
    p = scorer.anchor_matrix
    np.testing.assert_allclose(p + p.T, 1.0, atol=1e-9)
    out = scorer.score_details(images(3))
    assert out["probs"].shape == (3, len(scorer.anchors))
    assert np.isfinite(out["thurstone"]).all() and (out["score_100"] <= 100).all()
    single = np.concatenate([scorer.score([im]) for im in images(3)])
    np.testing.assert_allclose(out["score"], single, atol=1e-4)  # left padding is harmless


def test_zero_shot_logits_are_the_answer_position_of_the_model(scorer, llava_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(llava_dir)
    model = LlavaForConditionalGeneration.from_pretrained(llava_dir).eval()
    anchor, test = scorer.comparison.anchor_inputs[2], images(1)[0]
    batch = processor(text=[scorer.text], images=[[anchor, test]], return_tensors="pt")
    with torch.no_grad():
        ref = model(**batch).logits[0, -1, scorer.word_ids_]
    ours = scorer.comparison_logits([test])[0, 2]
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)


def test_given_anchor_matrix_is_used(llava_dir, tmp_path):
    for i in range(2):
        Image.new("RGB", (20, 20), (60 * i, 0, 0)).save(tmp_path / f"a{i}.png")
    table = pd.DataFrame({"file": ["a0.png", "a1.png"], "mos": [1.0, 5.0], "std": [0.1, 0.1]})
    matrix = np.array([[0.5, 0.1], [0.9, 0.5]])
    anchors = AnchorSet(root=tmp_path, table=table, matrix=matrix)
    scorer = create_scorer("compare2score-lmm", checkpoint=str(llava_dir), anchors=anchors)
    np.testing.assert_array_equal(scorer.anchor_matrix, matrix)
    assert scorer.score_details(images(2))["probs"].shape == (2, 2)
