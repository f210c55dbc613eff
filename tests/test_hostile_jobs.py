"""Hostile jobs through `vqpipe score` as a user types it (issue 18, the listing and job half):
odd names are inputs, an unreadable directory is an error row, manifests that drift never crash
a job, store outages leave transient rows a rerun fills, damaged parts are quarantined, and
Ctrl-C / SIGTERM end in one line."""

import contextlib
import json
import os
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.job_process import job_output, start_job, wait_for
from tests.lake_data import image_bytes
from vqpipe.cli import main
from vqpipe.storage import read_quality_table

BRIGHTNESS = ["--scorer", "brightness"]


def _images(root: Path, names: list[str]) -> list[str]:
    for i, name in enumerate(names):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(image_bytes(i, "PNG"))
    return [str(root / n) for n in names]


# -------------------------------------------------------------------------------------------
# listings: nothing silently skipped


def test_underscore_and_dot_names_are_inputs_and_exclude_drops_them(ray_local, tmp_path):
    corpus = tmp_path / "corpus"
    names = ["_DSC0001.JPG", ".hidden.png", "_raw/a.png", ".cache/b.png", "plain.png"]
    uris = _images(corpus, names)
    (corpus / "_DSC0001.JPG").write_bytes(image_bytes(0, "JPEG"))
    out = tmp_path / "out"
    assert main(["score", str(corpus), "--out", str(out), *BRIGHTNESS]) == 0
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == sorted(uris) and table["error"].isna().all()
    # the job's own files inside the input are never inputs, whatever their names
    inner = corpus / "quality"
    assert main(["score", str(corpus), "--out", str(inner), *BRIGHTNESS]) == 0
    assert main(["score", str(corpus), "--out", str(inner), *BRIGHTNESS]) == 0
    assert sorted(read_quality_table(str(inner))["uri"]) == sorted(uris)
    # --exclude (repeatable): a glob without "/" matches any one name in the path
    picked = tmp_path / "picked"
    args = ["score", str(corpus), "--out", str(picked), *BRIGHTNESS, "--exclude", ".*"]
    assert main([*args, "--exclude", "_DSC*", "--exclude", "quality"]) == 0
    assert sorted(read_quality_table(str(picked))["uri"]) == [
        str(corpus / "_raw/a.png"),
        str(corpus / "plain.png"),
    ]


@pytest.mark.skipif(
    shutil.which("capsh") is None and os.geteuid() == 0,
    reason="as root, an unreadable directory needs capsh to drop CAP_DAC_OVERRIDE",
)
def test_an_unreadable_directory_is_an_error_row_not_a_gap(tmp_path):
    corpus = tmp_path / "corpus"
    readable = _images(corpus, ["a.png", "b.png", "open/c.png", "open/d.png"])
    _images(corpus, ["locked/e.png", "open/deep/f.png", "open/deep/g.png"])
    out = tmp_path / "out"
    prefix = ()
    if os.geteuid() == 0:  # root reads everything unless the capabilities are dropped
        prefix = ("capsh", "--drop=cap_dac_override,cap_dac_read_search", "--", "-c")
        prefix = (*prefix, '"$0" "$@"')
    (corpus / "locked").chmod(0)
    (corpus / "open" / "deep").chmod(0)
    try:
        job = start_job(tmp_path, ["score", str(corpus), "--out", str(out), *BRIGHTNESS], prefix)
        assert job.wait(timeout=300) == 0, job_output(job)[-3000:]
    finally:
        (corpus / "locked").chmod(0o755)
        (corpus / "open" / "deep").chmod(0o755)
    table = read_quality_table(str(out))
    assert table["uri"].is_unique
    scored = table[table["error"].isna()]
    assert sorted(scored["uri"]) == sorted(readable)
    errors = table.dropna(subset=["error"]).set_index("uri")["error"]
    assert sorted(errors.index) == [str(corpus / "locked"), str(corpus / "open" / "deep")]
    assert errors.str.startswith("read: cannot list directory").all()
    assert errors.str.contains("PermissionError").all()


# -------------------------------------------------------------------------------------------
# store outages: transient errors are scored again by a rerun


class FlakyProxy:
    """A TCP proxy in front of the loopback S3 server that goes down once — refusing new
    connections and cutting the open ones, as an unreachable endpoint does — for ``down_s``
    seconds, as soon as it has forwarded ``after`` requests that contain ``marker``."""

    def __init__(self, target: int, marker: bytes, after: int, down_s: float) -> None:
        import socket
        import threading

        self.target, self.marker, self.after, self.down_s = target, marker, after, down_s
        self.seen, self.down_until, self.closed = 0, 0.0, False
        self.lock, self.open = threading.Lock(), []
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        self.port = probe.getsockname()[1]
        probe.close()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _listen(self):
        import socket

        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.05)
        return sock

    def _serve(self) -> None:
        import socket
        import threading

        sock = self._listen()
        while not self.closed:
            if time.time() < self.down_until:
                if sock is not None:
                    sock.close()  # connection refused
                    sock = None
                time.sleep(0.05)
                continue
            sock = sock or self._listen()
            try:
                client, _ = sock.accept()
            except OSError:  # a timeout, or the socket closed
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.open += [client, upstream]
            for src, dst, count in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pipe, args=(src, dst, count), daemon=True).start()
        if sock is not None:
            sock.close()

    def _pipe(self, src, dst, count: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data or time.time() < self.down_until:
                    break
                if count and self.marker in data:
                    with self.lock:
                        self.seen += data.count(self.marker)
                        if self.seen > self.after and not self.down_until:
                            self.down_until = time.time() + self.down_s
                            for sock in self.open:  # cut every open connection
                                with contextlib.suppress(OSError):
                                    sock.shutdown(2)
                            break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()

    def close(self) -> None:
        self.closed = True
        self.thread.join(timeout=5)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["files", "manifest"])
def test_a_store_outage_leaves_transient_rows_that_a_rerun_fills(
    ray_local, s3_server, s3_bucket, tmp_path, layout
):
    bucket, s3 = s3_bucket
    n = 12
    for i in range(n):
        s3.pipe(f"{bucket}/corpus/{i:02d}.png", image_bytes(i, "PNG"))
    s3.invalidate_cache()
    port = int(s3_server["client_kwargs"]["endpoint_url"].rsplit(":", 1)[1])
    proxy = FlakyProxy(port, f"GET /{bucket}/corpus/".encode(), after=3, down_s=10.0)
    options = {
        **s3_server,
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{proxy.port}"},
        # one attempt per call in botocore: vqpipe's own backoff (about 1.4 s) is what is left
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2},
    }
    uris = [f"s3://{bucket}/corpus/{i:02d}.png" for i in range(n)]
    if layout == "manifest":  # sharded: a local manifest of S3 objects
        source = tmp_path / "manifest.jsonl"
        source.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
        source = str(source)
    else:
        source = f"s3://{bucket}/corpus/"
    out = tmp_path / "out"
    argv = ["score", source, "--out", str(out), *BRIGHTNESS, "--rows-per-file", "2"]
    argv += ["--storage-options", json.dumps(options)]
    try:
        assert main(argv) == 0
        first = read_quality_table(str(out))
        assert sorted(first["uri"]) == uris  # every input once, scored or transient
        transient = first[first["error_kind"] == "transient"]
        assert len(transient) >= 1 and proxy.down_until
        assert transient["error"].str.startswith("read:").all()
        assert first["error_kind"].isin(["transient"]).sum() == first["error"].notna().sum()
        while time.time() < proxy.down_until + 0.5:  # the outage ends
            time.sleep(0.2)
        assert main(argv) == 0
    finally:
        proxy.close()
    final = read_quality_table(str(out))
    assert sorted(final["uri"]) == uris and final["error"].isna().all()
    assert final["error_kind"].isna().all()
    kept = first[first["error"].isna()].set_index("uri")["brightness_score"]
    assert final.set_index("uri").loc[kept.index, "brightness_score"].tolist() == kept.tolist()
    summary = json.loads((out / "_job.json").read_text())["summary"]
    if layout == "files":
        assert summary["rows_retried"] == len(transient)
    else:
        assert summary["shards_retried"] == 1


# -------------------------------------------------------------------------------------------
# damaged parts


@pytest.mark.parametrize("layout", ["files", "manifest"])
def test_damaged_parts_are_named_skipped_quarantined_and_rescored(
    ray_local, tmp_path, capsys, layout
):
    uris = _images(tmp_path / "corpus", [f"{i}.png" for i in range(6)])
    if layout == "manifest":
        source = tmp_path / "manifest.jsonl"
        source.write_text("".join(json.dumps({"uri": u}) + "\n" for u in uris))
    else:
        source = tmp_path / "corpus"
    out = tmp_path / "out"
    argv = ["score", str(source), "--out", str(out), *BRIGHTNESS, "--rows-per-file", "2"]
    assert main(argv) == 0
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 3
    cut, empty = parts[0], parts[1]
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size // 2])
    empty.write_bytes(b"")
    capsys.readouterr()
    table = read_quality_table(str(out))  # the readable part only, and a warning per damaged
    assert len(table) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vqpipe: warning: damaged part") for line in err)
    assert str(cut) in err[0] and str(empty) in err[1]
    assert main(["filter", str(out), "--out", str(tmp_path / "keep.parquet")]) == 0
    captured = capsys.readouterr()
    assert "kept 2 of 2 rows" in captured.out
    assert str(cut) in captured.err and str(empty) in captured.err
    assert main(argv) == 0  # the rerun moves them aside and scores their rows again
    err = [line for line in capsys.readouterr().err.splitlines() if "damaged part" in line]
    assert len(err) == 2 and all("_quarantine" in line for line in err)
    damaged = [f"{p.name}.damaged" for p in (cut, empty)]  # no reader globs them as parts
    assert sorted(p.name for p in (out / "_quarantine").iterdir()) == damaged
    final = read_quality_table(str(out))
    assert sorted(final["uri"]) == sorted(uris) and final["error"].isna().all()
    assert capsys.readouterr().err == ""


# -------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_an_interrupted_job_says_so_in_one_line_and_resumes(ray_local, tmp_path, signum, code):
    uris = _images(tmp_path / "corpus", [f"{i:02d}.png" for i in range(12)])
    out = tmp_path / "out"
    argv = ["score", str(tmp_path / "corpus"), "--out", str(out), "--rows-per-file", "2"]
    slow = [*argv, "--scorer", "brightness:latency_s=1.0,batch_size=1"]
    job = start_job(tmp_path, slow)
    wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 1, job)
    if signum == signal.SIGINT:  # Ctrl-C in a terminal: the whole foreground group
        os.killpg(job.pid, signum)
    else:  # a scheduler stopping the driver
        os.kill(job.pid, signum)
    assert job.wait(timeout=120) == code, job_output(job)[-3000:]
    text = job_output(job)
    assert "Traceback" not in text and "KeyboardInterrupt" not in text
    assert "(raylet)" not in text  # Ray's lines about the workers the signal killed: its log
    lines = [line for line in text.splitlines() if "interrupted" in line]
    parts = len(list(out.glob("part-*.parquet")))
    assert lines == [
        f"vqpipe: interrupted: {parts} parts committed; rerun the same command to resume"
    ]
    assert 1 <= parts < 6
    deadline = time.time() + 60  # Ray's processes (same process group) are gone too
    while time.time() < deadline:
        try:
            os.killpg(job.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("processes of the interrupted job are still running")
    assert main([*argv, "--scorer", "brightness:latency_s=1.0,batch_size=1"]) == 0
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == sorted(uris) and table["error"].isna().all()


# -------------------------------------------------------------------------------------------
# manifests that drift


def test_manifests_that_drift_never_crash_a_job(ray_local, tmp_path):
    uris = _images(tmp_path / "img", [f"{i}.png" for i in range(6)])
    rows = [
        # a column mixing ints and strings; a text column null in the first parts
        {"uri": u, "x": i if i < 3 else f"s{i}", "cap": None if i < 4 else f"text {i}"}
        for i, u in enumerate(uris)
    ]
    rows += [{"uri": uris[0], "x": 99}, {"uri": uris[1]}]  # listed again: scored once
    rows += [{"uri": None}, {"uri": ""}, {"uri": 5}]  # no usable URI: error rows
    # carried names that are the table's own are kept under input_
    rows += [{"uri": uris[2], "error": "mine", "width": "w", "frames": 9}]
    rows[5].update({"brightness_score": 2.5, "error_kind": "custom"})
    lines = [json.dumps(r) for r in rows]
    lines.insert(7, "{not json")  # a broken line: an error row, the others are read
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    argv = ["score", str(manifest), "--out", str(out), *BRIGHTNESS, "--rows-per-file", "2"]
    assert main(argv) == 0
    table = read_quality_table(str(out))
    assert table["uri"].is_unique
    scored = table[table["error"].isna()].set_index("uri")
    assert sorted(scored.index) == sorted(uris)
    assert scored.loc[uris[0], "x"] == "0" and scored.loc[uris[4], "x"] == "s4"
    assert scored["cap"].isna().sum() == 4 and scored.loc[uris[5], "cap"] == "text 5"
    assert scored.loc[uris[5], "input_brightness_score"] == 2.5
    assert scored.loc[uris[5], "input_error_kind"] == "custom"
    assert scored.loc[uris[5], "brightness_score"] != 2.5
    errors = table[table["error"].notna()]
    assert len(errors) == 4 and errors["error"].str.contains("has no uri").all()
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert summary["duplicates_dropped"] == 3
    kept = table.set_index("uri").loc[uris[2]]  # the first listing of uris[2] wins
    assert kept["frames"] == 1 and pd.isna(kept["error"])
    import pyarrow.parquet as pq

    for part in out.glob("part-*.parquet"):  # one type per column in every part
        schema = pq.read_schema(part)
        assert schema.field("x").type == "string" and schema.field("cap").type == "string"


def test_a_uri_in_several_manifest_shards_is_scored_once(ray_local, tmp_path):
    uris = _images(tmp_path / "img", [f"{i}.png" for i in range(6)])
    shards = tmp_path / "manifests"
    shards.mkdir()
    import pyarrow as pa
    import pyarrow.parquet as pq

    def shard(name: str, picked: list[int], text: bool = False) -> None:
        n = [f"n{i}" for i in picked] if text else picked
        pq.write_table(pa.table({"uri": [uris[i] for i in picked], "n": n}), shards / name)

    shard("a.parquet", [0, 1, 2])
    shard("b.parquet", [2, 3, 1, 4], text=True)  # 1 and 2 are a's; n: strings here, ints in a
    out = tmp_path / "out"
    argv = ["score", str(shards), "--out", str(out), *BRIGHTNESS, "--rows-per-file", "2"]
    assert main(argv) == 0
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == sorted(uris[:5]) and table["error"].isna().all()
    assert table.set_index("uri").loc[uris[2], "shard"].endswith("a.parquet")  # the first wins
    assert json.loads((out / "_job.json").read_text())["summary"]["duplicates_dropped"] == 2
    for part in out.glob("part-*.parquet"):  # one type for n, fixed before any block was read
        assert pq.read_schema(part).field("n").type == pa.string()
    assert sorted(table["n"]) == ["0", "1", "2", "n3", "n4"]
    shard("0.parquet", [3, 5, 5])  # a new shard, sorted first: 3 is already scored
    assert main(argv) == 0
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == sorted(uris) and table["uri"].is_unique
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert summary["duplicates_dropped"] == 2 and summary["scored_rows"] == 1  # 5; 3 was there


def test_the_summary_counts_the_rows_the_table_holds_after_the_repeats_pass(ray_local, tmp_path):
    """Repeats across shards are scored, then removed: the summary's scored rows and errors
    are the rows left, a missing file listed twice is one error row, and a rerun that only
    adds a shard counts only what it added."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    uris = _images(tmp_path / "img", [f"{i}.png" for i in range(4)])
    gone = str(tmp_path / "img" / "missing.png")
    shards = tmp_path / "manifests"
    shards.mkdir()
    for name, listed in {"a": [uris[0], gone, uris[1]], "b": [gone, uris[1], uris[2]]}.items():
        pq.write_table(pa.table({"uri": listed}), shards / f"{name}.parquet")
    out = tmp_path / "out"
    argv = ["score", str(shards), "--out", str(out), *BRIGHTNESS]
    assert main(argv) == 0
    table = read_quality_table(str(out))
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert len(table) == 4 and table["error"].notna().sum() == 1
    assert (summary["scored_rows"], summary["errors"], summary["duplicates_dropped"]) == (4, 1, 2)
    pq.write_table(pa.table({"uri": [uris[3], uris[0]]}), shards / "c.parquet")
    assert main(argv) == 0  # c: one new row, one repeat of a row already written
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert len(read_quality_table(str(out))) == 5
    assert (summary["scored_rows"], summary["errors"], summary["duplicates_dropped"]) == (1, 0, 1)


def _overlapping_shards(tmp_path: Path) -> tuple[list[str], Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    uris = _images(tmp_path / "img", [f"{i}.png" for i in range(6)])
    shards = tmp_path / "manifests"
    shards.mkdir()
    for name, picked in {"a": [0, 1, 2], "b": [2, 3, 1, 4], "c": [4, 0], "d": [5]}.items():
        pq.write_table(pa.table({"uri": [uris[i] for i in picked]}), shards / f"{name}.parquet")
    return uris, shards


def test_repeats_across_shards_are_removed_by_ray_data_on_a_large_output(
    ray_local, tmp_path, monkeypatch
):
    import vqpipe.storage.repeats as dedupe

    monkeypatch.setattr(dedupe, "DRIVER_MAX_ROWS", 0)  # what a large output takes
    uris, shards = _overlapping_shards(tmp_path)
    out = tmp_path / "out"
    argv = ["score", str(shards), "--out", str(out), *BRIGHTNESS]
    assert main(argv) == 0
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == sorted(uris) and table["error"].isna().all()
    assert table.set_index("uri").loc[uris[4], "shard"].endswith("b.parquet")  # the first wins
    record = json.loads((out / "_job.json").read_text())
    assert record["summary"]["duplicates_dropped"] == 4
    assert not (out / "_dedupe_pending").exists()
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 4  # c's part is left empty: c stays committed
    assert (record["summary"]["scored_rows"], record["summary"]["errors"]) == (6, 0)
    assert main(argv) == 0
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert summary["shards_already_done"] == 4 and summary["scored_rows"] == 0
    assert sorted(read_quality_table(str(out))["uri"]) == sorted(uris)


def test_a_repeats_pass_cut_short_is_finished_by_the_next_run(ray_local, tmp_path, monkeypatch):
    import vqpipe.pipeline.runner as runner

    uris, shards = _overlapping_shards(tmp_path)
    out = tmp_path / "out"
    argv = ["score", str(shards), "--out", str(out), *BRIGHTNESS]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(runner, "drop_repeats", killed)
        assert main(argv) != 0
    assert (out / "_dedupe_pending").exists()
    assert len(read_quality_table(str(out))) == 10  # every listing written, repeats included
    assert main(argv) == 0  # nothing left to score: the pass owed runs alone
    table = read_quality_table(str(out))
    assert sorted(table["uri"]) == sorted(uris)
    summary = json.loads((out / "_job.json").read_text())["summary"]
    assert summary["scored_rows"] == 0 and summary["duplicates_dropped"] == 4
    assert not (out / "_dedupe_pending").exists()


def test_store_errors_are_told_transient_or_permanent():
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    from vqpipe.io.fs import is_transient
    from vqpipe.io.reading import ReadError, ReadTimeoutError

    wrapped = OSError("read failed")
    wrapped.__cause__ = EndpointConnectionError(endpoint_url="http://127.0.0.1:1")
    for exc in (
        EndpointConnectionError(endpoint_url="http://127.0.0.1:1"),
        ConnectionClosedError(endpoint_url="http://127.0.0.1:1"),
        ConnectionResetError(104, "Connection reset by peer"),
        ReadTimeoutError("read timed out after 5 s"),
        RuntimeError("503 Service Unavailable"),
        wrapped,
    ):
        assert is_transient(exc), exc
    for exc in (
        FileNotFoundError("gone"),
        PermissionError("denied"),
        ReadError("not a regular file (fifo)"),
        ValueError("cannot identify image"),
    ):
        assert not is_transient(exc), exc
