"""Bad inputs, faults and secrets: every input yields exactly one row, nothing leaks."""

import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from vqpipe.data import make_video_dataset
from vqpipe.media.decode import MediaLimits
from vqpipe.pipeline.config import JobConfig, ScorerOptions
from vqpipe.pipeline.job import run_job
from vqpipe.storage import read_quality_table


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=kw.pop("format", "PNG"), **kw)
    return buf.getvalue()


def _mp4_without_frames() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        out.add_stream("libx264", rate=5)
    return buf.getvalue()


def _audio_only() -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
        )
        frame.sample_rate = 8000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory):
    """Each kind of hostile input once; returns (root, {name: expected outcome})."""
    root = tmp_path_factory.mktemp("bad") / "in"
    root.mkdir()
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    jpeg = _png(rgb, format="JPEG", quality=90)
    png = _png(rgb)
    videos = make_video_dataset(root / "v", n_videos=1, seconds=3.0, fps=4, size=(64, 48))
    good_video = Path(videos["path"].iloc[0]).read_bytes()
    files = {
        "zero.jpg": (b"", "error"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "error"),
        "truncated.png": (png[: len(png) // 2], "error"),
        "random.png": (rng.bytes(3000), "error"),
        "bomb.png": (_png(Image.new("L", (6000, 6000))), "error"),
        "cmyk.jpg": (_png(rgb.convert("CMYK"), format="JPEG"), "ok"),
        "sixteen.png": (
            _png(Image.fromarray((rng.integers(0, 65535, (40, 30))).astype(np.uint16))),
            "ok",
        ),
        "palette.png": (_png(rgb.convert("P")), "ok"),
        "la.png": (_png(rgb.convert("LA")), "ok"),
        "animated.gif": (
            _png(rgb, format="GIF", save_all=True, append_images=[rgb.rotate(90)]),
            "ok",
        ),
        "animated.webp": (
            _png(rgb, format="WEBP", save_all=True, append_images=[rgb.rotate(90)]),
            "ok",
        ),
        "tall.png": (_png(Image.new("RGB", (1, 4000), (200, 10, 10))), "ok"),
        "no frames.mp4": (_mp4_without_frames(), "error"),
        "truncated.mp4": (good_video[: len(good_video) // 3], "error"),
        "long.mp4": (good_video, "ok"),
        "audio.m4a": (_audio_only(), "error"),
        "notes.xyz": (b"hello", "error"),
        "with spaces ü.png": (png, "ok"),
    }
    for name, (data, _) in files.items():
        (root / name).write_bytes(data)
    import shutil

    shutil.rmtree(root / "v")
    try:  # a key that is not valid UTF-8 (bytes on a POSIX file system)
        with open(os.path.join(os.fsencode(root), b"latin-\xe9.png"), "wb") as fh:
            fh.write(png)
        files["latin-\\xe9.png"] = (png, "error")
    except OSError:
        pass
    return root, {name: outcome for name, (_, outcome) in files.items()}


def test_every_bad_input_kind_yields_one_row(ray_local, bad_corpus, tmp_path):
    root, expected = bad_corpus
    config = JobConfig(
        input=str(root),
        output=str(tmp_path / "out"),
        scorers=[ScorerOptions("brightness", {}, batch_size=4)],
        limits=MediaLimits(max_pixels=20_000_000, max_frames=2),
        rows_per_file=4,
    )
    summary = run_job(config)
    table = read_quality_table(str(tmp_path / "out"))
    names = table["uri"].map(lambda u: Path(u).name)
    assert sorted(names) == sorted(expected)  # exactly one row each, none lost
    outcome = dict(zip(names, table["error"].isna().map({True: "ok", False: "error"}), strict=True))
    assert outcome == expected
    errors = dict(zip(names, table["error"], strict=True))
    assert "decompression bomb" in errors["bomb.png"]
    assert "unsupported file type" in errors["notes.xyz"]
    assert errors["zero.jpg"].startswith("decode: empty file")
    if "latin-\\xe9.png" in errors:
        assert "not valid UTF-8" in errors["latin-\\xe9.png"]
    long = table[names == "long.mp4"].iloc[0]
    assert long["frames"] == 2  # capped
    assert summary["errors"] == sum(v == "error" for v in expected.values())
    print(f"\nbad-input kinds tried: {len(expected)}, all yielded exactly one row")


def test_a_scoring_actor_killed_mid_job_is_restarted_without_loss(ray_local, tmp_path):
    """SIGKILL the scorer actor's process while the job runs: Ray restarts it and retries
    its tasks; the table still has every input exactly once."""
    import signal
    import threading
    import time

    import psutil

    from vqpipe.data import make_image_dataset

    make_image_dataset(tmp_path / "c", n_contents=3, size=(64, 48), seed=5)
    images = tmp_path / "c" / "images"
    n = len(list(images.iterdir()))
    killed = []

    def killer():
        deadline = time.time() + 120
        while time.time() < deadline and not killed:
            for proc in psutil.process_iter(["pid", "cmdline"]):
                title = " ".join(proc.info["cmdline"] or [])
                if "MapBatches(ScoreStage)" in title and "defunct" not in title:
                    time.sleep(0.5)  # let it take work first (each batch takes >= 0.1 s)
                    try:
                        os.kill(proc.info["pid"], signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    killed.append(proc.info["pid"])
                    return
            time.sleep(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    config = JobConfig(
        input=str(images),
        output=str(tmp_path / "out"),
        scorers=[ScorerOptions("brightness", {"size": 256, "latency_s": 0.1}, batch_size=2)],
        rows_per_file=3,
    )
    run_job(config)
    thread.join(timeout=5)
    assert killed, "the scorer actor was never seen alive"
    table = read_quality_table(str(tmp_path / "out"))
    assert len(table) == n and table["uri"].is_unique
    assert table["error"].isna().all()


def test_transient_store_errors_are_retried_and_denied_objects_become_rows(monkeypatch):
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    import vqpipe.io.fs
    from vqpipe.pipeline import decode_stage

    failures: dict[str, int] = {}

    class Flaky(MemoryFileSystem):
        """Objects fail to open twice first (a reset, a 503); one is forbidden (403)."""

        protocol = "flaky"
        root_marker = "/"

        @classmethod
        def _strip_protocol(cls, path):
            return "/" + str(path).removeprefix("flaky://").lstrip("/")

        def _open(self, path, mode="rb", **kw):
            if "r" not in mode:
                return super()._open(path, mode, **kw)
            if "forbidden" in path:
                raise PermissionError(f"403 Forbidden: {path}")
            failures[path] = failures.get(path, 0) + 1
            if failures[path] == 1:
                raise ConnectionResetError("connection reset by peer")
            if failures[path] == 2:
                raise OSError("503 Service Unavailable (SlowDown)")
            return super()._open(path, mode, **kw)

    fsspec.register_implementation("flaky", Flaky, clobber=True)
    monkeypatch.setattr(vqpipe.io.fs, "READ_BACKOFF_S", 0.01)
    fs = Flaky()
    png = _png(Image.new("RGB", (8, 8), (9, 9, 9)))
    fs.pipe("/b/ok.png", png)
    fs.pipe("/b/forbidden.png", png)
    batch = {
        "uri": np.array(["flaky:///b/ok.png", "flaky:///b/forbidden.png", "flaky:///b/gone.png"]),
        "media_type": np.array(["image"] * 3),
    }
    out = decode_stage.decode_batch(batch, [ScorerOptions("brightness")], {}, 1.0, MediaLimits())
    errors = list(out["error"])
    assert errors[0] is None and failures["/b/ok.png"] == 3  # two transient failures, then ok
    assert errors[1].startswith("read: access denied") and "/b/forbidden.png" not in failures
    assert errors[2].startswith("read: not found")


def test_secrets_never_reach_logs_job_record_or_parquet(
    ray_local, s3_server, s3_bucket, caplog, tmp_path
):
    import logging

    import pyarrow.parquet as pq

    bucket, fs = s3_bucket
    fs.pipe(f"{bucket}/in/a.png", _png(Image.new("RGB", (8, 8), (1, 2, 3))))
    secret = "SECRET-do-not-log-8c1f"
    options = {
        **s3_server,
        "secret": "testing",
        "client_kwargs": {**s3_server["client_kwargs"]},
        "token_note": secret,
    }
    options.pop("token_note")
    options["config_kwargs"] = {"user_agent_extra": secret}  # rides along in the options
    caplog.set_level(logging.DEBUG, logger="vqpipe")
    config = JobConfig(
        input=f"s3://{bucket}/in/",
        output=f"s3://{bucket}/out/",
        scorers=[ScorerOptions("brightness")],
        storage_options=options,
    )
    run_job(config)
    job = fs.cat(f"{bucket}/out/_job.json").decode()
    assert secret not in job and "testing" not in job
    for part in fs.glob(f"{bucket}/out/part-*.parquet"):
        with fs.open(part, "rb") as fh:
            meta = pq.ParquetFile(fh).schema_arrow.metadata or {}
        assert all(secret.encode() not in v and b"testing" not in v for v in meta.values())
    assert secret not in caplog.text


def test_manifest_entries_cannot_escape_the_configured_root(tmp_path):
    from vqpipe.io.readers import ReadOptions, read_tables
    from vqpipe.io.sources import OUTSIDE_ROOT, confine
    from vqpipe.pipeline.decode_stage import decode_batch

    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    png = _png(Image.new("RGB", (8, 8)))
    (root / "a" / "ok.png").write_bytes(png)
    (tmp_path / "secret.png").write_bytes(png)
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "uri\na/ok.png\n../secret.png\na/../../secret.png\n" + f"{tmp_path / 'secret.png'}\n"
    )
    read = ReadOptions(spec=str(manifest), root=str(root))
    table = pa.concat_tables(read_tables("manifest", str(manifest), read, {})).to_pandas()
    inside = table[table["media_type"] != OUTSIDE_ROOT]
    assert [os.path.basename(u) for u in inside["uri"]] == ["ok.png"]
    assert (table["media_type"] == OUTSIDE_ROOT).sum() == 3
    out = decode_batch(
        {k: table[k].to_numpy() for k in ("uri", "media_type")},
        [ScorerOptions("brightness")],
        {},
        1.0,
        MediaLimits(),
    )
    errs = [e for e in out["error"] if e]
    assert len(errs) == 3 and all("outside the configured input root" in e for e in errs)
    assert confine("img/x.jpg", "s3://bucket/data") == ("s3://bucket/data/img/x.jpg", True)
    assert confine("s3://bucket/data/../other/x.jpg", "s3://bucket/data")[1] is False
    assert confine("s3://evil/data/x.jpg", "s3://bucket/data")[1] is False
    assert confine("gs://bucket/data/x.jpg", "s3://bucket/data")[1] is False
