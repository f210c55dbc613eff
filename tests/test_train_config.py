"""`vqpipe train` config validation: one clear error before Ray starts; media a method cannot
take are skipped, counted and logged with their files, or fail naming the file."""

import re
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from vqpipe.cli import main
from vqpipe.data import make_image_dataset, make_video_dataset
from vqpipe.errors import UserError
from vqpipe.media.decode import MediaError
from vqpipe.train.config import KEYS, ConfigError, check_config
from vqpipe.train.data import MOSImageDataset, mixed_table
from vqpipe.train.gamma import train_gamma
from vqpipe.train.trainer import METHODS, fit

TINY_GAMMA = {
    "clip_model": "vqpipe-test-ViT",
    "n_moae_layers": 1,
    "n_experts": 2,
    "adapter_hidden": 16,
}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    make_image_dataset(root, n_contents=2, size=(48, 40), seed=1, distortions=("jpeg",))
    return root / "mos.csv"


@pytest.fixture(scope="module")
def with_video(tmp_path_factory, images):
    """The image table plus one mp4 row in the train split and one in the val split."""
    root = tmp_path_factory.mktemp("videos")
    videos = make_video_dataset(root, n_videos=2, seconds=1.0, fps=4, size=(48, 40))
    table = pd.read_csv(images)
    table.loc[table.index[:3], "split"] = "val"  # images to validate on beside the val video
    extra = videos[[c for c in table.columns if c in videos.columns]].assign(split=["train", "val"])
    path = root / "mixed.csv"
    pd.concat([table, extra], ignore_index=True).to_csv(path, index=False)
    return path, [str(p) for p in videos["path"]]


def train_cli(tmp_path, config, method="gamma"):
    path = tmp_path / "train.yaml"
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return main(
        ["train", "--method", method, "--config", str(path), "--storage-path", str(tmp_path)]
    )


def problem(method, config):
    with pytest.raises(ConfigError) as info:
        check_config(method, config)
    assert "\n" not in str(info.value)
    return str(info.value)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqpipe: error: "), err
    return err[0].removeprefix("vqpipe: error: ")


def test_empty_config_fails_in_one_line_before_ray_starts(tmp_path, capsys, monkeypatch):
    import ray

    def refuse(*_, **__):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(ray, "init", refuse)
    started = time.perf_counter()
    assert train_cli(tmp_path, "") == 2
    assert time.perf_counter() - started < 3
    assert one_line_error(capsys) == (
        "invalid training config: missing required key 'datasets' (a list)"
    )
    with pytest.raises(ConfigError):  # the library raises the same error as a UserError
        check_config("gamma", {})
    assert issubclass(ConfigError, UserError)


def test_fit_checks_the_config_before_ray(tmp_path, images, monkeypatch):
    import ray

    def refuse(*_, **__):
        raise AssertionError("Ray was started for a bad config")

    monkeypatch.setattr(ray, "init", refuse)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="unknown key 'epoch' \\(did you mean 'epochs'\\?\\)"):
        fit("gamma", {"datasets": [{"table": str(images)}], "epoch": 2}, storage_path=tmp_path)
    assert time.perf_counter() - started < 3


def test_cli_config_file_problems_are_user_errors(tmp_path, capsys):
    assert main(["train", "--method", "gamma", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert re.match(r"cannot read the training config .*missing\.yaml", one_line_error(capsys))
    assert train_cli(tmp_path, "datasets: [table: x.csv\nepochs: 2\n") == 2
    assert one_line_error(capsys).startswith("cannot read the training config")
    assert train_cli(tmp_path, "- table: mos.csv\n") == 2
    assert "must be a mapping of keys" in one_line_error(capsys)


def test_unknown_keys_types_and_choices(images):
    ds = [{"table": str(images)}]
    assert "unknown key 'learning_rate'" in problem("gamma", {"datasets": ds, "learning_rate": 1})
    message = problem("gamma", {"datasets": ds, "epochs": "ten", "lr": "fast", "cosine": "yes"})
    assert message.startswith("invalid training config (3 problems): ")
    assert "'epochs' must be an integer, got str 'ten'" in message
    assert "'lr' must be a number" in message and "'cosine' must be true or false" in message
    assert "'epochs' must be an integer" in problem("gamma", {"datasets": ds, "epochs": True})
    assert "not null" in problem("gamma", {"datasets": ds, "batch_size": None})
    assert "'save_dtype' must be one of 'float32', 'float16'" in problem(
        "gamma", {"datasets": ds, "save_dtype": "bf16"}
    )
    assert "unknown Gamma scene 'photo'" in problem(
        "gamma", {"datasets": [{"table": str(images), "scene": "photo"}]}
    )
    check_config("gamma", {"datasets": ds, "lr": 1, "split": None, "max_steps": None})


def test_lmm_keys(images, tmp_path):
    ds = [{"table": str(images)}]
    assert "missing required key 'checkpoint'" in problem("qalign", {"datasets": ds})
    base = {"datasets": ds, "checkpoint": str(tmp_path)}
    assert "'task' must be one of 'quality', 'aesthetics', 'video'" in problem(
        "qalign", {**base, "task": "sharpness"}
    )
    assert "unknown dtype 'fp8'" in problem("qalign", {**base, "dtype": "fp8"})
    assert "unknown key 'n_pairs'" in problem("qalign", {**base, "n_pairs": 10})
    assert "unknown key 'scene'" in problem(
        "qalign", {**base, "datasets": [{"table": str(images), "scene": "x"}]}
    )
    check_config("qalign", {**base, "task": "video", "dtype": "bf16", "deepspeed": {"stage": 2}})
    check_config("compare2score", {**base, "n_pairs": 10})


def test_datasets_entries_and_tables(images, tmp_path):
    assert "'datasets' must be a list" in problem("gamma", {"datasets": str(images)})
    assert "'datasets' is empty" in problem("gamma", {"datasets": []})
    assert "datasets[0]: must be a mapping" in problem("gamma", {"datasets": [str(images)]})
    assert "datasets[0]: missing required key 'table'" in problem("gamma", {"datasets": [{}]})
    assert "datasets[0]: unknown key 'wieght' (did you mean 'weight'?)" in problem(
        "gamma", {"datasets": [{"table": str(images), "wieght": 2}]}
    )
    missing = tmp_path / "nope.csv"
    message = problem("gamma", {"datasets": [{"table": str(images)}, {"table": str(missing)}]})
    assert message.startswith("invalid training config: datasets[1]: cannot read table ")
    assert "nope.csv" in message
    no_mos = tmp_path / "no_mos.csv"
    pd.read_csv(images).drop(columns=["mos"]).to_csv(no_mos, index=False)
    assert f"table {no_mos} lacks column(s) ['mos']" in problem(
        "gamma", {"datasets": [{"table": str(no_mos)}]}
    )
    no_std = pd.read_csv(images).drop(columns=["std"])  # a DataFrame works too
    assert "lacks column(s) ['std'] (compare2score needs them)" in problem(
        "compare2score", {"datasets": [{"table": no_std}], "checkpoint": str(tmp_path)}
    )
    assert "no training rows" in problem(
        "gamma", {"datasets": [{"table": str(images), "split": "holdout"}]}
    )


def test_a_video_row_for_gamma_is_skipped_counted_and_logged(with_video, caplog):
    path, videos = with_video
    with caplog.at_level("WARNING", logger="vqpipe.train"):
        notes = check_config("gamma", {"datasets": [{"table": str(path)}]})
    assert len(notes) == 1 and "skipping 1 row(s) that gamma cannot train on" in notes[0]
    assert Path(videos[0]).name in notes[0] and Path(videos[1]).name not in notes[0]
    assert notes[0] in caplog.text
    table = mixed_table([{"table": str(path)}])
    assert table.attrs["skipped_rows"] == 1 and not table["path"].str.endswith(".mp4").any()
    assert check_config("qalign", {"datasets": [{"table": str(path)}], "checkpoint": "x"}) == []


def test_gamma_trains_past_a_video_row(with_video):
    path, _ = with_video
    history = train_gamma(
        {
            "model_config": TINY_GAMMA,
            "datasets": [{"table": str(path)}],
            "train_backbone": True,
            "epochs": 1,
            "batch_size": 4,
            "device": "cpu",
        }
    )
    assert history["skipped_rows"] == 1 and history["steps"] >= 1
    assert any(k.startswith("val_srcc/") for k in history["val"][0])  # val video skipped too


def test_an_undecodable_training_image_names_its_file(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rows = pd.DataFrame({"path": [str(broken)], "target": [0.5], "scene": ["natural-quality"]})
    with pytest.raises(MediaError, match=re.escape(str(broken))):
        MOSImageDataset(rows, 32)[0]


def test_every_key_a_loop_reads_is_declared():
    from vqpipe.train.settings import fields

    assert set(METHODS) == set(KEYS)
    for method in KEYS:  # the loops read the typed configs, whose fields are the key table
        assert fields(method) == set(KEYS[method]), (method, fields(method) ^ set(KEYS[method]))
    root = Path(__file__).parents[1] / "vqpipe" / "train"
    read = re.compile(r'config(?:\.get\(|\[)"([a-z_]+)"|setting\(config, "[a-z0-9]+", "([a-z_]+)"')
    declared = set().union(*(set(keys) for keys in KEYS.values()))
    for path in sorted(root.glob("*.py")):
        found = {a or b for a, b in read.findall(path.read_text())}
        assert found <= declared, (path.name, found - declared)
        if path.name not in ("config.py", "settings.py"):  # read in one place
            assert not found, (path.name, found)
    gamma_only = {"model_config", "train_backbone", "crop_step", "patch_init"}
    assert gamma_only <= set(KEYS["gamma"]) and not gamma_only & set(KEYS["qalign"])


def test_typed_configs_take_their_defaults_from_the_key_table():
    from vqpipe.train.settings import GammaSettings, QAlignSettings, settings

    gamma = settings("gamma", {"datasets": [{"table": "t.csv"}], "lr": 1})
    assert isinstance(gamma, GammaSettings) and gamma.lr == 1.0 and isinstance(gamma.lr, float)
    assert gamma.epochs == KEYS["gamma"]["epochs"].default and gamma.resume is True
    assert not gamma.weighted and settings("gamma", gamma) is gamma
    qalign = settings("qalign", {"datasets": [{"table": "t.csv", "weight": 2}], "epochs": 3})
    assert isinstance(qalign, QAlignSettings) and qalign.epochs == 3 and qalign.weighted
    assert qalign.task == KEYS["qalign"]["task"].default and qalign.raw["epochs"] == 3
