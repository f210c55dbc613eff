"""The quality table as nightly curation jobs use it, through the CLI, on a local folder and on
the loopback S3 server: ``--no-resume`` replaces a table only once the new one is complete."""

import json

import pytest

from tests.lake_data import image_bytes
from vqpipe.cli import main
from vqpipe.pipeline.job import existing_parts, read_quality_table


def _s3_images(fs, bucket: str, n: int, prefix: str = "img") -> str:
    for i in range(n):
        fs.pipe(f"{bucket}/{prefix}/{i:03d}.png", image_bytes(i, "PNG"))
    return f"s3://{bucket}/{prefix}/"


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
    staged = existing_parts(out, s3_server)[0].replace("/out/", "/out/_next/")
    fs.copy(existing_parts(out, s3_server)[0], staged)
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
    assert all(p.startswith(f"{bucket}/out/part-") for p in existing_parts(out, s3_server))
    assert sorted(new["brightness_score"]) != sorted(old["brightness_score"])
    capsys.readouterr()
    # a resume of the replaced table has nothing left to do
    assert main([*base, "--scorer", "brightness:size=8"]) == 0
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
