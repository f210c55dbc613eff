"""Parquet with media bytes: HF Image structs and img2dataset's jpg column → one record per row."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.lake_data import image_bytes, mp4_bytes
from vqpipe.io.media_parquet import (
    PARQUET_TYPES,
    find_media_column,
    iter_parquet_media_batches,
)

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def iter_parquet_media(file_uri, storage_options=None, **kwargs):
    """The reader's batches one record (dict) at a time (the tests read records)."""
    for table in iter_parquet_media_batches(file_uri, storage_options, **kwargs):
        yield from table.to_pylist()


def hf_table() -> pa.Table:
    """HF ``datasets`` layout: image struct (some null, some garbage), label, text."""
    images = [
        {"bytes": image_bytes(0), "path": None},
        {"bytes": image_bytes(1, "PNG"), "path": "b.png"},
        None,
        {"bytes": None, "path": "missing.jpg"},
        {"bytes": b"garbage garbage", "path": "c.jpg"},
        {"bytes": b"", "path": None},
        {"bytes": mp4_bytes(), "path": None},
    ]
    return pa.table(
        {
            "image": pa.array(images, IMAGE_TYPE),
            "label": pa.array(range(len(images)), pa.int64()),
            "text": [f"t{i}" for i in range(len(images))],
        }
    )


@pytest.fixture(scope="module")
def hf_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "train-00000-of-00001.parquet"
    pq.write_table(hf_table(), path, row_group_size=3)
    return path


@pytest.fixture(scope="module")
def img2dataset_file(tmp_path_factory):
    """img2dataset's parquet output: ``key``, ``jpg`` bytes, ``url``, ``caption`` …"""
    path = tmp_path_factory.mktemp("i2d") / "00000.parquet"
    table = pa.table(
        {
            "key": ["000000000", "000000001", "000000002"],
            "jpg": pa.array([image_bytes(i) for i in range(3)], pa.binary()),
            "url": [f"https://example.com/{i}.jpg" for i in range(3)],
            "caption": ["a", "b", "c"],
            "error": pa.array([None, None, None], pa.string()),  # collides with ours
        }
    )
    pq.write_table(table, path)
    return path


def test_find_media_column():
    hf = hf_table().schema
    assert find_media_column(hf) == "image"
    i2d = pa.schema([("key", pa.string()), ("jpg", pa.binary()), ("url", pa.string())])
    assert find_media_column(i2d) == "jpg"
    assert find_media_column(pa.schema([("MP4", pa.large_binary())])) == "MP4"
    blob = pa.schema([("content", pa.binary()), ("id", pa.int64())])
    with pytest.raises(ValueError, match=r"no media column.*binary columns: content"):
        find_media_column(blob)
    assert find_media_column(blob, "content") == "content"
    with pytest.raises(ValueError, match=r"several media columns \(image, png\)"):
        find_media_column(pa.schema([("image", IMAGE_TYPE), ("png", pa.binary())]))
    with pytest.raises(ValueError, match="no media column 'nope'"):
        find_media_column(hf, "nope")
    with pytest.raises(ValueError, match="'label' is int64"):
        find_media_column(hf, "label")


def test_hf_image_struct_rows(hf_file):
    records = list(iter_parquet_media(str(hf_file), batch_rows=2))
    source = hf_table().to_pylist()
    assert len(records) == len(source)
    assert [r["key"] for r in records] == [str(i) for i in range(len(source))]
    assert [r["uri"] for r in records] == [f"{hf_file}#{i}" for i in range(len(source))]
    assert {r["shard"] for r in records} == {str(hf_file)}
    assert [r["label"] for r in records] == list(range(len(source)))  # carried
    assert [r["text"] for r in records] == [s["text"] for s in source]
    assert records[0]["data"] == source[0]["image"]["bytes"] and records[0]["error"] is None
    assert records[0]["media_type"] == "image" and records[0]["media_column"] == "image"
    assert records[1]["media_path"] == "b.png"
    assert records[2]["error"] == "read: null media bytes" and records[2]["data"] is None
    assert records[3]["error"] == "read: null media bytes (path 'missing.jpg')"
    # garbage bytes go on (path says jpg); decoding fails later, in the decode stage
    assert records[4]["data"] == b"garbage garbage" and records[4]["media_type"] == "image"
    assert records[4]["error"] is None
    assert records[5]["error"] == "read: empty media bytes"
    assert records[6]["media_type"] == "video" and records[6]["error"] is None
    assert records[6]["bytes"] == len(source[6]["image"]["bytes"])


def test_img2dataset_rows_keyed_by_key_column(img2dataset_file):
    records = list(iter_parquet_media(str(img2dataset_file)))
    assert [r["key"] for r in records] == ["000000000", "000000001", "000000002"]
    assert records[1]["uri"] == f"{img2dataset_file}#000000001"
    assert records[1]["url"] == "https://example.com/1.jpg" and records[1]["caption"] == "b"
    assert "input_error" in records[1] and records[1]["error"] is None
    assert "input_key" not in records[1]  # the key column became `key`
    by_url = list(iter_parquet_media(str(img2dataset_file), key_column="url"))
    assert by_url[0]["uri"] == f"{img2dataset_file}#https://example.com/0.jpg"
    assert by_url[0]["input_key"] == "000000000"


def test_batches_typed_and_bounded_by_batch_rows(hf_file):
    tables = list(iter_parquet_media_batches(str(hf_file), batch_rows=2))
    assert [t.num_rows for t in tables] == [2, 2, 2, 1]
    for table in tables:
        for name, dtype in PARQUET_TYPES.items():
            assert table.schema.field(name).type == dtype


def test_limits_unknown_type_and_null_or_repeated_keys(tmp_path):
    path = tmp_path / "x.parquet"
    table = pa.table(
        {
            "id": pa.array([1, 1, None, 4], pa.int64()),
            "bytes": pa.array([image_bytes(0), image_bytes(1), image_bytes(2), b"\x00" * 40]),
        }
    )
    pq.write_table(table, path)
    records = list(iter_parquet_media(str(path), key_column="id", max_bytes=10_000))
    assert records[0]["key"] == "1" and records[0]["error"] is None
    assert records[1]["key"] == "1@1" and records[1]["error"] == "read: key '1' repeats at row 1"
    assert records[2]["key"] == "@2" and records[2]["error"] == "read: null key in column 'id'"
    assert records[3]["error"].startswith("read: unknown media type (bytes start with 0x0000")
    assert len({r["uri"] for r in records}) == 4
    big = next(iter_parquet_media(str(path), key_column="id", max_bytes=10))
    assert big["data"] is None and big["error"].endswith("over the limit of 10")


def test_unreadable_and_damaged_files_give_one_error_record(tmp_path, hf_file):
    (missing,) = iter_parquet_media(str(tmp_path / "absent.parquet"))
    assert missing["uri"] == f"{tmp_path / 'absent.parquet'}#@0"
    assert missing["error"].startswith("read: parquet file unreadable at row 0: FileNotFoundError")
    no_media = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), no_media)
    (record,) = iter_parquet_media(str(no_media))
    assert "no media column" in record["error"]
    # a row group whose bytes are overwritten: the rows before it, then one error record
    raw = bytearray(hf_file.read_bytes())
    meta = pq.ParquetFile(hf_file).metadata
    second = meta.row_group(1).column(0).data_page_offset
    raw[second : second + 64] = b"\xaa" * 64
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(bytes(raw))
    records = list(iter_parquet_media(str(broken), batch_rows=3))  # one batch per row group
    errors = [r for r in records if r["key"].startswith("@")]
    print(f"\ndamaged parquet: {len(records)} records, error: {errors[0]['error'][:120]}")
    assert len(errors) == 1 and records[-1] is errors[0]
    assert [r["key"] for r in records] == ["0", "1", "2", "@3"]
    assert records[0]["data"] == image_bytes(0)
    assert errors[0]["error"].startswith("read: parquet file unreadable at row 3: ")
    assert "label" in errors[0]  # carried columns present (null) in the error record too


def test_memory_stays_bounded(tmp_path):
    """A 24 MB file in row groups of 16 rows is read holding about one row group."""
    blob = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    data = [b"\xff\xd8\xff" + blob[i:] + blob[:i] for i in range(120)]
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table({"jpg": pa.array(data, pa.binary())}), path, row_group_size=16)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        rows = sum(t.num_rows for t in iter_parquet_media_batches(str(path), batch_rows=8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nparquet: {size / 1e6:.1f} MB file, {rows} rows, peak {peak / 1e6:.1f} MB traced")
    assert rows == 120
    assert peak < size / 4


def test_on_s3(s3_server, s3_bucket, hf_file, img2dataset_file):
    bucket, fs = s3_bucket
    fs.put(str(hf_file), f"{bucket}/hf/train.parquet")
    fs.put(str(img2dataset_file), f"{bucket}/i2d/00000.parquet")
    uri = f"s3://{bucket}/hf/train.parquet"
    records = list(iter_parquet_media(uri, s3_server, batch_rows=4))
    assert [r["uri"] for r in records] == [f"{uri}#{i}" for i in range(7)]
    assert records[0]["data"] == image_bytes(0) and records[2]["error"] == "read: null media bytes"
    i2d = list(iter_parquet_media(f"s3://{bucket}/i2d/00000.parquet", s3_server))
    assert [r["key"] for r in i2d] == ["000000000", "000000001", "000000002"]
