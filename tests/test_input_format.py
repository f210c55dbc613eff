"""--input-format auto: each input kind told apart from names, footers and first bytes."""

from __future__ import annotations

import json
import tracemalloc

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.lake_data import image_bytes, mixed_samples, write_shard
from vqpipe.io.input_format import detect_format, input_shards

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def _hf(path):
    images = pa.array([{"bytes": image_bytes(0), "path": "a.jpg"}], IMAGE_TYPE)
    pq.write_table(pa.table({"image": images, "label": [1]}), path)
    return path


def _img2dataset_parquet(path):
    table = pa.table({"key": ["0"], "jpg": pa.array([image_bytes(0)]), "url": ["https://x/0"]})
    pq.write_table(table, path)
    return path


@pytest.fixture
def layouts(tmp_path):
    """One folder per input kind, laid out as the tools that write them do."""
    wds = tmp_path / "wds"
    for i in range(3):
        write_shard(wds / f"{i:05d}.tar", mixed_samples()[:2])
        _img2dataset_parquet(wds / f"{i:05d}.parquet")  # img2dataset writes these beside
        (wds / f"{i:05d}_stats.json").write_text("{}")
    hf = tmp_path / "hf"
    hf.mkdir()
    for i in range(2):
        _hf(hf / f"train-{i:05d}-of-00002.parquet")
    manifest = tmp_path / "manifest"
    (manifest / "date=2026-01-01").mkdir(parents=True)
    pq.write_table(
        pa.table({"url": ["s3://b/x.jpg"], "caption": ["c"]}),
        manifest / "date=2026-01-01" / "part-0.parquet",
    )
    files = tmp_path / "files"
    files.mkdir()
    for i in range(3):
        (files / f"{i:09d}.jpg").write_bytes(image_bytes(i))
        (files / f"{i:09d}.json").write_text("{}")  # img2dataset "files" layout
    return tmp_path


def test_detect_each_local_layout(layouts):
    wds = layouts / "wds"
    assert detect_format(str(wds)) == "webdataset"
    assert detect_format(str(wds / "00001.tar")) == "webdataset"
    assert detect_format(str(wds / "{00000..00002}.tar")) == "webdataset"
    assert detect_format(str(wds / "*.tar")) == "webdataset"
    assert detect_format(str(layouts / "hf")) == "parquet"
    assert detect_format(str(layouts / "hf" / "train-00000-of-00002.parquet")) == "parquet"
    assert detect_format(str(wds / "00000.parquet")) == "parquet"  # jpg bytes, no uri column
    assert detect_format(str(wds / "00000.parquet"), uri_column="url") == "manifest"
    assert detect_format(str(layouts / "manifest"), uri_column="url") == "manifest"
    assert detect_format(str(layouts / "files")) == "files"
    assert detect_format(str(layouts / "files" / "000000001.jpg")) == "files"
    empty = layouts / "empty"
    empty.mkdir()
    assert detect_format(str(empty)) == "files"
    assert detect_format([str(layouts / "hf"), str(wds)]) == "parquet"  # the first decides


def test_detect_manifest_tables(tmp_path):
    (tmp_path / "m.csv").write_text("uri,label\n/a.jpg,1\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"uri": "/a.jpg"}) + "\n")
    (tmp_path / "arr.json").write_text(json.dumps([{"uri": "/a.jpg"}, {"uri": "/b.jpg"}]))
    (tmp_path / "url.csv").write_text("url,caption\nhttps://x/1.jpg,c\n")
    assert detect_format(str(tmp_path / "m.csv")) == "manifest"
    assert detect_format(str(tmp_path / "m.jsonl")) == "manifest"
    assert detect_format(str(tmp_path / "arr.json")) == "manifest"
    assert detect_format(str(tmp_path / "url.csv"), uri_column="url") == "manifest"
    with pytest.raises(ValueError, match=r"no 'uri' column.*--uri-column"):
        detect_format(str(tmp_path / "url.csv"))
    both = tmp_path / "both.parquet"
    pq.write_table(pa.table({"uri": ["/a"], "jpg": pa.array([image_bytes(0)])}), both)
    assert detect_format(str(both)) == "manifest"
    assert detect_format(str(both), media_column="jpg") == "parquet"
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1]}), plain)
    with pytest.raises(ValueError, match=r"neither a manifest .* nor Parquet with media bytes"):
        detect_format(str(plain))
    with pytest.raises(FileNotFoundError):
        detect_format(str(tmp_path / "absent.tar"))


def test_detection_reads_heads_only(tmp_path):
    """A Parquet file with damaged data pages, and a 20 MB JSONL: footer and first bytes only."""
    path = _hf(tmp_path / "hf.parquet")
    raw = bytearray(path.read_bytes())
    start = pq.ParquetFile(path).metadata.row_group(0).column(0).data_page_offset
    raw[start : start + 200] = b"\xaa" * 200
    path.write_bytes(bytes(raw))
    with pytest.raises(OSError):
        pq.read_table(path)
    assert detect_format(str(path)) == "parquet"
    big = tmp_path / "big.jsonl"
    line = json.dumps({"uri": "/x" * 50}) + "\n"
    big.write_text(line * (20_000_000 // len(line)))
    tracemalloc.start()
    try:
        assert detect_format(str(big)) == "manifest"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\ndetect on a {big.stat().st_size / 1e6:.0f} MB JSONL: peak {peak / 1e6:.2f} MB")
    assert peak < 2_000_000


def test_input_shards_takes_the_formats_names(layouts):
    wds = layouts / "wds"
    assert input_shards(str(wds), "auto") == [str(wds / f"{i:05d}.tar") for i in range(3)]
    assert input_shards(str(wds), "parquet") == [str(wds / f"{i:05d}.parquet") for i in range(3)]
    assert len(input_shards(str(layouts / "hf"), "auto")) == 2
    assert input_shards(str(layouts / "manifest"), "auto", uri_column="url") == [
        str(layouts / "manifest" / "date=2026-01-01" / "part-0.parquet")
    ]
    with pytest.raises(ValueError, match="input format 'tar'"):
        input_shards(str(wds), "tar")


def test_detect_on_s3(s3_server, s3_bucket, layouts):
    bucket, fs = s3_bucket
    fs.put(str(layouts / "wds"), f"{bucket}/wds", recursive=True)
    fs.put(str(layouts / "hf"), f"{bucket}/hf", recursive=True)
    fs.put(str(layouts / "manifest"), f"{bucket}/manifest", recursive=True)
    fs.put(str(layouts / "files"), f"{bucket}/files", recursive=True)
    root = f"s3://{bucket}"
    assert detect_format(f"{root}/wds", s3_server) == "webdataset"
    assert detect_format(f"{root}/wds/{{00000..00002}}.tar", s3_server) == "webdataset"
    assert detect_format(f"{root}/hf/", s3_server) == "parquet"
    assert detect_format(f"{root}/hf/*.parquet", s3_server) == "parquet"
    assert detect_format(f"{root}/manifest", s3_server, uri_column="url") == "manifest"
    assert detect_format(f"{root}/files", s3_server) == "files"
    assert input_shards(f"{root}/wds", "auto", s3_server) == [
        f"{root}/wds/{i:05d}.tar" for i in range(3)
    ]
