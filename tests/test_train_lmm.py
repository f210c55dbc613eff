"""Q-Align / Compare2Score SFT on the tiny mPLUG-Owl2: labels, loss goes down, round trip
into the scorers, a 2-worker Ray Train run, DeepSpeed config."""

import json

import numpy as np
import pytest

from vqpipe.data import make_image_dataset
from vqpipe.models.mplug_owl2 import IMAGE_TOKEN_INDEX, PromptTokenizer
from vqpipe.scorers.compare2score import Compare2ScoreScorer
from vqpipe.scorers.qalign import QAlignScorer
from vqpipe.train.lmm import deepspeed_config, encode_example, render, train_lmm
from vqpipe.train.trainer import fit


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return make_image_dataset(
        tmp_path_factory.mktemp("d") / "d",
        n_contents=2,
        size=(40, 30),
        seed=2,
        distortions=("gaussian_blur",),
        severities=(1, 5),
    )


def test_vicuna_rendering_and_answer_only_labels(qalign_checkpoint):
    conv = [
        {"from": "human", "value": "How would you rate the quality of this image?\n<|image|>"},
        {"from": "gpt", "value": "The quality of the image is good."},
    ]
    prompt, answer = render(conv, 1)
    assert prompt.endswith(
        "USER: <|image|>\nHow would you rate the quality of this image? ASSISTANT:"
    )
    assert prompt.startswith("A chat between a curious human") and answer.endswith("</s>")
    tok = PromptTokenizer.from_pretrained(qalign_checkpoint)
    ids, labels = encode_example(tok, conv, 1, eos_id=2)
    assert ids.count(IMAGE_TOKEN_INDEX) == 1 and ids[-1] == 2 and len(ids) == len(labels)
    kept = [t for t, lab in zip(ids, labels, strict=True) if lab != -100]
    assert kept == [*tok.encode("The quality of the image is good."), 2]
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(qalign_checkpoint / "tokenizer.model"))
    whole = sp.encode(prompt.split("<|image|>")[1] + " " + answer.removesuffix("</s>"))
    assert whole[-len(kept) + 1 :] == kept[:-1]  # same pieces as one-string tokenisation


def test_qalign_sft_lowers_the_loss_and_the_scorer_loads_it(qalign_checkpoint, table, tmp_path):
    config = {
        "checkpoint": str(qalign_checkpoint),
        "datasets": [{"table": table}],
        "epochs": 6,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup": 0.0,
        "device": "cpu",
        "output": str(tmp_path / "qalign-ft"),
    }
    history = train_lmm(config, "qalign")
    losses = history["epoch_loss"]
    assert losses[-1] < losses[0]
    out = tmp_path / "qalign-ft"
    assert json.loads((out / "training_args.json").read_text())["method"] == "qalign"
    scorer = QAlignScorer(out)
    from PIL import Image

    scores = scorer.score([Image.open(p) for p in table["path"][:3]])
    assert np.isfinite(scores).all()


def test_compare2score_sft_and_two_worker_ray_train(ray_local, qalign_checkpoint, table, tmp_path):
    config = {
        "checkpoint": str(qalign_checkpoint),
        "datasets": [{"table": table}],
        "n_pairs": 16,
        "epochs": 1,
        "batch_size": 4,
        "lr": 1e-4,
        "device": "cpu",
    }
    kwargs = {"num_workers": 2, "cpus_per_worker": 0.5, "storage_path": tmp_path / "runs"}
    result = fit("compare2score", config, name="c2s", **kwargs)
    assert result.error is None and result.metrics["steps"] >= 1
    scorer = Compare2ScoreScorer(result.checkpoint.path, cache_dir=str(tmp_path / "c"))
    assert np.isfinite(scorer.anchor_matrix).all()
    steps = result.metrics["steps"]  # resume: the second run continues from the saved step
    again = fit("compare2score", {**config, "epochs": 2}, name="c2s", **kwargs)
    assert again.error is None
    assert again.metrics["epoch"] == 1 and again.metrics["steps"] == 2 * steps


def test_deepspeed_config():
    cfg = deepspeed_config(stage=2, batch_per_gpu=8)
    assert cfg["zero_optimization"]["stage"] == 2 and cfg["bf16"]["enabled"]
    assert "stage3_prefetch_bucket_size" in deepspeed_config(3)["zero_optimization"]
    with pytest.raises(ValueError):
        deepspeed_config(4)
