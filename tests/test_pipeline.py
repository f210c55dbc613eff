"""The Ray Data scoring job end to end: one row per input, errors named, resume, S3, filter."""

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.test_gamma import tiny_model
from vqpipe.cli import main
from vqpipe.console import format_progress
from vqpipe.data import make_image_dataset, make_video_dataset
from vqpipe.errors import UserError
from vqpipe.models.gamma_checkpoint import save_gamma
from vqpipe.pipeline.config import JobConfig, ScorerOptions
from vqpipe.pipeline.job import run_job
from vqpipe.storage import read_quality_table


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(save_gamma(tiny_model(scale=0.4), tmp_path_factory.mktemp("ckpt") / "g.safetensors"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    make_image_dataset(
        root / "data", n_contents=1, size=(64, 48), distortions=("jpeg", "gaussian_blur")
    )
    make_video_dataset(root / "data", n_videos=2, seconds=2.0, fps=5, size=(64, 48))
    (root / "data" / "broken").mkdir()
    (root / "data" / "broken" / "empty.jpg").write_bytes(b"")
    (root / "data" / "broken" / "junk.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "data" / "broken" / "readme.txt").write_text("hello")
    (root / "data" / "broken" / "cut.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 64)
    return root / "data"


def _inputs(root: Path) -> list[str]:
    return sorted(
        str(p)
        for p in root.rglob("*")
        if p.is_file()
        and not p.name.startswith((".", "_"))
        and p.suffix not in (".parquet", ".csv")
    )


def _config(corpus, out, checkpoint, **kw):
    return JobConfig(
        input=str(corpus),
        output=str(out),
        scorers=[ScorerOptions("gamma", {"checkpoint": checkpoint, "device": "cpu"}, batch_size=8)],
        exclude=("*.parquet", "*.csv"),
        rows_per_file=5,
        **kw,
    )


def test_every_input_gets_exactly_one_row(ray_local, corpus, checkpoint, tmp_path):
    updates = []
    summary = run_job(_config(corpus, tmp_path / "out", checkpoint), progress=updates.append)
    assert updates[-1]["done"] == len(_inputs(corpus))
    assert updates[-1]["total"] is None  # a listing is not counted before it is scored
    assert updates[-1]["errors"] == 4
    assert "errors" in format_progress(updates[0])
    table = read_quality_table(str(tmp_path / "out"))
    assert sorted(table["uri"]) == _inputs(corpus)
    assert summary["scored_rows"] == len(table) and summary["errors"] == 4
    by_name = table.set_index(table["uri"].map(lambda u: Path(u).name))
    assert by_name.loc["empty.jpg", "error"].startswith("decode: empty file")
    assert by_name.loc["junk.png", "error"].startswith("decode: cannot decode image")
    assert "unsupported file type '.txt'" in by_name.loc["readme.txt", "error"]
    assert by_name.loc["cut.mp4", "error"].startswith("decode: cannot decode video")
    ok = table[table["error"].isna()]
    assert ok["gamma_score"].between(0, 1.5).all() and len(ok) == len(table) - 4
    videos = ok[ok["media_type"] == "video"]
    assert len(videos) == 2 and (videos["frames"] == 2).all() and (videos["duration_s"] > 1.5).all()
    assert all(len(p) == 5 for p in ok["gamma_probs"])
    job = json.loads((tmp_path / "out" / "_job.json").read_text())
    assert job["signature"]["scorers"][0]["checkpoint_fingerprint"].startswith("sha256:")


@pytest.mark.slow
def test_resume_scores_only_what_is_missing(ray_local, corpus, checkpoint, tmp_path):
    out = tmp_path / "out"
    first = run_job(_config(corpus, out, checkpoint, limit=7))
    assert first["scored_rows"] == 7
    second = run_job(_config(corpus, out, checkpoint))
    assert second["already_done"] == 7 and second["scored_rows"] == len(_inputs(corpus)) - 7
    third = run_job(_config(corpus, out, checkpoint))
    assert third["scored_rows"] == 0
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == _inputs(corpus)  # no loss, no duplicates
    # a half-written temporary file is never read as a result
    (out / ".tmp-part-deadbeef.parquet").write_bytes(b"PAR1 half")
    assert len(read_quality_table(str(out))) == len(table)


def test_resume_refuses_results_of_another_checkpoint(ray_local, corpus, checkpoint, tmp_path):
    out = tmp_path / "out"
    run_job(_config(corpus, out, checkpoint, limit=3))
    other = str(save_gamma(tiny_model(seed=9), tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match="other scorers"):
        run_job(_config(corpus, out, other))
    run_job(_config(corpus, out, other, limit=2, resume=False))
    assert len(read_quality_table(str(out))) == 2


def test_s3_input_and_output(ray_local, s3_server, s3_bucket, corpus, checkpoint):
    bucket, fs = s3_bucket
    names = [
        "images/c000_ref.png",
        "images/c000_jpeg_s3.png",
        "broken/junk.png",
        "videos/v0000_reference_s0.mp4",
    ]
    for name in names:
        local = corpus / name
        if not local.exists():  # video names depend on the generator
            local = next((corpus / "videos").glob("*.mp4"))
        fs.put(str(local), f"{bucket}/in/{name}")
    config = JobConfig(
        input=f"s3://{bucket}/in/",
        output=f"s3://{bucket}/out/",
        scorers=[ScorerOptions("gamma", {"checkpoint": checkpoint, "device": "cpu"})],
        storage_options=s3_server,
    )
    summary = run_job(config)
    table = read_quality_table(f"s3://{bucket}/out/", s3_server)
    assert sorted(table["uri"]) == sorted(f"s3://{bucket}/in/{n}" for n in names)
    assert summary["errors"] == 1
    job = json.loads(fs.cat(f"{bucket}/out/_job.json"))
    assert "testing" not in json.dumps(job)  # no credentials in the job record


def test_manifest_columns_are_carried_and_filter_cli(ray_local, corpus, checkpoint, tmp_path):
    uris = _inputs(corpus)[:6]
    manifest = tmp_path / "manifest.csv"
    pd.DataFrame({"uri": uris, "caption": [f"c{i}" for i in range(6)]}).to_csv(
        manifest, index=False
    )
    out = tmp_path / "out"
    code = main(
        [
            "score",
            str(manifest),
            "--out",
            str(out),
            "--scorer",
            f"gamma:checkpoint={checkpoint}",
            "--rows-per-file",
            "4",
        ]
    )
    assert code == 0
    table = read_quality_table(str(out))
    assert dict(zip(table["uri"], table["caption"], strict=True)) == {
        u: f"c{i}" for i, u in enumerate(uris)
    }
    keep = tmp_path / "keep.parquet"
    threshold = float(table["gamma_score"].median())
    assert (
        main(["filter", str(out), "--where", f"gamma_score >= {threshold}", "--out", str(keep)])
        == 0
    )
    kept = pd.read_parquet(keep)
    ok = table[table["error"].isna()]
    assert sorted(kept["uri"]) == sorted(ok.loc[ok["gamma_score"] >= threshold, "uri"])


def test_scorer_option_parsing():
    spec = ScorerOptions.parse(
        "gamma:checkpoint=s3://m/g.pth,scene=face-quality,batch_size=128,actors=1-4,num_gpus=0.5"
    )
    assert spec.options == {"checkpoint": "s3://m/g.pth", "scene": "face-quality"}
    assert (spec.batch_size, spec.actors, spec.num_gpus) == (128, (1, 4), 0.5)
    with pytest.raises(UserError, match="key=value"):
        ScorerOptions.parse("gamma:oops")


def test_unwritable_output_fails_before_scoring(corpus, checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="not writable"):
        run_job(_config(corpus, blocker / "out", checkpoint))
    assert blocker.read_text() == "x"


@pytest.mark.slow
def test_killed_job_resumes_without_loss_or_duplicates(corpus, checkpoint, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    images = tmp_path / "many"
    make_image_dataset(images, n_contents=8, size=(48, 36))  # 208 images
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "vqpipe.cli",
        "score",
        str(images),
        "--out",
        str(out),
        "--scorer",
        f"gamma:checkpoint={checkpoint}",
        "--rows-per-file",
        "2",
        "--exclude",
        "*.parquet",
        "--exclude",
        "*.csv",
    ]
    env = {**os.environ, "RAY_DISABLE_USAGE_STATS": "1", "RAY_ADDRESS": ""}
    proc = subprocess.Popen(
        command,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not list(out.glob("part-*.parquet")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray, mid-job
    proc.wait()
    partial = len(read_quality_table(str(out)))
    print(f"killed after {partial} of 208 rows")
    assert 0 < partial < 208, "the kill should land midway"
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    table = read_quality_table(str(out))
    expected = sorted(str(p) for p in (images / "images").glob("*.png"))
    assert sorted(table["uri"]) == expected  # every input exactly once


def test_two_scorer_pools_in_one_job_and_video_sequences(
    ray_local, corpus, checkpoint, qalign_checkpoint, tmp_path
):
    """Gamma, Q-Align (video task: all sampled frames in one sequence) and Compare2Score in one
    graph; the job's Q-Align score of a video equals the scorer's own score of its frames."""
    from vqpipe.media.decode import decode_video
    from vqpipe.scorers.qalign import QAlignScorer

    qalign = {"checkpoint": str(qalign_checkpoint), "task": "video", "device": "cpu"}
    config = JobConfig(
        input=str(corpus),
        output=str(tmp_path / "out"),
        scorers=[
            ScorerOptions("gamma", {"checkpoint": checkpoint, "device": "cpu"}, batch_size=8),
            ScorerOptions("qalign", qalign, batch_size=4),
            ScorerOptions("compare2score", {"checkpoint": str(qalign_checkpoint)}, batch_size=4),
        ],
        exclude=("*.parquet", "*.csv"),
        rows_per_file=6,
    )
    run_job(config)
    table = read_quality_table(str(tmp_path / "out"))
    assert sorted(table["uri"]) == _inputs(corpus)
    ok = table[table["error"].isna()]
    assert ok["qalign_score"].between(1, 5).all() and ok["gamma_score"].notna().all()
    assert all(len(p) == 5 for p in ok["qalign_probs"])
    assert ok["compare2score_thurstone"].notna().all()
    assert ok["compare2score_score_100"].between(0, 100).all()
    assert (ok["compare2score_score"] == ok["compare2score_thurstone"]).all()
    video = ok[ok["media_type"] == "video"].iloc[0]
    frames, _ = decode_video(Path(video["uri"]).read_bytes(), 1.0)
    direct = QAlignScorer(**qalign).score([frames])[0]
    assert video["qalign_score"] == pytest.approx(direct, abs=1e-4)


def test_pool_options_are_resolved_once_and_shipped_as_they_are():
    """The driver resolves each pool's scorer arguments once (registry defaults, options, the
    job's storage options); a worker's copy uses them as they are and never rebuilds them."""
    import pickle

    from vqpipe.scorers.registry import get_scorer_spec

    secrets = {"key": "AKIA", "secret": "s3cr3t"}
    config = JobConfig(
        "in",
        "out",
        scorers=[ScorerOptions.parse("gamma:checkpoint=/w/g.safetensors,batch_size=4")],
        storage_options=secrets,
    )
    resolved = config.resolved()
    assert config.scorers[0].kwargs is None  # the caller's config is left as it was
    shipped = pickle.loads(pickle.dumps(resolved.scorers[0]))  # what a worker receives
    expected = {
        **get_scorer_spec("gamma").defaults,
        "checkpoint": "/w/g.safetensors",
        "storage_options": secrets,
    }
    assert shipped.kwargs == expected
    shipped.options["checkpoint"] = "/elsewhere"
    assert shipped.scorer_kwargs({"other": 1}) == expected  # as shipped, not recomputed
    assert shipped.batch_size == 4 and shipped.column == "gamma"
    recorded = json.dumps(resolved.to_metadata())
    assert "s3cr3t" not in recorded and "s3cr3t" not in repr(shipped)
