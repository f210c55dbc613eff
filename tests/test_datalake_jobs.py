"""Data-lake inputs through `vqpipe score` as a user types it: WebDataset shards (local and on
the loopback S3), Parquet holding image bytes, directories of manifest shards; the commit
protocol (co-sharded deterministic parts, resume after kill -9, a write retried after its
commit, a second job on the same output, --no-resume that fails, output inside the input)."""

import json
import os
import signal
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.job_process import job_output, start_job, wait_for
from tests.lake_data import caption_sample, image_bytes, mixed_samples, write_shard
from vqpipe.cli import main
from vqpipe.storage import QualityTable, read_quality_table
from vqpipe.storage.lock import LOCK_NAME, holder
from vqpipe.storage.parts import parse_part


def _shards(root: Path) -> Path:
    """Three tar shards: captioned JPEGs; mixed members (mp4, garbage, no media); truncated."""
    root.mkdir(parents=True, exist_ok=True)
    write_shard(
        root / "shard-00000.tar", [caption_sample(i, {"jpg": image_bytes(i)}) for i in range(5)]
    )
    write_shard(root / "shard-00001.tar", mixed_samples())
    cut = root / "shard-00002.tar"
    write_shard(cut, [caption_sample(i, {"png": image_bytes(i, "PNG")}) for i in range(6)])
    data = cut.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    return root


def _check_webdataset_table(table, shard_prefix: str) -> None:
    assert table["uri"].is_unique
    assert len(table) == 5 + len(mixed_samples()) + 4  # 3 samples before the cut + 1 trace
    assert set(table["shard"].str.rsplit("/", n=1).str[-1]) == {
        "shard-00000.tar",
        "shard-00001.tar",
        "shard-00002.tar",
    }
    assert all(u.startswith(shard_prefix) and "#" in u for u in table["uri"])
    first = table[table["shard"].str.endswith("shard-00000.tar")]
    assert first["error"].isna().all() and first["txt"].notna().all()
    assert (first["uri"] == first["shard"] + "#" + first["key"]).all()
    errors = table.dropna(subset=["error"])
    assert errors["error"].str.contains("decode: cannot decode image").any()  # garbage member
    assert errors["error"].str.contains("no media member").any()
    damage = errors[errors["shard"].str.endswith("shard-00002.tar")]
    assert len(damage) == 1 and "byte offset" in damage["error"].iloc[0]
    video = table[table["media_type"] == "video"]
    assert len(video) == 1 and video["error"].isna().all() and video["frames"].iloc[0] >= 1
    assert "data" not in table.columns  # media bytes never reach the table


def test_webdataset_shards_by_brace_pattern(ray_local, tmp_path):
    root = _shards(tmp_path / "lake")
    out = tmp_path / "out"
    pattern = str(root / "shard-{00000..00002}.tar")
    args = ["score", pattern, "--out", str(out), "--scorer", "brightness", "--rows-per-file", "2"]
    assert main(args) == 0
    table = read_quality_table(str(out))
    _check_webdataset_table(table, str(root))
    parts = [parse_part(p.name) for p in out.glob("part-*.parquet")]
    assert {p["shard"].rsplit("-", 1)[0] for p in parts} == {
        "shard-00000",
        "shard-00001",
        "shard-00002",
    }  # co-sharded: every part names its tar
    job = json.loads((out / "_job.json").read_text())
    assert job["summary"]["input_format"] == "webdataset" and job["summary"]["shards"] == 3
    assert main(args) == 0  # resume: every shard is committed, nothing is read again
    again = json.loads((out / "_job.json").read_text())["summary"]
    assert again["shards_already_done"] == 3 and again["scored_rows"] == 0
    assert len(read_quality_table(str(out))) == len(table)


def test_webdataset_on_s3_detected_from_the_prefix(ray_local, s3_server, s3_bucket, tmp_path):
    bucket, fs = s3_bucket
    root = _shards(tmp_path / "lake")
    for tar in root.iterdir():
        fs.put(str(tar), f"{bucket}/lake/{tar.name}")
    options = json.dumps(s3_server)
    out = f"s3://{bucket}/quality"
    args = ["score", f"s3://{bucket}/lake/", "--out", out, "--scorer", "brightness"]
    assert main([*args, "--storage-options", options]) == 0
    table = read_quality_table(out, s3_server)
    _check_webdataset_table(table, f"s3://{bucket}/lake/")


def _hf_parquet(path: Path) -> None:
    """An HF `datasets`-style file: image struct<bytes, path>, one null, one garbage."""
    images = [{"bytes": image_bytes(i, "PNG"), "path": f"img{i}.png"} for i in range(4)]
    images += [None, {"bytes": b"not an image", "path": "bad.jpg"}]
    table = pa.table(
        {
            "image": pa.array(images, pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "caption": [f"caption {i}" for i in range(6)],
            "id": [f"row-{i}" for i in range(6)],
            "width": [9999] * 6,  # HF datasets often hold these: they must not become ours
            "brightness_score": ["not a score"] * 6,
        }
    )
    pq.write_table(table, path, row_group_size=2)


def test_parquet_with_image_bytes(ray_local, tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    _hf_parquet(lake / "train-00000.parquet")
    out = tmp_path / "out"
    assert (
        main(
            ["score", str(lake), "--out", str(out), "--scorer", "brightness", "--key-column", "id"]
        )
        == 0
    )
    table = read_quality_table(str(out)).set_index("key")
    assert len(table) == 6 and table.index.tolist() == [f"row-{i}" for i in range(6)]
    assert table["caption"].tolist() == [f"caption {i}" for i in range(6)]  # carried
    assert table.loc[[f"row-{i}" for i in range(4)], "error"].isna().all()
    assert "null" in table.loc["row-4", "error"] and table.loc["row-5", "error"].startswith(
        "decode"
    )
    assert table["uri"].tolist() == [f"{lake}/train-00000.parquet#row-{i}" for i in range(6)]
    assert "image" not in table.columns and "data" not in table.columns
    assert table["input_width"].tolist() == [9999] * 6  # carried under the input_ prefix
    assert table.loc["row-0", "width"] == 32 and table["input_brightness_score"].notna().all()
    assert table.loc[[f"row-{i}" for i in range(4)], "brightness_score"].notna().all()


def test_directory_of_manifest_shards_with_a_url_column(ray_local, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(6):
        (images / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for shard in range(2):
        rows = [
            {"url": str(images / f"{i}.png"), "caption": f"c{i}"}
            for i in range(shard * 3, shard * 3 + 3)
        ]
        pq.write_table(pa.Table.from_pylist(rows), manifests / f"part-{shard:05d}.parquet")
    (manifests / "part-00002.jsonl").write_text(
        json.dumps({"url": None, "caption": "no url"}) + "\n"
    )
    out = tmp_path / "out"
    args = ["score", str(manifests), "--out", str(out), "--scorer", "brightness"]
    assert main([*args, "--uri-column", "url", "--input-format", "manifest"]) == 0
    table = read_quality_table(str(out))
    assert len(table) == 7 and table["uri"].is_unique
    scored = table[table["error"].isna()]
    assert sorted(scored["uri"]) == sorted(str(images / f"{i}.png") for i in range(6))
    assert sorted(scored["caption"]) == [f"c{i}" for i in range(6)]
    assert table["error"].dropna().str.contains("has no url").all()


def _optimized_plan(ds, capsys) -> list[str]:
    capsys.readouterr()
    ds.explain()
    text = capsys.readouterr().out.split("Physical Plan (Optimized)")[1]
    return [line.split("[", 1)[1].rstrip("]") for line in text.splitlines() if "[" in line]


def test_pools_in_the_decode_tasks_and_in_actors_score_alike(ray_local, tmp_path, capsys):
    """A numpy scorer scores in the decode tasks (a shard is read, decoded, scored and written
    by one task); the same scorer as an actor pool (latency_s stands in for an accelerator)
    gives the same scores, and every stage's errors are still rows."""
    from vqpipe.pipeline.config import JobConfig, ScorerOptions
    from vqpipe.pipeline.job import build_dataset, scorer_signature
    from vqpipe.pipeline.score_stage import scores_in_tasks
    from vqpipe.pipeline.stages import decode_cpus

    fast, slow = ScorerOptions.parse("brightness"), ScorerOptions.parse("brightness:latency_s=0.01")
    assert scores_in_tasks(fast) and not scores_in_tasks(slow)
    for pool in ("actors=2", "num_cpus=1", "num_gpus=1"):
        assert not scores_in_tasks(ScorerOptions.parse(f"brightness:{pool}"))
    assert (decode_cpus([fast]), decode_cpus([fast, slow])) == (1.0, 0.5)
    root = _shards(tmp_path / "lake")
    shard = {"uri": str(root / "shard-00000.tar"), "format": "webdataset"}
    many = [{**shard, "id": f"s{i}"} for i in range(8)]  # enough to fill 2 CPUs' decode slots
    for scorers, shards, plan in (
        ([fast], many, ["MapBatches(read_decode)->MapBatches(write_batch)", "Input"]),
        (
            [fast, slow],
            many,
            ["MapBatches(write_batch)", "MapBatches(ScoreStage)", "MapBatches(read_decode)"],
        ),
        # one shard would be one task on one CPU: its blocks are decoded by tasks of their own
        ([fast], many[:1], ["MapBatches(decode_score)->MapBatches(write_batch)"]),
    ):
        config = JobConfig(input=str(root), output=str(tmp_path / "plan"), scorers=scorers)
        signature = {"scorers": [scorer_signature(s, {}) for s in scorers]}
        ds = build_dataset(config, shards, signature, "0000000a", str(tmp_path / "plan"))
        assert _optimized_plan(ds, capsys)[: len(plan)] == plan
    out = tmp_path / "out"
    args = ["score", str(root), "--out", str(out), "--rows-per-file", "2", "--scorer", "brightness"]
    assert main([*args, "--scorer", "brightness:latency_s=0.01,column=slow"]) == 0
    table = read_quality_table(str(out))
    _check_webdataset_table(table, str(root))
    scored = table[table["error"].isna()]
    assert len(scored) and (scored["brightness_score"] == scored["slow_score"]).all()
    job = json.loads((out / "_job.json").read_text())
    for column in ("brightness", "slow"):
        runtime = job["scorers"][column]["runtime"]
        assert [(r["device"], r["dtype"]) for r in runtime] == [("cpu", "float32")], runtime


def test_many_small_shards_share_tasks_and_keep_their_own_parts(ray_local, tmp_path):
    """18 shards on 2 CPUs: a few shards per fused task (fewer Ray Data scheduling rounds),
    each shard still its own committed part, every sample once; too few shards to fill the
    decode slots twice are not fused at all."""
    from vqpipe.pipeline.job import SHARDS_PER_TASK, _fused_tasks

    shards = [{"uri": f"s{i}.tar", "format": "webdataset", "id": str(i)} for i in range(18)]
    assert SHARDS_PER_TASK == 4 and _fused_tasks(shards, 1.0) == 5  # ceil(18 / 4) > 2 x 2 slots
    assert _fused_tasks(shards[:5], 1.0) == 4  # at least two tasks per slot
    assert _fused_tasks(shards[:3], 1.0) is None
    root, out = _many_shards(tmp_path / "lake", shards=18, per_shard=3), tmp_path / "out"
    assert main(["score", str(root), "--out", str(out), "--scorer", "brightness"]) == 0
    table = read_quality_table(str(out))
    assert len(table) == 54 and table["uri"].is_unique and table["error"].isna().all()
    parts = [parse_part(p.name)["shard"].rsplit("-", 1)[0] for p in out.glob("part-*.parquet")]
    assert sorted(parts) == [f"{s:05d}" for s in range(18)]  # one part per tar, named by it


def _many_shards(root: Path, shards: int = 6, per_shard: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        samples = [
            caption_sample(s * 100 + i, {"jpg": image_bytes(s * 100 + i)}) for i in range(per_shard)
        ]
        write_shard(root / f"{s:05d}.tar", samples)
    return root


@pytest.mark.slow
def test_kill_9_mid_job_then_rerun_scores_every_sample_once(ray_local, tmp_path):
    root, out = _many_shards(tmp_path / "lake"), tmp_path / "out"
    argv = ["score", str(root), "--out", str(out), "--scorer", "brightness:latency_s=0.5"]
    argv += ["--rows-per-file", "2", "--batch-size", "2"]
    job = start_job(tmp_path, argv)
    wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 2, job)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    partial = len(list(out.glob("part-*.parquet")))
    assert partial < 12  # killed mid-job
    assert (out / LOCK_NAME).exists()  # left by the killed job; its process is gone
    fast = ["score", str(root), "--out", str(out), "--scorer", "brightness:latency_s=0.5"]
    assert main([*fast, "--rows-per-file", "2", "--batch-size", "2"]) == 0
    table = read_quality_table(str(out))
    assert len(table) == 24 and table["uri"].is_unique and table["error"].isna().all()


@pytest.mark.slow
def test_a_write_retried_after_its_commit_adds_no_rows(tmp_path):
    root, out = _many_shards(tmp_path / "lake", shards=2), tmp_path / "out"
    marks = tmp_path / "marks"
    marks.mkdir()
    job = start_job(
        tmp_path,
        ["score", str(root), "--out", str(out), "--scorer", "brightness", "--rows-per-file", "2"],
        env={"VQPIPE_FAULT_AFTER_COMMIT": str(marks)},
    )
    job.wait(timeout=300)
    assert job.returncode == 0, job_output(job)[-2000:]
    assert len(list(marks.iterdir())) == 4  # every part's first write failed after its commit
    table = read_quality_table(str(out))
    assert len(table) == 8 and table["uri"].is_unique


def test_a_second_job_on_the_same_output_refuses_in_one_line(ray_local, tmp_path, capsys):
    root, out = _many_shards(tmp_path / "lake", shards=1), tmp_path / "out"
    args = ["score", str(root), "--out", str(out), "--scorer", "brightness"]
    with QualityTable(str(out)).lock():  # another job (alive: this process) holds the output
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "another job holds" in err[0] and LOCK_NAME in err[0]
    assert main(args) == 0 and not (out / LOCK_NAME).exists()
    assert len(read_quality_table(str(out))) == 4


def test_a_stale_lock_is_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"owner": "dead", "heartbeat": time.time() - 3600}))
    with QualityTable(str(out)).lock() as lock:  # a lock file of an earlier version, stale
        assert holder(lock.fs, str(out / LOCK_NAME))[1]["owner"] == lock.owner
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_no_resume_that_fails_keeps_the_old_results(ray_local, tmp_path):
    root, out = _many_shards(tmp_path / "lake"), tmp_path / "out"
    base = ["score", str(root), "--out", str(out), "--rows-per-file", "2"]
    assert main([*base, "--scorer", "brightness"]) == 0
    old = read_quality_table(str(out)).sort_values("uri").reset_index(drop=True)
    # One row per scorer batch and a second per batch: the 12 parts are written over ~24 s, so
    # the kill lands while _next holds some of them (the job cannot finish between two polls).
    slow = [*base, "--scorer", "brightness:size=8,latency_s=1.0,batch_size=1", "--no-resume"]
    job = start_job(tmp_path, slow)
    wait_for(lambda: len(list((out / "_next").glob("part-*.staged"))) >= 1, job)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    kept = read_quality_table(str(out)).sort_values("uri").reset_index(drop=True)
    assert kept["brightness_score"].tolist() == old["brightness_score"].tolist()
    assert main([*base, "--scorer", "brightness:size=8", "--no-resume"]) == 0
    new = read_quality_table(str(out))
    assert len(new) == 24 and new["uri"].is_unique and not (out / "_next").exists()
    job = json.loads((out / "_job.json").read_text())
    assert job["signature"]["scorers"][0]["options"] == {"size": 8}


def test_output_inside_the_input_is_never_an_input(ray_local, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    args = ["score", str(corpus), "--out", str(corpus / "quality"), "--scorer", "brightness"]
    assert main(args) == 0 and main(args) == 0
    table = read_quality_table(str(corpus / "quality"))
    assert sorted(table["uri"]) == sorted(str(corpus / f"{i}.png") for i in range(3))


def test_since_limits_a_prefix_listing_to_newer_objects(ray_local, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(4):
        (corpus / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    old = time.mktime((2025, 6, 1, 0, 0, 0, 0, 0, 0))
    for i in (0, 1):
        os.utime(corpus / f"{i}.png", (old, old))
    out = tmp_path / "out"
    args = ["score", str(corpus), "--out", str(out), "--scorer", "brightness"]
    assert main([*args, "--since", "2026-01-01"]) == 0
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == [str(corpus / "2.png"), str(corpus / "3.png")]
    capsys.readouterr()
    assert main([*args, "--since", "yesterday"]) == 2
    assert "--since 'yesterday'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_growing_prefix_resumes_by_a_distributed_anti_join(ray_local, tmp_path, monkeypatch):
    from vqpipe.pipeline import planning

    corpus = tmp_path / "corpus"
    (corpus / "day1").mkdir(parents=True)
    for i in range(5):
        (corpus / "day1" / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    out = tmp_path / "out"
    args = [
        "score",
        str(corpus),
        "--out",
        str(out),
        "--scorer",
        "brightness",
        "--rows-per-file",
        "2",
    ]
    assert main(args) == 0
    first = read_quality_table(str(out))
    (corpus / "day2").mkdir()
    for i in range(5, 8):
        (corpus / "day2" / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    (corpus / "day1" / "late.png").write_bytes(image_bytes(9, "PNG"))
    monkeypatch.setattr(planning, "DRIVER_RESUME_MAX_PARTS", 0)  # always the anti-join
    assert main(args) == 0
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert summary["already_done"] == 5 and summary["scored_rows"] == 4
    table = read_quality_table(str(out))
    assert len(table) == 9 and table["uri"].is_unique
    kept = table.set_index("uri").loc[first["uri"], "brightness_score"]
    assert kept.tolist() == first["brightness_score"].tolist()  # old rows untouched


def test_a_limited_run_commits_no_shard(ray_local, tmp_path):
    root, out = _many_shards(tmp_path / "lake", shards=2), tmp_path / "out"
    args = ["score", str(root), "--out", str(out), "--scorer", "brightness", "--rows-per-file", "2"]
    assert main([*args, "--limit", "3"]) == 0
    assert not any(parse_part(p.name)["last"] for p in out.glob("part-*.parquet"))
    assert main(args) == 0  # the full run reads both shards again: every sample once
    table = read_quality_table(str(out))
    assert len(table) == 8 and table["uri"].is_unique


def _flat_corpus(root: Path, files: int, sub: int = 0) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"{i:03d}.png").write_bytes(image_bytes(i, "PNG"))
    if sub:
        (root / "sub").mkdir()
        for i in range(sub):
            (root / "sub" / f"{i}.png").write_bytes(image_bytes(100 + i, "PNG"))
    return root


def test_a_listing_writes_one_part_per_slice_whatever_the_block_size(
    ray_local, tmp_path, monkeypatch
):
    from vqpipe.pipeline import job

    corpus, out = _flat_corpus(tmp_path / "corpus", 30, sub=5), tmp_path / "out"
    monkeypatch.setattr(job, "BLOCK_ROWS", 4)  # decode and score 4 rows at a time
    assert main(["score", str(corpus), "--out", str(out), "--scorer", "brightness"]) == 0
    parts = sorted(out.glob("part-*.parquet"))
    assert [parse_part(p.name)["rows"] for p in parts] == [None, None]  # pieces merged
    assert sorted(pq.ParquetFile(p).metadata.num_rows for p in parts) == [5, 30]
    record = json.loads(pq.read_schema(parts[0]).metadata[b"vqpipe.job"])
    assert record["runtime"]["brightness"][0]["device"] == "cpu"
    table = read_quality_table(str(out))
    assert len(table) == 35 and table["uri"].is_unique and table["error"].isna().all()
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert summary["files_written"] == 2 and summary["scored_rows"] == 35


@pytest.mark.slow
def test_kill_9_mid_listing_part_then_rerun_scores_every_file_once(ray_local, tmp_path):
    corpus, out = _flat_corpus(tmp_path / "corpus", 16), tmp_path / "out"
    argv = ["score", str(corpus), "--out", str(out), "--scorer", "brightness:latency_s=0.5"]
    argv += ["--batch-size", "2"]
    prelude = "import vqpipe.pipeline.job as j; j.BLOCK_ROWS = 2"
    job = start_job(tmp_path, argv, prelude=prelude)
    wait_for(lambda: len(list(out.glob("_piece.part-*"))) >= 2, job)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    pieces = list(out.glob("_piece.part-*"))
    assert pieces and all(parse_part(p.name)["rows"] for p in pieces)  # killed inside the part
    assert not list(out.glob("*.parquet"))  # no whole part yet: readers see none of it
    assert main(argv) == 0
    table = read_quality_table(str(out))
    assert len(table) == 16 and table["uri"].is_unique and table["error"].isna().all()
    assert main(argv) == 0
    assert len(read_quality_table(str(out))) == 16


def test_pieces_left_by_a_killed_merge_are_settled(tmp_path):
    from fsspec.implementations.local import LocalFileSystem

    from vqpipe.storage.parts import part_name, write_part

    out, fs = tmp_path / "out", LocalFileSystem()
    out.mkdir()
    meta = {b"vqpipe.job": json.dumps({"runtime": {"b": [{"device": "cpu"}]}})}
    rows = [pa.table({"uri": [f"u{i}"], "error": pa.array([None], pa.string())}) for i in range(4)]
    for i, table in enumerate(rows):  # fragment A: all four pieces in, never merged
        write_part(
            fs,
            str(out / part_name("0000000a", "A-00000-last", (i, i + 1, 4))),
            table.replace_schema_metadata(meta),
        )
    whole = out / part_name("0000000a", "B-00000-last")  # fragment B: merged, one piece left
    write_part(fs, str(whole), pa.concat_tables(rows[:2]).replace_schema_metadata(meta))
    write_part(
        fs,
        str(out / part_name("0000000a", "B-00000-last", (0, 1, 2))),
        rows[0].replace_schema_metadata(meta),
    )
    # pieces are never the table (readers' *.parquet globs skip them too): whole parts only
    assert len(QualityTable(str(out)).parts()) == 1 and not list(out.glob("_piece*.parquet"))
    assert len(QualityTable(str(out)).parts(pieces=True)) == 6
    QualityTable(str(out)).settle_pieces()
    assert not list(out.glob("_piece*"))
    names = sorted(p.name for p in out.glob("part-*"))
    assert names == [part_name("0000000a", f"{x}-00000-last") for x in "AB"]
    assert read_quality_table(str(out))["uri"].tolist() == ["u0", "u1", "u2", "u3", "u0", "u1"]


def test_hive_partition_columns_of_manifest_shards_are_carried(ray_local, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        (images / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    manifests = tmp_path / "manifests"
    for day, ids in (("2026-11-29", (0, 1)), ("2026-11-30", (2, 3))):
        folder = manifests / f"date={day}" / "lang=en%20us"
        folder.mkdir(parents=True)
        rows = [{"url": str(images / f"{i}.png")} for i in ids]
        pq.write_table(pa.Table.from_pylist(rows), folder / "part-0.parquet")
    out = tmp_path / "out"
    args = ["score", str(manifests), "--out", str(out), "--scorer", "brightness"]
    assert main([*args, "--uri-column", "url"]) == 0
    table = read_quality_table(str(out)).sort_values("uri")
    assert table["date"].tolist() == ["2026-11-29"] * 2 + ["2026-11-30"] * 2
    assert set(table["lang"]) == {"en us"} and table["error"].isna().all()


def test_a_flat_prefix_with_nothing_left_resumes_without_ray(ray_local, tmp_path, monkeypatch):
    from vqpipe.pipeline import job, runner

    corpus, out = _flat_corpus(tmp_path / "corpus", 5), tmp_path / "out"
    args = ["score", str(corpus), "--out", str(out), "--scorer", "brightness"]
    assert main(args) == 0

    def no_ray(config):
        raise AssertionError("Ray was needed")

    monkeypatch.setattr(runner, "start_ray", no_ray)
    assert main(args) == 0
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert summary["already_done"] == 5 and summary["scored_rows"] == 0
    (corpus / "new.png").write_bytes(image_bytes(50, "PNG"))
    with pytest.raises(AssertionError, match="Ray was needed"):
        job.run_job(job.JobConfig(str(corpus), str(out), [job.ScorerOptions("brightness")]))
    monkeypatch.undo()
    assert main(args) == 0
    assert len(read_quality_table(str(out))) == 6
