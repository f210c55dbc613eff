"""Progress everywhere: the job's total and ETA from the plan, a rate that a burst of commits
does not inflate, the score summary as a table (``--json``: the machine form), and the shared
progress line of ``pairs`` / ``fuse`` / ``calibrate --apply`` / ``bench``."""

import io
import json

import pytest

from vqpipe.cli import main
from vqpipe.console import Progress, RateMeter, format_progress, progress_text, summary_table
from vqpipe.pipeline.runner import job_progress


def _steady(meter: RateMeter, start: float, stop: int, per_s: int = 100) -> None:
    for second in range(int(start), stop + 1):
        meter.add(per_s, float(second))


def test_rate_is_not_inflated_by_a_burst_of_commits():
    meter = RateMeter(warmup_s=5.0)
    meter.add(100, 0.0)  # the first commit: made during start-up, starts the clock
    _steady(meter, 1, 10)  # 10 s at 100 items/s
    assert meter.rate(10.0) == pytest.approx(100, rel=0.05)
    meter.add(1000, 10.01)  # parts that finished together commit at once
    after = meter.rate(10.01)
    # 2,000 items in 10 s is an honest 200/s at most; never 1,000 / 0.01 s = 100,000/s
    assert after is not None and 100 <= after <= 2.5 * 100
    _steady(meter, 11, 130)  # the burst fades out as the steady rate goes on
    assert meter.rate(130.0) == pytest.approx(100, rel=0.1)


def test_no_rate_during_warm_up_nor_from_two_commits_at_once():
    meter = RateMeter(warmup_s=5.0)
    assert meter.rate(0.0) is None
    meter.add(500, 30.0)  # first part after 30 s of start-up
    meter.add(500, 30.01)
    assert meter.rate(30.01) is None  # not 500 / 0.01
    assert meter.rate(36.0) == pytest.approx(500 / 6, rel=0.1)


def test_job_progress_with_a_meter_gives_the_eta_from_its_rate():
    meter = RateMeter(warmup_s=5.0)
    written = [{"rows": 100, "errors": 0}]
    meter.add(100, 40.0)
    for second in range(41, 51):
        written.append({"rows": 10, "errors": 0})
        meter.add(10, float(second))
    written.append({"rows": 300, "errors": 1})  # a burst
    meter.add(300, 50.01)
    p = job_progress(written, 2000, elapsed=50.01, meter=meter)
    assert p["scoring_items_per_s"] < 50  # 10/s plus the burst spread, not 300 / 0.01
    assert p["eta_s"] == pytest.approx((2000 - p["done"]) / p["scoring_items_per_s"], rel=0.01)
    assert "ETA" in format_progress(p) and "/2000" in format_progress(p)


def test_counting_up_without_a_total():
    p = job_progress([{"rows": 7, "errors": 1}], None, elapsed=3.0, meter=RateMeter())
    assert format_progress(p) == "scored 7 so far, 1 errors"
    assert progress_text("pairs", 12, None, None, "groups") == "pairs: 12 groups so far"
    line = progress_text("bench", 3, 18, 0.5, "scripts")
    assert line == "bench: 3/18 scripts, 0.5 scripts/s, ETA 30 s"


def test_progress_line_on_a_non_tty_is_throttled_and_ends_with_done():
    log = io.StringIO()
    with Progress("fuse", total=10, stream=log, every_s=3600, tty=False) as shown:
        for _ in range(10):
            shown.advance(1)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()  # the first update, the end
    assert lines[0].startswith("vqpipe: fuse: 1/10 items")
    assert lines[1].startswith("vqpipe: fuse: 10/10 items") and " done [" in lines[1]

    tty = io.StringIO()
    with Progress("pairs", stream=tty, tty=True) as shown:
        shown.step("grouping")
    assert "\r\033[Kvqpipe: pairs: grouping" in tty.getvalue() and tty.getvalue().endswith("\n")

    quiet = io.StringIO()
    with Progress("pairs", stream=quiet, quiet=True).heartbeat() as shown:
        shown.advance(3)
    assert quiet.getvalue() == ""


def test_summary_table_names_the_output():
    summary = {
        "input_format": "files",
        "scored_rows": 1200,
        "errors": 3,
        "already_done": 40,
        "duplicates_dropped": 2,
        "seconds": 95.0,
        "items_per_s": 12.63,
    }
    text = summary_table(summary, "s3://lake/quality/")
    rows = dict(line.split("  ", 1) for line in text.splitlines())
    assert rows["rows written"].strip() == "1,200" and rows["errors"].strip() == "3"
    assert "40 inputs already scored" in rows["skipped/resumed"]
    assert "2 dropped" in rows["duplicates"] and rows["elapsed"].strip() == "2 min"
    assert rows["output"].strip() == "s3://lake/quality/"


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    from vqpipe.data import make_image_dataset

    root = tmp_path_factory.mktemp("progress")
    make_image_dataset(root / "corpus", n_contents=1, seed=3, size=(32, 24))
    return root / "corpus" / "images"  # one level of 26 images: the plan counts them


@pytest.mark.slow
def test_score_shows_the_total_and_the_summary_table(ray_local, images, tmp_path, capsys):
    out = tmp_path / "q"
    argv = ["score", str(images), "--out", str(out), "--scorer", "brightness"]
    argv += ["--rows-per-file", "4", "--progress-every", "0"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    status = [line for line in captured.err.splitlines() if "scored" in line]
    assert status and all("/26, " in line for line in status), captured.err
    assert any("ETA" in line for line in status), captured.err  # the first part of several
    assert status[-1].startswith("vqpipe: scored 26/26, 0 errors")
    rows = dict(line.split("  ", 1) for line in captured.out.splitlines())
    assert rows["rows written"].strip() == "26" and rows["output"].strip() == str(out)

    again = tmp_path / "q2"
    assert main([*argv[:3], str(again), *argv[4:], "--limit", "5", "--json"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out)
    assert summary["scored_rows"] == 5
    assert any("scored 5/5, 0 errors" in line for line in captured.err.splitlines())


@pytest.mark.slow
def test_pairs_prints_progress_lines(ray_local, tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "quality"
    table.mkdir()
    rows = {"uri": ["a", "b", "c"], "prompt": ["p", "p", "p"], "gamma_score": [0.9, 0.5, 0.1]}
    pq.write_table(pa.table(rows), table / "part-0.parquet")
    argv = ["pairs", str(table), "--group", "prompt", "--score", "gamma_score"]
    assert main([*argv, "--out", str(tmp_path / "pairs")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("vqpipe: pairs: starting Ray"), err
    assert err[-1].startswith("vqpipe: pairs: 1 pairs written — done ["), err


def test_written_rows_are_counted_from_the_parts_that_landed(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vqpipe.rewards.table import WrittenRows
    from vqpipe.storage import QualityTable

    staging = QualityTable(str(tmp_path / "t"))
    (tmp_path / "t").mkdir()
    log = io.StringIO()
    with (
        Progress("fuse", stream=log, every_s=0, tty=False) as shown,
        WrittenRows(staging, total=10, unit="rows written", every_s=3600) as written,
    ):
        pq.write_table(pa.table({"x": list(range(4))}), tmp_path / "t" / "part-a.staged")
        (tmp_path / "t" / "part-b.staged").write_bytes(b"PAR1 half-written")
        written.poll()
        assert shown.done == 4  # the half-written part has no footer yet
        (tmp_path / "t" / "part-b.staged").unlink()
        pq.write_table(pa.table({"x": list(range(6))}), tmp_path / "t" / "part-b.staged")
    lines = log.getvalue().splitlines()
    assert any("fuse: 4/10 rows written" in line for line in lines), lines
    assert lines[-1].startswith("vqpipe: fuse: 10/10 rows written") and "done" in lines[-1]


@pytest.mark.slow
def test_calibrate_apply_and_fuse_count_the_rows_they_write(ray_local, tmp_path, capsys):
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    mos = rng.uniform(1, 5, 60)
    uris = [f"img/{k:03d}.jpg" for k in range(60)]
    table = tmp_path / "quality"
    table.mkdir()
    scores = {"a_score": mos / 5 + rng.normal(0, 0.05, 60), "b_score": np.log(mos)}
    pq.write_table(pa.table({"uri": uris, **scores}), table / "part-0.parquet")
    pd.DataFrame({"uri": uris, "mos": mos}).to_csv(tmp_path / "mos.csv", index=False)
    calib = tmp_path / "calib.json"
    assert (
        main(["calibrate", str(table), "--mos", str(tmp_path / "mos.csv"), "--out", str(calib)])
        == 0
    )
    capsys.readouterr()
    for argv, what in (
        (
            ["calibrate", "--apply", str(calib), str(table), "--out", str(tmp_path / "c")],
            "calibrate",
        ),
        (["fuse", str(table), "--calibration", str(calib), "--out", str(tmp_path / "f")], "fuse"),
    ):
        assert main(argv) == 0
        err = capsys.readouterr().err.splitlines()
        assert err[0].startswith(f"vqpipe: {what}: starting Ray"), err
        assert err[-1].startswith(f"vqpipe: {what}: 60/60 rows written — done ["), err


def test_the_plan_counts_parquet_rows_and_one_level_folders(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vqpipe.pipeline.config import JobConfig
    from vqpipe.pipeline.planning import plan_work

    lake = tmp_path / "lake"
    lake.mkdir()
    for name, n in (("a", 3), ("b", 4)):
        pq.write_table(pa.table({"image": [b"x"] * n}), lake / f"{name}.parquet")
    config = JobConfig(input=str(lake), output=str(tmp_path / "out"))
    assert plan_work(config, "parquet", "sig", []).total == 7
    config.limit = 5
    assert plan_work(config, "parquet", "sig", []).total == 5

    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(3):
        (flat / f"{i}.jpg").write_bytes(b"\xff\xd8")
    (flat / "notes.txt").write_text("an input too: an error row")
    config = JobConfig(input=str(flat), output=str(tmp_path / "out2"))
    assert plan_work(config, "files", "sig", []).total == 4
    (flat / "sub").mkdir()  # a subfolder is listed by a Ray task: not counted in advance
    assert plan_work(config, "files", "sig", []).total is None
