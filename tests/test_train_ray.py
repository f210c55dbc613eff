"""Ray Train: a 2-worker gloo TorchTrainer run of Gamma on synthetic data; the checkpoint
loads in the scorer; a second run resumes from the saved step."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqpipe.data import make_image_dataset
from vqpipe.scoring import create_scorer
from vqpipe.train.trainer import fit


@pytest.mark.slow
def test_two_worker_gamma_run_checkpoints_and_resumes(ray_local, tmp_path):
    table = make_image_dataset(
        tmp_path / "data",
        n_contents=3,
        size=(48, 40),
        seed=1,
        distortions=("gaussian_blur", "jpeg"),
    )
    config = {
        "model_config": {
            "clip_model": "vqpipe-test-ViT",
            "n_moae_layers": 1,
            "n_experts": 2,
            "adapter_hidden": 16,
        },
        "datasets": [{"table": table, "scene": "natural-quality"}],
        "train_backbone": True,
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "device": "cpu",
    }
    first = fit(
        "gamma",
        config,
        num_workers=2,
        cpus_per_worker=0.5,
        storage_path=tmp_path / "runs",
        name="g",
    )
    assert first.error is None
    ckpt = first.checkpoint.path
    assert (Path(ckpt) / "trainer_state.pt").exists()
    scorer = create_scorer("gamma", checkpoint=f"{ckpt}/model.safetensors", device="cpu")
    scores = scorer.score([Image.open(p) for p in table["path"][:3]])
    assert np.isfinite(scores).all()
    assert "val_srcc" in first.metrics and first.metrics["epoch"] == 1

    again = fit(
        "gamma",
        {**config, "epochs": 3},
        num_workers=2,
        cpus_per_worker=0.5,
        storage_path=tmp_path / "runs",
        name="g",
    )
    assert again.error is None
    assert again.metrics["epoch"] == 2  # continued after epoch 1, did not start over
    with pytest.raises(ValueError, match="unknown training method 'nope'"):
        fit("nope", config)


@pytest.mark.slow
def test_vqpipe_train_cli_runs_a_yaml_config_into_a_loadable_checkpoint(
    ray_local, tmp_path, capsys
):
    import json

    import yaml

    from vqpipe.cli import main

    table = make_image_dataset(
        tmp_path / "data", n_contents=2, size=(40, 32), distortions=("jpeg",), severities=(1, 5)
    )
    config = {
        "model_config": {"clip_model": "vqpipe-test-ViT", "n_moae_layers": 1, "n_experts": 2},
        "datasets": [{"table": str(tmp_path / "data" / "mos.parquet"), "weight": 1}],
        "epochs": 1,
        "batch_size": 4,
        "device": "cpu",
    }
    (tmp_path / "gamma.yaml").write_text(yaml.safe_dump(config))
    argv = ["train", "--method", "gamma", "--config", str(tmp_path / "gamma.yaml")]
    argv += ["--cpus-per-worker", "0.5", "--storage-path", str(tmp_path / "runs"), "--name", "cli"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"]["epoch"] == 0 and printed["metrics"]["steps"] >= 1
    scorer = create_scorer("gamma", checkpoint=printed["checkpoint"], device="cpu")
    assert np.isfinite(scorer.score([Image.open(p) for p in table["path"][:2]])).all()
    # unknown methods are refused by the parser: one line, exit 2
    assert main(["train", "--method", "nope", "--config", str(tmp_path / "gamma.yaml")]) == 2
