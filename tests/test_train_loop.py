"""Training machinery: grid-aligned crops, DCT patch init, early stopping, weighted epoch
plans, Ray Data streaming of training images from S3 (with a broken image), and the Q-Align
loop on two Ray Train workers with per-epoch validation and resume; Q-Align on videos."""

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vqpipe.data import make_image_dataset, make_video_dataset
from vqpipe.scorers.gamma import GammaPreprocessor
from vqpipe.scorers.qalign import QAlignScorer
from vqpipe.train.data import AlignedCrop, decode_training_batch, mixed_table
from vqpipe.train.gamma import dct_patch_init_
from vqpipe.train.lmm import epoch_order, train_lmm
from vqpipe.train.loop import EarlyStopping
from vqpipe.train.trainer import fit

LEARN_CONTENTS, LEARN_EPOCHS, LEARN_FLOOR = 300, 7, 0.8
TWO_WORKERS = {"num_workers": 2, "cpus_per_worker": 0.5}
TINY_GAMMA = {
    "clip_model": "vqpipe-test-ViT",
    "n_moae_layers": 1,
    "n_experts": 2,
    "adapter_hidden": 16,
}


def _jpeg(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=5)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def test_random_crops_stay_on_the_jpeg_block_grid():
    image = _jpeg(256, 192, 0)
    crop = AlignedCrop(192, step=8)
    full = np.asarray(image).transpose(2, 0, 1)
    generator = torch.Generator().manual_seed(0)
    offsets = set()
    for _ in range(60):
        out = crop(image, generator)
        assert out.shape == (3, 192, 192) and out.dtype == np.uint8
        # find where the crop came from (unflipped or flipped) and check its phase
        for candidate in (out, out[:, :, ::-1]):
            hits = [x for x in range(65) if np.array_equal(full[:, :, x : x + 192], candidate)]
            if hits:
                offsets.add(hits[0])
    assert offsets and all(x % 8 == 0 for x in offsets) and len(offsets) > 3
    centre = AlignedCrop(192, augment=False)(image)
    np.testing.assert_array_equal(centre, GammaPreprocessor(192)(image)["pixels"])
    anywhere = AlignedCrop(192, step=1)
    assert any(
        not any(
            np.array_equal(full[:, :, x : x + 192], c)
            for x in range(0, 65, 8)
            for c in (o, o[:, :, ::-1])
        )
        for o in (anywhere(image, generator) for _ in range(20))
    )


def test_dct_patch_init_is_an_orthogonal_frequency_basis():
    conv = torch.nn.Conv2d(3, 64, 8, 8, bias=False)
    dct_patch_init_(conv)
    w = conv.weight.detach().reshape(64, -1).double()
    luma = w[1:48]
    gram = luma @ luma.T
    assert torch.allclose(gram, torch.diag(torch.diagonal(gram)), atol=1e-6)
    flat = torch.ones(1, 3, 8, 8)
    response = conv(flat).flatten()
    assert response[0].abs() > 0 and response[1:48].abs().max() < 1e-5  # AC blind to a flat patch
    checker = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    highest = conv(checker.expand(1, 3, 8, 8)).flatten()
    assert highest[0].abs() < 1e-5  # DC blind to a zero-mean pattern


def test_early_stopping_by_hand():
    stop = EarlyStopping(patience=2)
    seq = [0.5, 0.6, 0.55, 0.58, 0.7, 0.6, 0.6]
    assert [stop.update({"val_srcc": v}) for v in seq] == [
        False,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    never = EarlyStopping(None)
    assert not any(never.update({"val_srcc": v}) for v in [0.5, 0.4, 0.3])
    assert not EarlyStopping(1).update({"loss": 1.0})  # no validation metric: keep going


def test_epoch_plans_weights_workers_and_seeds():
    examples = [{"weight": 1 / 10}] * 10 + [{"weight": 1 / 90}] * 90
    order = epoch_order(examples, 3, True, 0, 0, 1)  # datasets with a weight
    share_small = np.mean(order < 10)
    assert 0.35 < share_small < 0.65  # equal mass for a 10-row and a 90-row dataset
    plain = (3, False)  # seed 3, no dataset weights
    assert sorted(epoch_order(examples, *plain, 0, 0, 1)) == list(range(100))
    parts = [epoch_order(examples[:7], *plain, 1, r, 2) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 3 and not set(parts[0]) & set(parts[1])
    np.testing.assert_array_equal(
        epoch_order(examples, *plain, 2, 0, 1), epoch_order(examples, *plain, 2, 0, 1)
    )
    assert not np.array_equal(
        epoch_order(examples, *plain, 1, 0, 1), epoch_order(examples, *plain, 2, 0, 1)
    )


def test_training_media_stage_keeps_broken_rows_with_an_error(tmp_path):
    good = tmp_path / "ok.png"
    Image.new("RGB", (40, 30), (10, 20, 30)).save(good)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    batch = {
        "path": np.array([str(good), str(bad), str(tmp_path / "gone.png")], dtype=object),
        "target": np.array([0.5, 0.2, 0.1]),
    }
    out = decode_training_batch(batch, image_size=24)
    assert out["pixels"].shape == (3, 3, 24, 24)
    assert out["error"][0] == "" and "decode" in out["error"][1].lower()
    assert out["error"][2]
    assert (out["pixels"][1] == 0).all()


@pytest.mark.slow
def test_gamma_streams_training_images_from_s3_with_ray_data(
    ray_local, s3_server, s3_bucket, tmp_path
):
    bucket, fs = s3_bucket
    table = make_image_dataset(
        tmp_path / "data", n_contents=3, size=(48, 40), seed=4, distortions=("gaussian_blur",)
    )
    rows = []
    for _, row in table.iterrows():
        uri = f"s3://{bucket}/images/{row['path'].rsplit('/', 1)[-1]}"
        fs.put(row["path"], uri)
        rows.append({**row.to_dict(), "path": uri})
    broken = {**rows[0], "path": f"s3://{bucket}/images/broken.png", "split": "train"}
    fs.pipe(broken["path"], b"\x89PNG truncated")
    s3_table = pd.DataFrame([*rows, broken])
    table_uri = f"s3://{bucket}/mos.csv"
    with fs.open(table_uri, "w") as fh:
        s3_table.to_csv(fh, index=False)
    assert len(mixed_table([{"table": s3_table}])) == int((s3_table["split"] == "train").sum())
    config = {
        "model_config": TINY_GAMMA,
        "datasets": [{"table": table_uri, "scene": "natural-quality"}],
        "train_backbone": True,
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "device": "cpu",
        "stream": True,
        "storage_options": s3_server,
    }
    result = fit("gamma", config, storage_path=tmp_path / "runs", **TWO_WORKERS)
    assert result.error is None
    assert result.metrics["epoch"] == 1 and result.metrics["steps"] >= 2
    assert np.isfinite(result.metrics["loss"]) and "val_srcc" in result.metrics


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    return make_image_dataset(
        tmp_path_factory.mktemp("q") / "d",
        n_contents=5,
        size=(40, 30),
        seed=5,
        distortions=("gaussian_blur",),
        severities=(1, 5),
    )


@pytest.mark.slow
def test_qalign_two_workers_validate_checkpoint_and_resume(
    ray_local, qalign_checkpoint, small_table, tmp_path
):
    config = {
        "checkpoint": str(qalign_checkpoint),
        "datasets": [{"table": small_table}],
        "epochs": 1,
        "batch_size": 2,
        "lr": 1e-4,
        "device": "cpu",
    }
    kwargs = {**TWO_WORKERS, "storage_path": tmp_path / "runs"}
    first = fit("qalign", config, name="qa", **kwargs)
    assert first.error is None
    metrics = first.metrics
    assert metrics["epoch"] == 0 and "val_srcc" in metrics and "val_plcc/synthetic-iqa" in metrics
    steps = metrics["steps"]
    assert steps == math.ceil(len(small_table[small_table["split"] == "train"]) // 2 / 2)
    scorer = QAlignScorer(first.checkpoint.path)
    assert np.isfinite(scorer.score([Image.open(small_table["path"][0])])).all()
    assert (Path(first.checkpoint.path) / "trainer_state.pt").exists()

    again = fit("qalign", {**config, "epochs": 2}, name="qa", **kwargs)
    assert again.error is None
    assert again.metrics["epoch"] == 1 and again.metrics["steps"] == 2 * steps


def test_qalign_video_sft_step_and_early_stop(qalign_checkpoint, tmp_path):
    videos = make_video_dataset(tmp_path / "v", n_videos=5, seconds=1.0, fps=4, size=(32, 24))
    videos = videos.assign(split=["train", "train", "val", "val", "val"])
    history = train_lmm(
        {
            "checkpoint": str(qalign_checkpoint),
            "datasets": [{"table": videos}],
            "task": "video",
            "max_frames": 3,
            "video_fps": 2.0,
            "epochs": 5,
            "batch_size": 2,
            "lr": 0.0,
            "device": "cpu",
            "early_stop_patience": 1,
            "checkpoint_dir": str(tmp_path / "ckpt"),
        },
        "qalign",
    )
    assert np.isfinite(history["epoch_loss"]).all()
    # lr 0: the val SRCC cannot improve after the first epoch, so patience 1 stops at epoch 2
    assert len(history["epoch_loss"]) == 2 and len(history["val"]) == 2
    state = torch.load(tmp_path / "ckpt" / "trainer_state.pt", weights_only=True)
    assert state["epoch"] == 1
    assert json.loads((tmp_path / "ckpt" / "config.json").read_text())


@pytest.mark.slow
def test_qalign_streams_its_examples_with_ray_data(
    ray_local, qalign_checkpoint, small_table, tmp_path
):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    table = pd.concat(
        [small_table, small_table.iloc[:1].assign(path=str(broken), split="train")],
        ignore_index=True,
    )
    config = {
        "checkpoint": str(qalign_checkpoint),
        "datasets": [{"table": table}],
        "epochs": 1,
        "batch_size": 2,
        "lr": 1e-4,
        "device": "cpu",
        "stream": True,
    }
    result = fit("qalign", config, storage_path=tmp_path / "runs", **TWO_WORKERS)
    assert result.error is None and np.isfinite(result.metrics["loss"])
    n_train = int((table["split"] == "train").sum())
    assert result.metrics["steps"] == math.ceil(n_train // 2 / 2)
    from vqpipe.train.lmm import decode_lmm_batch

    out = decode_lmm_batch(
        {"images": np.array([json.dumps([str(broken)]), json.dumps([small_table["path"][0]])])},
        str(qalign_checkpoint),
        {},
    )
    assert out["error"][0] and not out["error"][1] and len(out["visuals"][1]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_qalign_deepspeed_zero_on_two_ray_train_workers(
    ray_local, qalign_checkpoint, small_table, tmp_path, stage
):
    pytest.importorskip("deepspeed")
    config = {
        "checkpoint": str(qalign_checkpoint),
        "datasets": [{"table": small_table}],
        "epochs": 1,
        "batch_size": 2,
        "lr": 1e-4,
        "device": "cpu",
        "deepspeed": {"stage": stage},
    }
    kwargs = {**TWO_WORKERS, "storage_path": tmp_path / "runs", "name": f"ds{stage}"}
    result = fit("qalign", config, **kwargs)
    assert result.error is None
    assert result.metrics["steps"] >= 1 and np.isfinite(result.metrics["loss"])
    assert "val_srcc" in result.metrics
    ckpt = result.checkpoint.path
    assert any((tmp_path / "runs").rglob("*optim_states.pt"))  # the ZeRO shards were saved
    scorer = QAlignScorer(ckpt)
    assert np.isfinite(scorer.score([Image.open(small_table["path"][0])])).all()
    if stage == 2:  # resume: DeepSpeed reloads weights, moments and schedule on every rank
        steps = result.metrics["steps"]
        again = fit("qalign", {**config, "epochs": 2}, **kwargs)
        assert again.error is None
        assert again.metrics["epoch"] == 1 and again.metrics["steps"] == 2 * steps


@pytest.mark.slow
def test_tiny_gamma_learns_synthetic_distortions_from_scratch(tmp_path):
    """Learnability on a CPU budget (~3 min): a 64 px Gamma trained end to end on synthetic
    distortions (300 contents, 7 epochs, fixed DCT patch embedding) reaches the issue's SRCC
    ≥ 0.8 on the held-out contents."""
    from vqpipe.eval import srcc
    from vqpipe.scorers.gamma import GammaScorer
    from vqpipe.train.gamma import from_scratch_config, train_gamma

    table = make_image_dataset(tmp_path / "d", n_contents=LEARN_CONTENTS, size=(64, 64))
    config = from_scratch_config(
        "vqpipe-tiny-ViT-8", table, LEARN_EPOCHS, lr=1e-3, freeze_patch_embed=True, validate=False
    )
    history = train_gamma({**config, "device": "cpu"})
    test = table[table["split"] == "test"]
    scorer = GammaScorer(model=history["model"], device="cpu", dtype="fp32")
    value = srcc(scorer.score([Image.open(p) for p in test["path"]]), test["mos"])
    print(f"tiny Gamma held-out SRCC {value:.3f} after {history['seconds'] / 60:.1f} min")
    assert value >= LEARN_FLOOR
