"""Scoring jobs as a user runs them on a cluster, all through the CLI: GPU actors decide their
device from what Ray assigned, S3 checkpoints with credentials only in --storage-options,
checkpoint identity after an overwrite, several pools of one scorer, NULLs for missing values,
and user mistakes as one line before Ray starts."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.test_gamma import tiny_model
from vqpipe.cli import build_parser, job_config_from_args, main
from vqpipe.models.gamma_checkpoint import save_gamma
from vqpipe.schema import METADATA_KEY

REPO = Path(__file__).resolve().parents[1]


def _images(root: Path, n: int = 4, broken: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        pixels = rng.integers(0, 255, (40 + 4 * i, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"img{i}.png")
    if broken:
        (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def _table(out: Path | str, filesystem=None):
    return pads.dataset(str(out), format="parquet", filesystem=filesystem).to_table()


def _job(out: Path) -> dict:
    return json.loads((out / "_job.json").read_text())


@pytest.fixture(scope="module")
def gamma_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("gamma") / "g.safetensors"
    return str(save_gamma(tiny_model(scale=0.4), path))


@pytest.mark.slow
def test_s3_checkpoint_with_credentials_only_in_storage_options_and_its_overwrite(
    ray_local, s3_server, s3_bucket, tmp_path, monkeypatch, vqpipe_cache
):
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    bucket, fs = s3_bucket
    for path in _images(tmp_path / "corpus").iterdir():
        fs.put(str(path), f"{bucket}/in/{path.name}")
    first = save_gamma(tiny_model(seed=1, scale=0.4), tmp_path / "first.safetensors")
    second = save_gamma(tiny_model(seed=2, scale=0.4), tmp_path / "second.safetensors")
    uri = f"s3://{bucket}/models/g.safetensors"
    options = json.dumps(s3_server)

    def score(out: Path) -> int:
        args = ["score", f"s3://{bucket}/in/", "--out", str(out), "--storage-options", options]
        return main([*args, "--scorer", f"gamma:checkpoint={uri}", "--rows-per-file", "2"])

    fs.put(str(first), uri)
    assert score(tmp_path / "a") == 0
    fs.put(str(second), uri)  # the same URI, other weights
    assert score(tmp_path / "b") == 0
    a, b = _job(tmp_path / "a"), _job(tmp_path / "b")
    fp_a = a["signature"]["scorers"][0]["checkpoint_fingerprint"]
    fp_b = b["signature"]["scorers"][0]["checkpoint_fingerprint"]
    assert fp_a.startswith("object:") and fp_b.startswith("object:") and fp_a != fp_b
    ta, tb = _table(tmp_path / "a").sort_by("uri"), _table(tmp_path / "b").sort_by("uri")
    assert ta.num_rows == tb.num_rows == 5
    ok = pc.is_null(ta["error"]).to_numpy(zero_copy_only=False)
    assert ok.sum() == 4  # the broken file is an error row, every other image scored
    sa = ta["gamma_score"].to_numpy(zero_copy_only=False)[ok]
    sb = tb["gamma_score"].to_numpy(zero_copy_only=False)[ok]
    assert not np.allclose(sa, sb)  # the new weights were loaded, not the cached old copy
    # one cached copy per identity; the driver never read the weights to fingerprint them
    copies = sorted((vqpipe_cache / "checkpoints").glob("*/g.safetensors"))
    assert {p.read_bytes() for p in copies} >= {first.read_bytes(), second.read_bytes()}
    # resuming the first output with the overwritten checkpoint is refused in one line
    assert score(tmp_path / "a") == 2


@pytest.mark.slow
def test_gpu_actor_on_a_node_without_usable_cuda_fails_naming_cuda(tmp_path, gamma_checkpoint):
    """Ray is told there is a GPU; torch finds no CUDA inside the actor: the job fails with
    a line naming CUDA, the node and the request — never a quiet CPU run."""
    corpus, out = _images(tmp_path / "in", broken=False), tmp_path / "out"
    script = textwrap.dedent(
        f"""
        import sys, ray
        ray.init(address="local", num_cpus=2, num_gpus=1, include_dashboard=False,
                 log_to_driver=False)
        from vqpipe.cli import main
        sys.exit(main(["score", {str(corpus)!r}, "--out", {str(out)!r},
                       "--scorer", "gamma:checkpoint={gamma_checkpoint}",
                       "--num-gpus-per-actor", "1"]))
        """
    )
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "RAY_ADDRESS": ""}
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=REPO,
    )
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 1, done.stderr[-2000:]
    assert last.startswith("vqpipe: error: ") and "CUDA" in last
    assert "num_gpus=1" in last and "node" in last
    assert not list(out.glob("part-*.parquet"))


def test_gpu_request_on_a_cluster_without_gpus_fails_in_seconds(ray_local, tmp_path, capsys):
    corpus, out = _images(tmp_path / "in"), tmp_path / "out"
    args = ["score", str(corpus), "--out", str(out), "--scorer", "brightness"]
    code = main([*args, "--num-gpus-per-actor", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("vqpipe: error: scorer pool 'brightness' asks for num_gpus=1")
    assert "no GPUs" in err[-1] and not out.exists()


@pytest.mark.slow
def test_two_qalign_pools_in_one_job(ray_local, qalign_checkpoint, tmp_path):
    corpus, out = _images(tmp_path / "in", n=3), tmp_path / "out"
    quality = f"qalign:checkpoint={qalign_checkpoint},task=quality,column=qalign_quality"
    aesthetics = f"qalign:checkpoint={qalign_checkpoint},task=aesthetics,column=qalign_aes"
    pools = ["--scorer", quality, "--scorer", aesthetics]
    code = main(["score", str(corpus), "--out", str(out), *pools, "--batch-size", "2"])
    assert code == 0
    table = _table(out).sort_by("uri")
    for column in ("qalign_quality", "qalign_aes"):
        assert {f"{column}_score", f"{column}_probs"} <= set(table.column_names)
        assert table[f"{column}_score"].null_count == 1  # the broken file
    q = table["qalign_quality_score"].to_numpy(zero_copy_only=False)
    a = table["qalign_aes_score"].to_numpy(zero_copy_only=False)
    ok = ~np.isnan(q)
    assert ok.sum() == 3 and not np.allclose(q[ok], a[ok])  # two prompts, two answers
    job = _job(out)
    assert [s["column"] for s in job["signature"]["scorers"]] == ["qalign_quality", "qalign_aes"]
    assert [s["options"]["task"] for s in job["signature"]["scorers"]] == [
        "quality",
        "aesthetics",
    ]


@pytest.mark.slow
def test_failed_rows_hold_nulls_and_metadata_describes_each_scorer(
    ray_local, tmp_path, gamma_checkpoint
):
    corpus, out = _images(tmp_path / "in"), tmp_path / "out"
    secret = "hunter2-never-recorded"
    scorer = (
        f'gamma:checkpoint={gamma_checkpoint},storage_options={{"key": "k", "secret": "{secret}"}}'
    )
    assert main(["score", str(corpus), "--out", str(out), "--scorer", scorer]) == 0
    table = _table(out)
    failed = pc.is_valid(table["error"])
    assert pc.sum(failed).as_py() == 1
    for column in ("gamma_score", "gamma_probs", "width", "height", "duration_s"):
        nulls = pc.is_null(table[column])
        if column == "duration_s":  # images have no duration
            assert pc.all(nulls).as_py()
        else:
            assert nulls.equals(failed), column
    mean = pc.mean(table["gamma_score"]).as_py()
    assert mean is not None and np.isfinite(mean)
    assert not any(np.isnan(v) for v in pc.list_flatten(table["gamma_probs"]).to_pylist())
    part = next(out.glob("part-*.parquet"))
    meta = json.loads(pq.read_schema(part).metadata[METADATA_KEY])
    facts = meta["outputs"]["gamma"]
    assert facts["score_range"] == [0.0, 1.0] and facts["higher_better"] is True
    assert facts["prob_labels"] == ["bad", "poor", "fair", "good", "perfect"]
    assert facts["version"] == "1" and facts["checkpoint"] == gamma_checkpoint
    assert meta["runtime"]["gamma"] == [
        {"device": "cpu", "dtype": "float32", "node": meta["runtime"]["gamma"][0]["node"]}
    ]
    job = _job(out)
    assert job["scorers"]["gamma"]["runtime"][0]["device"] == "cpu"
    record = (out / "_job.json").read_text() + json.dumps(meta)
    assert secret not in record
    assert job["config"]["scorers"][0]["options"]["storage_options"] == ["key", "secret"]


def test_the_bundled_demo_checkpoint_is_announced_and_recorded(ray_local, tmp_path, capsys):
    corpus, out = _images(tmp_path / "in", n=2, broken=False), tmp_path / "out"
    assert main(["score", str(corpus), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "scoring with the bundled demo gamma checkpoint, trained on synthetic data only" in err
    assert "gamma:checkpoint=" in err
    assert _job(out)["scorers"]["gamma"]["checkpoint"] == "bundled-demo"
    part = next(out.glob("part-*.parquet"))
    meta = json.loads(pq.read_schema(part).metadata[METADATA_KEY])
    assert meta["outputs"]["gamma"]["checkpoint"] == "bundled-demo"


def test_scorer_version_is_part_of_the_resume_signature(ray_local, tmp_path, monkeypatch, capsys):
    from vqpipe.scorers.brightness import BrightnessScorer

    corpus, out = _images(tmp_path / "in", n=2), tmp_path / "out"
    args = ["score", str(corpus), "--out", str(out), "--scorer", "brightness"]
    assert main(args) == 0
    monkeypatch.setattr(BrightnessScorer, "version", "2")
    capsys.readouterr()
    assert main(args) == 2
    assert "other scorers, versions" in capsys.readouterr().err
    assert main([*args, "--no-resume"]) == 0
    assert _job(out)["signature"]["scorers"][0]["version"] == "2"


def test_per_scorer_keys_win_over_global_flags():
    flags = ["--batch-size", "8", "--actors", "1-4", "--num-gpus-per-actor", "0.5"]
    pools = ["--scorer", "gamma:batch_size=32,actors=2", "--scorer", "brightness"]
    args = build_parser().parse_args(["score", "in", "--out", "out", *flags, *pools])
    gamma, brightness = job_config_from_args(args).scorers
    assert (gamma.batch_size, gamma.actors, gamma.num_gpus) == (32, (2, 2), 0.5)
    assert (brightness.batch_size, brightness.actors, brightness.num_gpus) == (8, (1, 4), 0.5)
    default = job_config_from_args(build_parser().parse_args(["score", "in", "--out", "o"]))
    assert [(s.name, s.batch_size) for s in default.scorers] == [("gamma", 64)]


@pytest.fixture
def no_ray(monkeypatch):
    """Fail the test if a command starts (or uses) Ray."""
    import ray

    def refuse(*_, **__):
        raise AssertionError("Ray was started for a user mistake")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray.data, "from_pandas", refuse)


def _mistakes(tmp: Path, gamma: str) -> dict[str, tuple[list[str], str]]:
    corpus = str(_images(tmp / "in", n=1, broken=False))
    text = tmp / "notes.safetensors"
    text.write_text("these are not weights")
    return {
        "unknown scorer": (["--scorer", "gama"], "did you mean 'gamma'"),
        "batch_size=0": (["--scorer", "brightness:batch_size=0"], "batch_size"),
        "actors=3-1": (["--scorer", "brightness:actors=3-1"], "MIN <= MAX"),
        "--actors 1,8": (["--actors", "1,8"], "MIN-MAX"),
        "unknown option": (["--scorer", "gamma:scenes=face-quality"], "did you mean 'scene'"),
        "bad type": (["--scorer", f"gamma:checkpoint={gamma},compile=3"], "true or false"),
        "bad scene": (["--scorer", f"gamma:checkpoint={gamma},scene=moon"], "unknown Gamma scene"),
        "not key=value": (["--scorer", "gamma:oops"], "key=value"),
        "same column twice": (
            ["--scorer", "brightness", "--scorer", "brightness:size=8"],
            "column=",
        ),
        "missing checkpoint": (["--scorer", f"gamma:checkpoint={tmp}/nope.pth"], "not found"),
        "not a checkpoint": (["--scorer", f"gamma:checkpoint={text}"], "not a safetensors"),
        "bad JSON": (["--storage-options", "{nope"], "not valid JSON"),
        "unknown flag": (["--scorer", "brightness", "--input-is", corpus], "unrecognized"),
        "missing input dir": (["--scorer", "brightness", "--limit", "1"], "input not found"),
        "--max-frames 0": (["--max-frames", "0"], "--max-frames must be positive"),
    }


MISTAKES = [
    "unknown scorer",
    "batch_size=0",
    "actors=3-1",
    "--actors 1,8",
    "unknown option",
    "bad type",
    "bad scene",
    "not key=value",
    "same column twice",
    "missing checkpoint",
    "not a checkpoint",
    "bad JSON",
    "unknown flag",
    "missing input dir",
    "--max-frames 0",
]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_user_mistakes_are_one_line_exit_2_and_create_nothing(
    mistake, tmp_path, capsys, no_ray, gamma_checkpoint
):
    extra, expected = _mistakes(tmp_path, gamma_checkpoint)[mistake]
    corpus = tmp_path / ("missing" if mistake == "missing input dir" else "in")
    out = tmp_path / "out"
    assert main(["score", str(corpus), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("vqpipe: error: "), err
    assert expected in err[0]
    assert not out.exists()


def test_s3_without_credentials_is_one_line(
    s3_server, s3_bucket, tmp_path, capsys, no_ray, monkeypatch
):
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    bucket, fs = s3_bucket
    fs.pipe(f"{bucket}/in/a.png", (REPO / "vqpipe" / "assets" / "gamma-demo.json").read_bytes())
    endpoint = json.dumps({"client_kwargs": s3_server["client_kwargs"]})
    args = ["score", f"s3://{bucket}/in/", "--out", str(tmp_path / "out"), "--scorer", "brightness"]
    code = main([*args, "--storage-options", endpoint])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("vqpipe: error: cannot access input") and "credentials" in err[0]


def test_debug_shows_the_traceback(tmp_path, capsys, no_ray):
    code = main(["--debug", "score", str(tmp_path), "--out", str(tmp_path / "o"), "--scorer", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" in err
    assert err.strip().splitlines()[-1].startswith("vqpipe: error: unknown scorer 'x'")
