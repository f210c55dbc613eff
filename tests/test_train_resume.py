"""Resuming a training run through the CLI: a run is its storage path and ``--name``; Ray
Train restores the run's latest checkpoint and the loop continues from it, while
``--no-resume`` starts over (before, Ray Train restored it anyway)."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from vqpipe.cli import main
from vqpipe.data import make_image_dataset


def _train(tmp_path, capsys, epochs: int, *flags: str) -> tuple[dict, list[str]]:
    table = tmp_path / "data" / "mos.csv"
    config = {"datasets": [{"table": str(table)}], "epochs": epochs, "batch_size": 4}
    config.update(device="cpu", validate=False)  # the bundled demo checkpoint: no model given
    (tmp_path / "gamma.yaml").write_text(yaml.safe_dump(config))
    argv = ["train", "--method", "gamma", "--config", str(tmp_path / "gamma.yaml")]
    argv += ["--cpus-per-worker", "0.5", "--storage-path", str(tmp_path / "runs")]
    assert main([*argv, "--name", "again", *flags]) == 0
    out, err = capsys.readouterr()
    epochs_done = [line for line in err.splitlines() if line.startswith("vqpipe: epoch ")]
    return json.loads(out), epochs_done


def _state(printed: dict) -> dict:
    return torch.load(Path(printed["checkpoint"]) / "trainer_state.pt", weights_only=True)


@pytest.mark.slow
def test_a_rerun_with_the_same_name_resumes_and_no_resume_starts_over(ray_local, tmp_path, capsys):
    make_image_dataset(tmp_path / "data", n_contents=2, size=(48, 40), distortions=("jpeg",))
    first, lines = _train(tmp_path, capsys, 1)
    steps = first["metrics"]["steps"]
    assert first["metrics"]["epoch"] == 0 and steps >= 1 and len(lines) == 1

    resumed, lines = _train(tmp_path, capsys, 2)  # same --name: continues after epoch 0
    assert [line.split("  ")[0] for line in lines] == ["vqpipe: epoch 2/2"]
    assert resumed["metrics"]["epoch"] == 1 and resumed["metrics"]["steps"] == 2 * steps
    assert _state(resumed)["step"] == 2 * steps

    fresh, lines = _train(tmp_path, capsys, 2, "--no-resume")  # both epochs again, from step 0
    assert [line.split("  ")[0] for line in lines] == ["vqpipe: epoch 1/2", "vqpipe: epoch 2/2"]
    assert fresh["metrics"]["epoch"] == 1 and fresh["metrics"]["steps"] == 2 * steps
    assert _state(fresh)["step"] == 2 * steps and fresh["checkpoint"] != resumed["checkpoint"]
