"""A new user's first `vqpipe train`: where the weights come from, the example configs, image
paths relative to ``image_root``, the documented defaults, per-epoch progress and Ctrl-C."""

import json
import os
import re
import signal
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vqpipe.cli import main
from vqpipe.data import make_image_dataset
from vqpipe.errors import Interrupted
from vqpipe.scorers.gamma import demo_checkpoint
from vqpipe.train.config import ConfigError, check_config, markdown, start_from
from vqpipe.train.data import dataset_table, joined_path, mixed_table
from vqpipe.train.progress import epoch_line
from vqpipe.train.trainer import METHODS

ROOT = Path(__file__).parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("start")
    make_image_dataset(root, n_contents=2, size=(48, 40), seed=1, distortions=("jpeg",))
    return root / "mos.csv"


def no_ray(monkeypatch):
    import ray

    def refuse(*_, **__):
        raise AssertionError("Ray was started")

    monkeypatch.setattr(ray, "init", refuse)


def write_config(tmp_path, config) -> str:
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqpipe: error: "), err
    return err[0]


# -------------------------------------------------------------------------------------------
# where the weights come from


def test_gamma_without_checkpoint_starts_from_the_bundled_demo(images):
    config, line = start_from("gamma", {"datasets": [{"table": str(images)}]})
    assert config["checkpoint"] == str(demo_checkpoint())  # the recorded config names it
    assert "bundled demo" in line and "checkpoint:" in line
    fresh, line = start_from("gamma", {"datasets": [], "model_config": {"n_experts": 2}})
    assert "checkpoint" not in fresh and "randomly initialised" in line
    given, line = start_from("gamma", {"checkpoint": "g.safetensors"})
    assert given["checkpoint"] == "g.safetensors" and line == "fine-tuning gamma from g.safetensors"
    with pytest.raises(ConfigError, match="not both"):
        check_config(
            "gamma",
            {"datasets": [{"table": str(images)}], "checkpoint": "x", "model_config": {}},
        )


def test_the_recorded_config_of_a_run_from_the_demo_names_it(images, tmp_path):
    from vqpipe.train.gamma import train_gamma

    out = tmp_path / "g.safetensors"
    config = {"datasets": [{"table": str(images)}], "epochs": 1, "max_steps": 1}
    history = train_gamma(
        {**config, "batch_size": 2, "device": "cpu", "validate": False, "output": str(out)}
    )
    assert history["steps"] == 1 and out.exists()
    recorded = json.loads((tmp_path / "training_args.json").read_text())
    assert recorded["checkpoint"] == str(demo_checkpoint())


@pytest.mark.parametrize("method", ["qalign", "compare2score"])
def test_lmm_without_checkpoint_is_refused_in_one_line_before_ray(
    method, images, tmp_path, capsys, monkeypatch
):
    no_ray(monkeypatch)
    config = write_config(tmp_path, {"datasets": [{"table": str(images)}]})
    assert main(["train", "--method", method, "--config", config]) == 2
    line = one_line_error(capsys)
    assert "missing required key 'checkpoint'" in line and "no bundled one" in line


# -------------------------------------------------------------------------------------------
# example configs


def _mos_table(root: Path, images: Path, table: Path) -> None:
    """The synthetic images under ``root`` and a table at ``table`` naming them relative
    to ``root`` (what an ``image_root`` entry expects)."""
    make_image_dataset(root, n_contents=2, size=(40, 32), seed=2, distortions=("jpeg",))
    rows = pd.read_csv(root / "mos.csv")
    rows["path"] = [os.path.relpath(p, root) for p in rows["path"]]
    table.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(table, index=False)


def test_every_method_has_an_example_config_the_cli_validator_accepts(
    images, tmp_path, monkeypatch
):
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(METHODS)
    monkeypatch.chdir(tmp_path)  # the configs' relative paths, as a user runs them
    for method in METHODS:
        config = yaml.safe_load((CONFIGS / f"{method}.yaml").read_text())
        for spec in config["datasets"]:
            if "image_root" in spec:
                _mos_table(tmp_path / spec["image_root"], images, tmp_path / spec["table"])
            else:  # gamma.yaml: the corpus `vqpipe demo` writes
                make_image_dataset(Path(spec["table"]).parent, n_contents=2, size=(40, 32))
        if config.get("checkpoint"):
            Path(config["checkpoint"]).mkdir(parents=True, exist_ok=True)
        assert check_config(method, config) == [], method
        if method == "gamma":  # without checkpoint: the demo, said so
            assert "bundled demo" in start_from(method, config)[1]


# -------------------------------------------------------------------------------------------
# image_root


def test_relative_image_paths_resolve_against_image_root_else_the_tables_folder(images, tmp_path):
    rows = pd.read_csv(images)
    rows["path"] = [Path(p).name for p in rows["path"]]
    images_dir = Path(pd.read_csv(images)["path"][0]).parent
    beside = images_dir / "relative.csv"  # the table in the images' folder: no image_root
    rows.to_csv(beside, index=False)
    elsewhere = tmp_path / "elsewhere.csv"
    rows.to_csv(elsewhere, index=False)
    expected = [str(images_dir / name) for name in rows["path"]]
    assert list(dataset_table({"table": str(beside)})["path"]) == expected
    rooted = {"table": str(elsewhere), "image_root": str(images_dir)}
    assert list(dataset_table(rooted)["path"]) == expected
    assert list(mixed_table([rooted], split=None)["path"]) == expected
    check_config("gamma", {"datasets": [rooted]})
    with pytest.raises(ConfigError) as info:  # the wrong folder: named, with the rule
        check_config("gamma", {"datasets": [{"table": str(elsewhere)}]})
    message = str(info.value)
    assert f"image file(s) not found: {tmp_path / rows['path'][0]}" in message
    assert "relative paths resolve against the table's folder (or image_root)" in message
    assert joined_path("a/b.jpg", "s3://bucket/imgs") == "s3://bucket/imgs/a/b.jpg"
    assert joined_path("s3://x/y.jpg", "/data") == "s3://x/y.jpg"
    assert joined_path("/abs/y.jpg", "/data") == "/abs/y.jpg"


# -------------------------------------------------------------------------------------------
# the defaults, documented once


def test_docs_training_table_is_the_config_table():
    text = (ROOT / "docs" / "training.md").read_text()
    begin, end = "<!-- generated: training-keys -->\n", "<!-- end generated -->"
    assert begin in text and end in text
    assert text.split(begin, 1)[1].split(end, 1)[0] == markdown()
    assert "| `epochs` | `10` |" in markdown() and "| `checkpoint` | required |" in markdown()


def test_loop_docstrings_do_not_repeat_the_defaults():
    for name in ("gamma.py", "lmm.py"):
        head = (ROOT / "vqpipe" / "train" / name).read_text().split('"""')[1]
        assert not re.search(r"``(epochs|lr|batch_size|warmup)`` \(\d", head), name


# -------------------------------------------------------------------------------------------
# progress and Ctrl-C


def test_epoch_line():
    metrics = {"epoch": 1, "steps": 340, "loss": 0.1234, "val_srcc": 0.8121, "val_plcc": 0.83}
    assert epoch_line(metrics, 5) == "epoch 2/5  step 340  loss 0.123  val SRCC 0.812  PLCC 0.830"
    assert epoch_line({"epoch": 0, "steps": 3, "loss": 0.5}, 1) == "epoch 1/1  step 3  loss 0.500"


def test_ctrl_c_in_train_says_so_in_one_line_and_exits_130(images, tmp_path, capsys, monkeypatch):
    import vqpipe.cli.train
    import vqpipe.train.trainer as trainer

    def interrupted(*_, **__):
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(trainer, "fit", interrupted)
    monkeypatch.setattr(vqpipe.cli.train, "_start_train_ray", lambda verbosity: False)
    config = write_config(tmp_path, {"datasets": [{"table": str(images)}]})
    assert main(["train", "--method", "gamma", "--config", config, "--name", "g7"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqpipe: interrupted: "), err
    assert "--name g7" in err[0]


@pytest.mark.slow
def test_ctrl_c_stops_a_real_training_run_in_one_line(images, tmp_path):
    from tests.job_process import job_output, start_job, wait_for

    config = {"datasets": [{"table": str(images)}], "epochs": 200, "device": "cpu"}
    argv = ["train", "--method", "gamma", "--config", write_config(tmp_path, config)]
    argv += ["--cpus-per-worker", "0.5", "--storage-path", str(tmp_path / "runs")]
    job = start_job(tmp_path, argv)
    try:
        wait_for(lambda: "vqpipe: epoch 1/200" in job_output(job), job, timeout=400)
        os.killpg(job.pid, signal.SIGINT)  # Ctrl-C in a terminal: the foreground group
        assert job.wait(timeout=120) == 130, job_output(job)[-3000:]
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    text = job_output(job)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    lines = [line for line in text.splitlines() if "interrupted" in line.lower()]
    assert len(lines) == 1 and lines[0].startswith("vqpipe: interrupted: training stopped"), lines


@pytest.mark.slow
def test_train_cli_from_the_demo_prints_one_line_per_epoch(ray_local, images, tmp_path, capsys):
    table = pd.read_csv(images)
    table.loc[table.index[:4], "split"] = "val"
    table.to_csv(tmp_path / "mos.csv", index=False)
    config = {
        "datasets": [{"table": str(tmp_path / "mos.csv")}],
        "epochs": 2,
        "max_steps": 4,
        "batch_size": 4,
        "device": "cpu",
    }
    argv = ["train", "--method", "gamma", "--config", write_config(tmp_path, config)]
    argv += ["--cpus-per-worker", "0.5", "--storage-path", str(tmp_path / "runs")]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    printed = json.loads(out)
    lines = err.strip().splitlines()
    assert any("bundled demo" in line for line in lines), lines
    epochs = [line for line in lines if line.startswith("vqpipe: epoch ")]
    assert len(epochs) == 2, lines
    pattern = r"vqpipe: epoch {}/2  step \d+  loss \d\.\d{{3}}  val SRCC -?\d\.\d{{3}}  PLCC"
    assert re.match(pattern.format(1), epochs[0]) and re.match(pattern.format(2), epochs[1])
    assert printed["metrics"]["epoch"] == 1


@pytest.mark.slow
def test_a_failing_training_worker_is_one_error_line(ray_local, images, tmp_path, capsys):
    config = {"datasets": [{"table": str(images)}], "device": "no-such-device", "epochs": 1}
    argv = ["train", "--method", "gamma", "--config", write_config(tmp_path, config)]
    argv += ["--cpus-per-worker", "0.5", "--storage-path", str(tmp_path / "runs")]
    assert main(argv) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("vqpipe: error: training failed: "), errors
    assert "no-such-device" in errors[0]


def test_relative_paths_in_a_config_are_the_working_directorys(images, tmp_path, monkeypatch):
    from vqpipe.train.config import absolute_paths

    monkeypatch.chdir(images.parent)
    config = {
        "datasets": [{"table": images.name, "image_root": "."}],
        "checkpoint": "owner/model",  # not here: a Hub id stays as it is
        "output": "out/g.safetensors",
    }
    out = absolute_paths("gamma", config)
    assert out["datasets"][0] == {"table": str(images), "image_root": str(images.parent)}
    assert out["checkpoint"] == "owner/model"
    assert out["output"] == str(images.parent / "out" / "g.safetensors")
