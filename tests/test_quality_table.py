"""The quality table as nightly curation jobs use it, through the CLI, on a local folder and on
the loopback S3 server: ``--no-resume`` replaces a table only once the new one is complete."""

import json
import time

import pytest

from tests.lake_data import image_bytes
from vqpipe.cli import main
from vqpipe.storage import QualityTable, read_quality_table


def _s3_images(fs, bucket: str, n: int, prefix: str = "img") -> str:
    for i in range(n):
        fs.pipe(f"{bucket}/{prefix}/{i:03d}.png", image_bytes(i, "PNG"))
    return f"s3://{bucket}/{prefix}/"


def _local_images(folder, n: int) -> list[str]:
    """``n`` PNG files ``0.png`` … in ``folder`` (created); their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    return [str(folder / f"{i}.png") for i in range(n)]


def test_no_resume_on_s3_replaces_the_table_only_when_complete(
    ray_local, s3_server, s3_bucket, capsys
):
    bucket, fs = s3_bucket
    source, out = _s3_images(fs, bucket, 6), f"s3://{bucket}/out"
    options = ["--storage-options", json.dumps(s3_server)]
    base = ["score", source, "--out", out, *options]
    assert main([*base, "--scorer", "brightness"]) == 0
    old = read_quality_table(out, s3_server)
    assert len(old) == 6 and old["uri"].is_unique

    # what a --no-resume run killed mid-way leaves: staged parts without the commit marker
    staged = QualityTable(out, s3_server).parts()[0].replace("/out/", "/out/_next/")
    fs.copy(QualityTable(out, s3_server).parts()[0], staged)
    assert main([*base, "--scorer", "brightness"]) == 0  # the next run drops them
    assert not fs.exists(f"{bucket}/out/_next")
    kept = read_quality_table(out, s3_server)
    assert sorted(kept["brightness_score"]) == sorted(old["brightness_score"])

    assert main([*base, "--scorer", "brightness:size=8", "--no-resume"]) == 0
    new = read_quality_table(out, s3_server)
    assert len(new) == 6 and new["uri"].is_unique and sorted(new["uri"]) == sorted(old["uri"])
    assert not fs.exists(f"{bucket}/out/_next")
    job = json.loads(fs.cat_file(f"{bucket}/out/_job.json"))
    assert job["signature"]["scorers"][0]["options"] == {"size": 8}
    assert all(p.startswith(f"{bucket}/out/part-") for p in QualityTable(out, s3_server).parts())
    assert sorted(new["brightness_score"]) != sorted(old["brightness_score"])
    capsys.readouterr()
    # a resume of the replaced table has nothing left to do
    assert main([*base, "--scorer", "brightness:size=8", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scored_rows"] == 0
    assert len(read_quality_table(out, s3_server)) == 6


@pytest.mark.slow
def test_compare_no_resume_on_s3_replaces_the_table(
    ray_local, qalign_checkpoint, s3_server, s3_bucket, tmp_path, monkeypatch
):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bucket, fs = s3_bucket
    source = _s3_images(fs, bucket, 3)
    rows = [{"uri_a": f"{source}000.png", "uri_b": f"{source}00{i}.png"} for i in (1, 2)]
    with fs.open(f"{bucket}/pairs/pairs.parquet", "wb") as fh:
        pq.write_table(pa.Table.from_pylist(rows), fh)
    out = f"s3://{bucket}/prefs"
    monkeypatch.chdir(tmp_path)  # a staging path taken for a local one would land here
    scorer = f"compare2score:checkpoint={qalign_checkpoint},temperature=1.0,batch_size=2"
    base = ["compare", f"s3://{bucket}/pairs/", "--out", out, "--scorer", scorer]
    base += ["--storage-options", json.dumps(s3_server)]
    assert main(base) == 0
    old = read_quality_table(out, s3_server)
    assert len(old) == 2
    assert main([*base, "--no-resume"]) == 0
    new = read_quality_table(out, s3_server)
    assert len(new) == 2 and new["uri"].is_unique and not fs.exists(f"{bucket}/prefs/_next")
    assert sorted(new["p_b_better"]) == pytest.approx(sorted(old["p_b_better"]), abs=1e-6)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------------------- the lock
def _stale_record(owner: str = "dead") -> bytes:
    """A holder on another machine whose lease ran out an hour ago."""
    return json.dumps({"owner": owner, "host": "elsewhere", "pid": 1, "heartbeat": 0}).encode()


@pytest.mark.parametrize("store", ["local", "s3"])
def test_a_lost_lock_fences_every_commit(tmp_path, monkeypatch, request, store):
    import pyarrow as pa

    from vqpipe.storage import LostLockError
    from vqpipe.storage import lock as lock_module
    from vqpipe.storage.parts import write_part

    if store == "s3":
        options = request.getfixturevalue("s3_server")
        bucket, _ = request.getfixturevalue("s3_bucket")
        table = QualityTable(f"s3://{bucket}/out", options)
    else:
        (tmp_path / "out").mkdir()
        table = QualityTable(str(tmp_path / "out"))
    monkeypatch.setattr(lock_module, "STALE_S", 0.5)
    monkeypatch.setenv("VQPIPE_LOCK_HOST", "host-a")
    first = table.lock().__enter__()
    write_part(
        table.fs,
        table.path("part-0000000a-x-00000-last.parquet"),
        pa.table({"uri": ["a"]}),
        first.fence,
    )
    time.sleep(1.0)  # host-a is paused past its lease
    monkeypatch.setenv("VQPIPE_LOCK_HOST", "host-b")
    with table.lock() as second:
        assert second.generation == first.generation + 1
        with pytest.raises(LostLockError, match=r"lost the lock on .* to job on host host-b"):
            first.fence.check()
        with pytest.raises(LostLockError):
            write_part(
                table.fs,
                table.path("part-0000000a-y-00000-last.parquet"),
                pa.table({"uri": ["b"]}),
                first.fence,
            )
        assert [p.rsplit("/", 1)[-1] for p in table.parts()] == [
            "part-0000000a-x-00000-last.parquet"
        ]
        if store == "local":  # no temporary file left either
            assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
                "_lock",
                "part-0000000a-x-00000-last.parquet",
            ]
        with pytest.raises(LostLockError):
            first.check()
        first.__exit__(None, None, None)  # the loser leaves the winner's lock alone
        assert second.held()
    assert lock_module.holder(table.fs, table.path("_lock"))[1] is None


def test_a_live_process_on_this_host_keeps_its_lock_however_old_its_lease(tmp_path):
    import subprocess
    import sys

    from vqpipe.errors import UserError
    from vqpipe.storage.lock import _host

    out = tmp_path / "out"
    (out / "_lock").mkdir(parents=True)
    paused = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"owner": "paused", **_host(), "pid": paused.pid, "heartbeat": 0}
        (out / "_lock" / "000000000001.json").write_text(json.dumps(record))
        with pytest.raises(UserError, match=f"pid {paused.pid}"):
            QualityTable(str(out)).lock().__enter__()
    finally:
        paused.kill()
        paused.wait()
    with QualityTable(str(out)).lock() as lock:  # its process is gone: taken over at once
        assert lock.generation == 2


def _race(uri, storage_options, rounds, barrier, results):
    """One contender, ``rounds`` times: wait for the others, try the lock, hold it until all
    have tried, release it."""
    from vqpipe.errors import UserError
    from vqpipe.storage import QualityTable

    table = QualityTable(uri, storage_options)
    for _ in range(rounds):
        barrier.wait()
        lock = table.lock()
        try:
            lock.__enter__()
            results.put(lock.owner)
        except UserError:
            lock = None
            results.put(None)
        barrier.wait()
        if lock is not None:
            lock.__exit__(None, None, None)
        barrier.wait()


def _race_rounds(uri, storage_options, write_stale, rounds: int, contenders: int = 8) -> None:
    """``contenders`` processes race for a stale lock ``rounds`` times: one wins each time."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(contenders + 1), context.Queue()
    args = (uri, storage_options, rounds, barrier, results)
    procs = [context.Process(target=_race, args=args) for _ in range(contenders)]
    for p in procs:
        p.start()
    try:
        for _ in range(rounds):
            write_stale()
            barrier.wait(timeout=120)  # go
            barrier.wait(timeout=60)  # all have tried
            winners = [w for w in (results.get(timeout=5) for _ in procs) if w is not None]
            assert len(winners) == 1, winners
            barrier.wait(timeout=60)  # released
    finally:
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()


def test_racing_for_a_stale_lock_one_job_wins_local(tmp_path):
    out = tmp_path / "out"

    def stale():
        (out / "_lock").mkdir(parents=True, exist_ok=True)
        for f in (out / "_lock").iterdir():
            f.unlink()
        (out / "_lock" / "000000000007.json").write_bytes(_stale_record())

    _race_rounds(str(out), None, stale, rounds=30)


def test_racing_for_a_stale_lock_one_job_wins_s3(s3_server, s3_bucket):
    bucket, fs = s3_bucket

    def stale():
        fs.rm(f"{bucket}/out/_lock", recursive=True) if fs.exists(f"{bucket}/out/_lock") else None
        fs.pipe(f"{bucket}/out/_lock/000000000007.json", _stale_record())

    _race_rounds(f"s3://{bucket}/out", s3_server, stale, rounds=10)


@pytest.mark.slow
def test_a_job_paused_past_its_lease_is_fenced_and_the_table_stays_exact(
    ray_local, tmp_path, monkeypatch
):
    """Job A (host-a) is paused (SIGSTOP) past its lease; job B (host-b) takes the table over
    and completes it; A, resumed, commits nothing more and ends in one line; every input is
    in the table exactly once."""
    import os
    import signal

    from tests.job_process import job_output, start_job, wait_for
    from vqpipe.storage import lock as lock_module

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    for d in range(3):
        (corpus / f"d{d}").mkdir(parents=True)
        for i in range(10):
            (corpus / f"d{d}" / f"{i}.png").write_bytes(image_bytes(d * 10 + i, "PNG"))
    argv = ["score", str(corpus), "--out", str(out), "--rows-per-file", "2"]
    slow = [*argv, "--scorer", "brightness:latency_s=0.4,batch_size=2"]
    env = {"VQPIPE_LOCK_STALE_S": "2", "VQPIPE_LOCK_HOST": "host-a"}
    job = start_job(tmp_path, slow, env=env)
    wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 1, job)
    os.killpg(job.pid, signal.SIGSTOP)
    try:
        time.sleep(3)  # past host-a's lease
        monkeypatch.setattr(lock_module, "STALE_S", 2.0)
        monkeypatch.setenv("VQPIPE_LOCK_HOST", "host-b")
        assert main([*argv, "--scorer", "brightness:latency_s=0.4,batch_size=2"]) == 0
        done = read_quality_table(str(out))
        assert len(done) == 30 and done["uri"].is_unique
    finally:
        os.killpg(job.pid, signal.SIGCONT)
    assert job.wait(timeout=240) == 1
    last = [line for line in job_output(job).splitlines() if line.startswith("vqpipe: error")]
    assert len(last) == 1 and "lost the lock on" in last[0], job_output(job)[-2000:]
    table = read_quality_table(str(out))
    assert len(table) == 30 and table["uri"].is_unique and table["error"].isna().all()


# ---------------------------------------------------------------------------- damaged parts
def _flip_inside_a_page(path) -> None:
    """Flip the last byte of the first column chunk (its data page's values, not a page
    header's statistics, which no reader uses): the footer stays intact."""
    import pyarrow.parquet as pq

    column = pq.ParquetFile(path).metadata.row_group(0).column(0)
    start = column.dictionary_page_offset or column.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + column.total_compressed_size - 1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert pq.ParquetFile(path).metadata.num_rows  # the footer still reads


def test_a_part_damaged_inside_a_page_is_quarantined_and_rescored(ray_local, tmp_path, capsys):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    _local_images(corpus, 6)
    argv = [
        "score",
        str(corpus),
        "--out",
        str(out),
        "--scorer",
        "brightness",
        "--rows-per-file",
        "2",
    ]
    assert main(argv) == 0
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 3
    _flip_inside_a_page(parts[0])
    capsys.readouterr()
    rc = main(
        [
            "filter",
            str(out),
            "--where",
            "brightness_score >= 0",
            "--out",
            str(tmp_path / "f.parquet"),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 0 and len(err) == 1 and err[0].startswith("vqpipe: warning: damaged part")
    assert len(read_quality_table(str(out))) == 4  # the two readable parts, and a warning
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if "damaged part" in line]
    assert len(err) == 1 and parts[0].name in err[0] and "_quarantine" in err[0]
    assert json.loads(captured.out)["parts_quarantined"] == 1
    table = read_quality_table(str(out))
    assert len(table) == 6 and table["uri"].is_unique and table["error"].isna().all()
    assert not list(out.glob("**/*.damaged.parquet"))


def test_limited_runs_over_the_resume_anti_join_never_overwrite_each_other(
    ray_local, tmp_path, monkeypatch
):
    """--limit cuts a listing fragment; the anti-join of the next run cuts the same fragment
    elsewhere: each run's rows become a whole part of their own, and the table grows to every
    file exactly once."""
    from vqpipe.pipeline import planning

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    (corpus / "sub").mkdir(parents=True)
    for i in range(12):
        (corpus / "sub" / f"{i:02d}.png").write_bytes(image_bytes(i, "PNG"))
    monkeypatch.setattr(planning, "DRIVER_RESUME_MAX_PARTS", 0)  # always the distributed anti-join
    argv = ["score", str(corpus), "--out", str(out), "--scorer", "brightness"]
    sizes = []
    for limit in (["--limit", "5"], ["--limit", "4"], []):
        assert main([*argv, *limit]) == 0
        table = read_quality_table(str(out))
        assert table["uri"].is_unique
        sizes.append(len(table))
        assert not list(out.glob("_piece*"))  # every piece merged into a part
    assert sizes == [5, 9, 12]


# ---------------------------------------------------------------------------- readers
def _every_reader(out, tmp_path) -> dict[str, list[str]]:
    """The table's URIs as each reader users have reads the folder at this moment (DuckDB and
    Polars by globs, which descend into every subfolder; HF datasets by data_files globs;
    pandas, pyarrow.dataset and Ray Data given the folder)."""
    import duckdb
    import pandas as pd
    import polars as pl
    import pyarrow.dataset as pads
    import ray
    from datasets import load_dataset

    found = {}
    for glob in ("*.parquet", "**/*.parquet"):
        sql = f"select uri from read_parquet('{out}/{glob}')"
        found[f"duckdb {glob}"] = [r[0] for r in duckdb.sql(sql).fetchall()]
        found[f"polars {glob}"] = pl.scan_parquet(f"{out}/{glob}").collect()["uri"].to_list()
        hf = load_dataset(
            "parquet", data_files=f"{out}/{glob}", split="train", cache_dir=str(tmp_path / "hf")
        )
        found[f"datasets {glob}"] = hf["uri"]
    found["pandas"] = pd.read_parquet(out)["uri"].tolist()
    found["pyarrow.dataset"] = pads.dataset(out, format="parquet").to_table()["uri"].to_pylist()
    found["ray.data"] = [r["uri"] for r in ray.data.read_parquet(str(out)).iter_rows()]
    return {reader: sorted(uris) for reader, uris in found.items()}


@pytest.mark.slow
def test_every_reader_sees_exactly_the_table_at_every_moment(ray_local, tmp_path):
    import os
    import signal

    from tests.job_process import job_output, start_job, wait_for

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    _local_images(corpus, 8)
    expected = sorted(str(corpus / f"{i}.png") for i in range(8))
    argv = ["score", str(corpus), "--out", str(out), "--rows-per-file", "2"]
    assert main([*argv, "--scorer", "brightness"]) == 0
    first = sorted(out.glob("part-*.parquet"))[0]
    first.write_bytes(first.read_bytes()[:100])  # damaged: quarantined by the next run
    assert main([*argv, "--scorer", "brightness"]) == 0
    assert list((out / "_quarantine").iterdir())
    assert all(uris == expected for uris in _every_reader(out, tmp_path).values())

    # a --no-resume run paused half-way: staged parts and pieces on disk, the old table read
    slow = [*argv, "--scorer", "brightness:size=8,latency_s=0.5,batch_size=1", "--no-resume"]
    job = start_job(tmp_path, slow)
    wait_for(lambda: len(list((out / "_next").glob("*.staged"))) >= 1, job)
    os.killpg(job.pid, signal.SIGSTOP)
    try:
        seen = _every_reader(out, tmp_path)
    finally:
        os.killpg(job.pid, signal.SIGCONT)
    assert {r: u for r, u in seen.items() if u != expected} == {}
    assert job.wait(timeout=240) == 0, job_output(job)[-2000:]
    assert all(uris == expected for uris in _every_reader(out, tmp_path).values())
    options = json.loads((out / "_job.json").read_text())["signature"]["scorers"][0]["options"]
    assert options == {"size": 8, "latency_s": 0.5}


# ---------------------------------------------------------------------------- settings
def test_a_resume_with_other_frame_settings_is_refused_naming_the_option(
    ray_local, tmp_path, capsys
):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    corpus.mkdir()
    (corpus / "a.png").write_bytes(image_bytes(1, "PNG"))
    argv = ["score", str(corpus), "--out", str(out), "--scorer", "brightness"]
    assert main([*argv, "--max-frames", "4"]) == 0
    capsys.readouterr()
    for other, option in (
        (["--max-frames", "32"], "--max-frames"),
        (["--video-fps", "2"], "--video-fps"),
    ):
        assert main([*argv, "--max-frames", "4", *other]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert (
            len(err) == 1
            and err[0].startswith(f"vqpipe: error: {option} ")
            and "--no-resume" in err[0]
        )
    assert main([*argv, "--max-frames", "4"]) == 0  # the same settings resume
    assert main([*argv, "--max-frames", "32", "--no-resume"]) == 0
    assert len(read_quality_table(str(out))) == 1


# ---------------------------------------------------------------------------- one schema
def _one_schema(out) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schemas = {pq.read_schema(p).remove_metadata() for p in out.glob("part-*.parquet")}
    assert len(schemas) == 1, schemas
    schema = schemas.pop()  # our own columns keep their types through every pass
    assert schema.field("brightness_score").type == pa.float32()
    assert pa.types.is_list(schema.field("brightness_probs").type)
    assert schema.field("width").type == pa.int64()


@pytest.mark.slow
def test_night_two_with_other_column_types_keeps_one_schema_every_reader_reads(ray_local, tmp_path):
    """Night 1: a manifest with text captions and integer n. Night 2 adds a shard whose caption
    is all null and whose n holds text, and a WebDataset-style absent column: the table is
    one schema (n widened to string, caption string) that every reader reads whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, manifests, out = tmp_path / "img", tmp_path / "manifests", tmp_path / "out"
    manifests.mkdir()
    uris = _local_images(images, 8)
    night1 = {"uri": uris[:4], "caption": [f"c{i}" for i in range(4)], "n": list(range(4))}
    pq.write_table(pa.table(night1), manifests / "night1.parquet")
    argv = ["score", str(manifests), "--out", str(out), "--scorer", "brightness"]
    assert main([*argv, "--rows-per-file", "2"]) == 0
    assert pq.read_schema(next(out.glob("part-*.parquet"))).field("n").type == pa.int64()
    night2 = {
        "uri": uris[4:],
        "caption": pa.nulls(4, pa.null()),
        "n": ["four", "5", "six", None],
        "extra": pa.nulls(4, pa.null()),
    }
    pq.write_table(pa.table(night2), manifests / "night2.parquet")
    assert main([*argv, "--rows-per-file", "2"]) == 0
    _one_schema(out)
    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert schema.field("n").type == pa.string() and schema.field("caption").type == pa.string()
    assert schema.field("extra").type == pa.string()  # nothing knew a type: string, not float
    table = read_quality_table(str(out)).set_index("uri")
    assert table.loc[uris[1], "n"] == "1" and table.loc[uris[4], "n"] == "four"
    assert all(found == sorted(uris) for found in _every_reader(out, tmp_path).values())


def test_webdataset_shards_with_other_members_write_one_schema(ray_local, tmp_path):
    from tests.lake_data import write_shard

    lake, out = tmp_path / "lake", tmp_path / "out"
    write_shard(
        lake / "00000.tar", [(f"a{i}", {"jpg": image_bytes(i), "txt": b"t"}) for i in range(3)]
    )
    write_shard(
        lake / "00001.tar", [(f"b{i}", {"jpg": image_bytes(i), "json": b"{}"}) for i in range(3)]
    )
    write_shard(lake / "00002.tar", [(f"c{i}", {"jpg": image_bytes(i)}) for i in range(3)])
    assert main(["score", str(lake), "--out", str(out), "--scorer", "brightness"]) == 0
    _one_schema(out)
    table = read_quality_table(str(out))
    assert len(table) == 9 and table["error"].isna().all()
    import pyarrow.parquet as pq

    schema = pq.read_schema(next(out.glob("part-*.parquet")))
    assert not any(str(schema.field(n).type) in ("double", "null") for n in ("txt", "json"))


# ---------------------------------------------------------------------------- content versions
def test_a_shard_rewritten_in_place_is_read_again_and_replaced(ray_local, tmp_path, capsys):
    from tests.lake_data import write_shard

    lake, out = tmp_path / "lake", tmp_path / "out"
    write_shard(lake / "a.tar", [(f"a{i}", {"jpg": image_bytes(i)}) for i in range(4)])
    write_shard(lake / "b.tar", [(f"b{i}", {"jpg": image_bytes(10 + i)}) for i in range(4)])
    argv = ["score", str(lake), "--out", str(out), "--scorer", "brightness", "--rows-per-file", "2"]
    assert main(argv) == 0
    before = read_quality_table(str(out)).set_index("key")
    time.sleep(0.01)
    write_shard(lake / "b.tar", [(f"n{i}", {"jpg": image_bytes(20 + i)}) for i in range(3)])
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["shards_changed"] == 1 and summary["scored_rows"] == 3
    table = read_quality_table(str(out)).set_index("key")
    assert sorted(table.index) == [f"a{i}" for i in range(4)] + [f"n{i}" for i in range(3)]
    assert table.loc["a0", "brightness_score"] == before.loc["a0", "brightness_score"]
    assert table["content_version"].nunique() == 2  # one per shard
    assert main([*argv, "--json"]) == 0  # nothing changed: nothing read
    assert json.loads(capsys.readouterr().out)["scored_rows"] == 0
    assert len(read_quality_table(str(out))) == 7


def test_a_manifest_regenerated_in_place_is_read_again(ray_local, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    images, out = tmp_path / "img", tmp_path / "out"
    uris = _local_images(images, 20)
    manifest = tmp_path / "nightly.parquet"
    pq.write_table(pa.table({"uri": uris[:10]}), manifest)
    argv = ["score", str(manifest), "--out", str(out), "--scorer", "brightness"]
    assert main(argv) == 0
    time.sleep(0.01)
    pq.write_table(pa.table({"uri": uris}), manifest)  # night 2: the same name, 20 rows
    assert main(argv) == 0
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == sorted(uris) and table["uri"].is_unique


@pytest.mark.parametrize("anti_join", [False, True])
def test_a_file_replaced_in_place_is_scored_again_and_its_row_replaced(
    ray_local, tmp_path, monkeypatch, capsys, anti_join
):
    from vqpipe.pipeline import planning

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    (corpus / "sub").mkdir(parents=True)
    for i in range(4):
        (corpus / "sub" / f"{i}.png").write_bytes(image_bytes(i, "PNG"))
    if anti_join:
        monkeypatch.setattr(planning, "DRIVER_RESUME_MAX_PARTS", 0)
    argv = ["score", str(corpus), "--out", str(out), "--scorer", "brightness"]
    assert main(argv) == 0
    before = read_quality_table(str(out)).set_index("uri")
    replaced = corpus / "sub" / "2.png"
    replaced.write_bytes(image_bytes(99, "PNG", size=(40, 30)))
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["scored_rows"] == 1 and summary["rows_replaced"] == 1
    table = read_quality_table(str(out)).set_index("uri")
    assert len(table) == 4 and table.index.is_unique
    key = str(replaced)
    assert table.loc[key, "content_version"] != before.loc[key, "content_version"]
    assert table.loc[key, "width"] == 40
    others = [u for u in table.index if u != key]
    assert (table.loc[others, "brightness_score"] == before.loc[others, "brightness_score"]).all()


def test_an_object_replaced_in_place_on_s3_is_scored_again(ray_local, s3_server, s3_bucket, capsys):
    bucket, fs = s3_bucket
    source, out = _s3_images(fs, bucket, 3), f"s3://{bucket}/out"
    argv = ["score", source, "--out", out, "--scorer", "brightness"]
    argv += ["--storage-options", json.dumps(s3_server)]
    assert main(argv) == 0
    fs.pipe(f"{bucket}/img/001.png", image_bytes(77, "PNG", size=(50, 20)))
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["scored_rows"] == 1
    table = read_quality_table(out, s3_server).set_index("uri")
    assert len(table) == 3 and table.index.is_unique
    assert table.loc[f"s3://{bucket}/img/001.png", "width"] == 50
    assert table["content_version"].str.startswith("etag:").all()


def test_night_two_on_s3_keeps_one_schema(ray_local, s3_server, s3_bucket):
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    bucket, fs = s3_bucket
    source = _s3_images(fs, bucket, 6)
    uris = [f"{source}{i:03d}.png" for i in range(6)]
    with fs.open(f"{bucket}/manifests/night1.parquet", "wb") as fh:
        pq.write_table(pa.table({"uri": uris[:3], "n": [1, 2, 3]}), fh)
    out = f"s3://{bucket}/out"
    argv = ["score", f"s3://{bucket}/manifests/", "--out", out, "--scorer", "brightness"]
    argv += ["--storage-options", json.dumps(s3_server)]
    assert main(argv) == 0
    with fs.open(f"{bucket}/manifests/night2.parquet", "wb") as fh:
        pq.write_table(pa.table({"uri": uris[3:], "n": ["x", None, "7"]}), fh)
    assert main(argv) == 0
    parts = QualityTable(out, s3_server).parts()
    schemas = set()
    for part in parts:
        with fs.open(part, "rb") as fh:
            schemas.add(pq.read_schema(fh).remove_metadata())
    assert len(parts) == 2 and len(schemas) == 1 and schemas.pop().field("n").type == pa.string()
    data = pads.dataset(f"{bucket}/out", filesystem=fs, format="parquet").to_table()
    assert sorted(data["uri"].to_pylist()) == sorted(uris)


def test_a_lock_whose_pid_now_belongs_to_another_process_is_taken_over(tmp_path):
    """A killed job's PID reused by an unrelated process: its start time differs."""
    import os

    from vqpipe.storage.lock import _host

    out = tmp_path / "out"
    (out / "_lock").mkdir(parents=True)
    record = {"owner": "gone", **_host(), "pid": os.getpid(), "started": "1", "heartbeat": 0}
    (out / "_lock" / "000000000003.json").write_text(json.dumps(record))
    with QualityTable(str(out)).lock() as lock:
        assert lock.generation == 4


def test_many_parts_to_conform_are_rewritten_by_ray_tasks(ray_local, tmp_path, monkeypatch, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vqpipe.storage import schema_pass as schemas_module

    images, manifests, out = tmp_path / "img", tmp_path / "manifests", tmp_path / "out"
    manifests.mkdir()
    uris = _local_images(images, 6)
    pq.write_table(pa.table({"uri": uris[:4], "n": [1, 2, 3, 4]}), manifests / "a.parquet")
    argv = ["score", str(manifests), "--out", str(out), "--scorer", "brightness"]
    assert main([*argv, "--rows-per-file", "1"]) == 0
    pq.write_table(pa.table({"uri": uris[4:], "n": ["x", "y"]}), manifests / "b.parquet")
    monkeypatch.setattr(schemas_module, "DRIVER_MAX_REWRITES", 1)
    capsys.readouterr()
    assert main([*argv, "--rows-per-file", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parts_conformed"] == 4  # night 1's parts
    _one_schema(out)
    assert pq.read_schema(next(out.glob("part-*.parquet"))).field("n").type == pa.string()
    assert len(read_quality_table(str(out))) == 6


def test_a_supersede_pass_cut_short_is_finished_by_the_next_run(ray_local, tmp_path, monkeypatch):
    from vqpipe.pipeline import runner

    corpus, out = tmp_path / "corpus", tmp_path / "out"
    _local_images(corpus / "sub", 3)
    argv = ["score", str(corpus), "--out", str(out), "--scorer", "brightness"]
    assert main(argv) == 0
    (corpus / "sub" / "1.png").write_bytes(image_bytes(55, "PNG", size=(44, 33)))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(runner, "drop_superseded", killed)
        assert main(argv) != 0
    assert (out / "_supersede_pending").exists()
    assert len(read_quality_table(str(out))) == 4  # the new row in, the earlier one still there
    assert main(argv) == 0  # nothing left to score: the pass owed runs alone
    table = read_quality_table(str(out)).set_index("uri")
    assert len(table) == 3 and table.loc[str(corpus / "sub" / "1.png"), "width"] == 44
    assert not (out / "_supersede_pending").exists()
