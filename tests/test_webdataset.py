"""WebDataset shard reader: one record per sample, sidecars, damage as one error record."""

from __future__ import annotations

import json
import tarfile
import tracemalloc

import numpy as np
import pyarrow as pa
import pytest

from tests.lake_data import caption_sample, image_bytes, mixed_samples, mp4_bytes, write_shard
from vqpipe.io.webdataset import (
    WEBDATASET_TYPES,
    iter_webdataset,
    iter_webdataset_batches,
    split_key,
)


@pytest.fixture(scope="module")
def samples():
    return mixed_samples()


@pytest.fixture(scope="module")
def shard(tmp_path_factory, samples):
    return write_shard(tmp_path_factory.mktemp("wds") / "shard-00000.tar", samples)


def _offsets(path) -> dict[str, int]:
    with tarfile.open(path) as tar:
        return {m.name: m.offset for m in tar.getmembers()}


def test_split_key_follows_webdataset():
    assert split_key("000001.jpg") == ("000001", "jpg")
    assert split_key("a/b/000001.seg.png") == ("a/b/000001", "seg.png")
    assert split_key("dir.v2/x.txt") == ("dir.v2/x", "txt")
    assert split_key("README") == (None, None)


def test_one_record_per_sample_with_sidecars(shard, samples):
    records = list(iter_webdataset(str(shard)))
    assert [r["key"] for r in records] == [key for key, _ in samples]
    by_key = {r["key"]: r for r in records}
    for key, members in samples:
        record = by_key[key]
        assert record["uri"] == f"{shard}#{key}"
        assert record["shard"] == str(shard)
        assert record["members"] == list(members)
        media = [e for e in members if e in ("jpg", "png", "mp4")]
        if media:
            assert record["error"] is None
            assert record["media_member"] == media[0]
            assert record["data"] == members[media[0]]
            assert record["bytes"] == len(members[media[0]])
        if "txt" in members:
            assert record["txt"] == members["txt"].decode()
        if "json" in members:
            assert record["json"] == members["json"].decode()
    assert [by_key[k]["media_type"] for k in ("000000", "000001", "000002")] == [
        "image",
        "image",
        "video",
    ]
    assert by_key["000002"]["cls"] == 2
    # garbage bytes are passed on: decoding fails later, in the decode stage
    assert by_key["000003"]["data"] == b"this is not a jpeg at all"
    assert by_key["000003"]["error"] is None
    no_media = by_key["000004"]
    assert no_media["data"] is None and no_media["media_type"] is None
    assert no_media["error"] == "read: sample has no media member (members: txt, json)"


def test_cls_that_does_not_parse_is_none(tmp_path):
    path = write_shard(tmp_path / "s.tar", [("a", {"jpg": image_bytes(0), "cls": b"cat"})])
    (record,) = iter_webdataset(str(path))
    assert record["cls"] is None and record["error"] is None


def test_flatten_json_opt_in(shard):
    plain = next(iter_webdataset(str(shard)))
    assert not any(k.startswith("json_") for k in plain)
    flat = next(iter_webdataset(str(shard), flatten_json=True))
    assert flat["json_caption"] == "picture 0"
    assert flat["json_width"] == 32
    assert flat["json_nested_source"] == "lake" and flat["json_nested_n"] == 0
    chosen = list(iter_webdataset(str(shard), flatten_json=["caption", "absent"], json_prefix="m_"))
    assert chosen[0]["m_caption"] == "picture 0" and chosen[0]["m_absent"] is None
    assert "m_width" not in chosen[0]
    assert chosen[4]["m_caption"] is None  # "{}": the fields are still there, null


def test_media_member_choice_and_limit(tmp_path):
    video = mp4_bytes()
    path = write_shard(tmp_path / "s.tar", [("a", {"jpg": image_bytes(0), "mp4": video})])
    (first,) = iter_webdataset(str(path))
    assert first["media_member"] == "jpg"
    (chosen,) = iter_webdataset(str(path), media_member=".MP4")
    assert chosen["media_member"] == "mp4" and chosen["data"] == video
    (limited,) = iter_webdataset(str(path), media_member="mp4", max_bytes=len(video) - 1)
    assert limited["data"] is None and limited["bytes"] == len(video)
    assert limited["media_type"] == "video"
    assert limited[
        "error"
    ] == f"read: member a.mp4 has {len(video)} bytes, over the limit of " + str(len(video) - 1)
    (missing,) = iter_webdataset(str(path), media_member="png")
    assert missing["error"].startswith("read: sample has no 'png' member")
    with pytest.raises(ValueError, match="media_member 'npy'"):
        next(iter_webdataset(str(path), media_member="npy"))


def test_repeated_key_keeps_uris_unique(tmp_path):
    samples = [("a", {"jpg": image_bytes(0)}), ("b", {"jpg": image_bytes(1)})]
    samples.append(("a", {"jpg": image_bytes(2), "txt": b"late"}))
    records = list(iter_webdataset(str(write_shard(tmp_path / "s.tar", samples))))
    assert len(records) == 3 and len({r["uri"] for r in records}) == 3
    assert records[2]["error"].startswith("read: key 'a' appears again at byte offset")
    assert records[2]["members"] == ["jpg", "txt"]  # both late members: one record
    assert records[2]["key"].startswith("a@")
    assert records[2]["uri"] == f"{tmp_path / 's.tar'}#{records[2]['key']}"


def _damage(records):
    damaged = [r for r in records if r["key"].startswith("@")]
    assert len(damaged) == 1, records
    return damaged[0]


@pytest.mark.parametrize("where", ["in-media-data", "at-header", "in-header", "bad-header"])
def test_damaged_shard_keeps_earlier_samples(tmp_path, shard, samples, where):
    raw = shard.read_bytes()
    header = _offsets(shard)["000005.jpg"]
    if where == "in-media-data":
        broken = raw[: header + 512 + 100]
    elif where == "at-header":
        broken = raw[:header]
    elif where == "in-header":
        broken = raw[: header + 100]
    else:
        garbage = np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes()
        broken = raw[:header] + garbage + raw[header + 512 :]
    path = tmp_path / "broken.tar"
    path.write_bytes(broken)
    records = list(iter_webdataset(str(path)))
    damage = _damage(records)
    assert damage["uri"] == f"{path}#@{header}" and damage["shard"] == str(path)
    assert damage["error"].startswith(f"read: tar damaged at byte offset {header} ")
    assert "5 sample(s) read before it" in damage["error"]
    good = [r for r in records if r is not damage]
    assert [r["key"] for r in good] == [key for key, _ in samples[:5]]
    assert good[0]["data"] == samples[0][1]["jpg"]
    assert good[4]["txt"] == "no media here"  # the sample before the damage is complete
    assert records[-1] is damage
    if where == "in-media-data":
        assert "in member 000005.jpg" in damage["error"] and "'000005' cut" in damage["error"]
    elif where == "at-header":
        assert "without an end-of-archive marker" in damage["error"]
    elif where == "in-header":
        assert "truncated header" in damage["error"]
    else:
        assert "invalid header" in damage["error"]


def test_cut_sidecar_cuts_its_sample(tmp_path, shard, samples):
    """Damage inside a sample's later member: that sample is named, not scored half-read."""
    txt = _offsets(shard)["000002.txt"]
    path = tmp_path / "cut.tar"
    path.write_bytes(shard.read_bytes()[: txt + 512 + 3])
    records = list(iter_webdataset(str(path)))
    assert [r["key"] for r in records] == ["000000", "000001", f"@{txt}"]
    assert "in member 000002.txt" in records[-1]["error"]
    assert "'000002' cut" in records[-1]["error"]


def test_damage_in_an_unkeyed_member_keeps_the_pending_sample(tmp_path):
    from tests.lake_data import add_member

    path = tmp_path / "s.tar"
    with tarfile.open(path, "w") as tar:
        add_member(tar, "000000.jpg", image_bytes(0))
        add_member(tar, "README", b"r" * 5000)  # no dot: not part of any sample
    header = _offsets(path)["README"]
    path.write_bytes(path.read_bytes()[: header + 512 + 1000])
    records = list(iter_webdataset(str(path)))
    assert [r["key"] for r in records] == ["000000", f"@{header}"]
    assert records[0]["error"] is None and "in member README" in records[1]["error"]


def test_unreadable_shard_is_one_error_record(tmp_path):
    records = list(iter_webdataset(str(tmp_path / "absent.tar")))
    assert len(records) == 1
    assert records[0]["uri"] == f"{tmp_path / 'absent.tar'}#@0"
    assert records[0]["error"].startswith("read: tar damaged at byte offset 0 (cannot open")
    assert "FileNotFoundError" in records[0]["error"]
    (tmp_path / "empty.tar").write_bytes(b"")
    (empty,) = iter_webdataset(str(tmp_path / "empty.tar"))
    assert "empty file" in empty["error"]
    (tmp_path / "junk.tar").write_bytes(b"x" * 3000)
    (junk,) = iter_webdataset(str(tmp_path / "junk.tar"))
    assert junk["key"] == "@0" and junk["error"].startswith("read: tar damaged at byte offset 0")


def test_gzip_shard_and_its_truncation(tmp_path, samples):
    path = write_shard(tmp_path / "s.tar.gz", samples, mode="w:gz")
    records = list(iter_webdataset(str(path)))
    assert [r["key"] for r in records] == [key for key, _ in samples]
    raw = path.read_bytes()
    (tmp_path / "cut.tar.gz").write_bytes(raw[: len(raw) * 2 // 3])
    cut = list(iter_webdataset(str(tmp_path / "cut.tar.gz")))
    damage = _damage(cut)
    assert damage is cut[-1] and damage["error"].startswith("read: tar damaged at byte offset")
    assert [r["key"] for r in cut[:-1]] == [key for key, _ in samples[: len(cut) - 1]]


def test_local_names_with_double_colons_are_plain_paths(tmp_path):
    folder = tmp_path / "lake::v1"
    path = write_shard(folder / "00000.tar", [("a", {"png": image_bytes(0, "PNG")})])
    (record,) = iter_webdataset(str(path))
    assert record["error"] is None and record["uri"] == f"{path}#a"
    (via_file_url,) = iter_webdataset(f"file://{path}")
    assert via_file_url["error"] is None and via_file_url["uri"] == f"file://{path}#a"


def test_batches_are_typed_tables(shard, samples):
    tables = list(iter_webdataset_batches(str(shard), batch_rows=3))
    assert [t.num_rows for t in tables] == [3, 3, 1]
    for table in tables:
        for name, dtype in WEBDATASET_TYPES.items():
            assert table.schema.field(name).type == dtype
    keys = pa.concat_tables(tables).column("key").to_pylist()
    assert keys == [key for key, _ in samples]
    by_bytes = list(iter_webdataset_batches(str(shard), batch_rows=100, batch_bytes=1))
    # every media byte closes a batch; the sample without media rides with the next one
    assert [t.num_rows for t in by_bytes] == [1, 1, 1, 1, 2, 1]
    flat = list(iter_webdataset_batches(str(shard), flatten_json=True, batch_rows=100))
    assert flat[0].column("json_caption").to_pylist()[0] == "picture 0"


def test_memory_stays_bounded(tmp_path):
    """Reading a 24 MB shard holds about one sample, not the tar (measured with tracemalloc)."""
    blob = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()
    samples = [
        caption_sample(i, {"jpg": b"\xff\xd8\xff" + blob[i:] + blob[:i]}) for i in range(120)
    ]
    path = write_shard(tmp_path / "big.tar", samples)
    size = path.stat().st_size
    tracemalloc.start()
    try:
        rows = 0
        for table in iter_webdataset_batches(str(path), batch_rows=8):
            rows += table.num_rows
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\nwebdataset: {size / 1e6:.1f} MB shard, {rows} rows, peak {peak / 1e6:.1f} MB traced")
    assert rows == 120
    assert peak < size / 4


def test_on_s3(s3_server, s3_bucket, shard, samples):
    bucket, fs = s3_bucket
    fs.put(str(shard), f"{bucket}/wds/shard-00000.tar")
    header = _offsets(shard)["000005.jpg"]
    fs.pipe(f"{bucket}/wds/cut.tar", shard.read_bytes()[: header + 700])
    uri = f"s3://{bucket}/wds/shard-00000.tar"
    records = list(iter_webdataset(uri, s3_server))
    assert [r["uri"] for r in records] == [f"{uri}#{key}" for key, _ in samples]
    assert records[2]["data"] == samples[2][1]["mp4"]
    assert json.loads(records[0]["json"])["caption"] == "picture 0"
    cut = list(iter_webdataset(f"s3://{bucket}/wds/cut.tar", s3_server))
    assert len(cut) == 6 and cut[-1]["uri"] == f"s3://{bucket}/wds/cut.tar#@{header}"
    (denied,) = iter_webdataset(f"s3://{bucket}/wds/absent.tar", s3_server)
    assert denied["key"] == "@0" and "FileNotFoundError" in denied["error"]
