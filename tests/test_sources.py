"""Listing job inputs with the job's own readers: local dirs, fsspec prefixes (a real
S3-compatible server), manifests."""

import pandas as pd
import pyarrow as pa
import pytest

from vqpipe.cli import main
from vqpipe.io.media_types import media_type_from_name, sniff_media_type
from vqpipe.io.readers import ReadOptions, read_tables


def listing(spec, kind="files", storage_options=None, limit=None, **options):
    """The rows a job reads from ``spec`` (one shard: the whole input), sorted by ``uri``."""
    spec = str(spec)
    read = ReadOptions(spec=spec, **{k: tuple(v) for k, v in options.items()})
    tables = list(read_tables(kind, spec, read, storage_options))
    table = pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame({"uri": []})
    table = table.sort_values("uri", kind="stable").reset_index(drop=True)
    return table.head(limit) if limit is not None else table


def _tree(root):
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0jpeg")
    (root / "a" / "clip.MP4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    (root / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (root / "notes.txt").write_text("not media")
    (root / "name with spaces é.webp").write_bytes(b"RIFF\x00\x00\x00\x00WEBPVP8 ")
    (root / ".hidden.jpg").write_bytes(b"x")  # an input: only a job's own files are skipped
    (root / "_job.json").write_text("{}")


def test_local_directory_listing(tmp_path):
    _tree(tmp_path)
    table = listing(tmp_path)
    names = [u.removeprefix(str(tmp_path) + "/") for u in table["uri"]]
    assert names == [
        ".hidden.jpg",
        "a/clip.MP4",
        "a/x.jpg",
        "b.png",
        "name with spaces é.webp",
        "notes.txt",
    ]
    assert dict(zip(names, table["media_type"], strict=True)) == {
        ".hidden.jpg": "image",
        "a/clip.MP4": "video",
        "a/x.jpg": "image",
        "b.png": "image",
        "name with spaces é.webp": "image",
        "notes.txt": "unsupported",  # listed, so the job writes an error row for it
    }
    assert table.loc[table["uri"].str.endswith("b.png"), "bytes"].item() == 8


def test_include_exclude_and_limit(tmp_path):
    _tree(tmp_path)
    assert len(listing(tmp_path, include=["*.jpg", "*.png"])) == 3
    assert len(listing(tmp_path, exclude=["a/*"])) == 4
    assert len(listing(tmp_path, exclude=["a/*", ".*"])) == 3
    assert len(listing(tmp_path, limit=2)) == 2


def test_manifest_carries_columns_and_rejects_duplicates(tmp_path):
    manifest = pd.DataFrame({"uri": ["s3://b/2.png", "s3://b/1.mov"], "caption": ["two", "one"]})
    manifest.to_parquet(tmp_path / "m.parquet")
    table = listing(tmp_path / "m.parquet", "manifest")
    assert table["uri"].tolist() == ["s3://b/1.mov", "s3://b/2.png"]
    assert table["caption"].tolist() == ["one", "two"]
    assert table["media_type"].tolist() == ["video", "image"]
    manifest.to_csv(tmp_path / "m.csv", index=False)
    assert listing(tmp_path / "m.csv", "manifest")["caption"].tolist() == ["one", "two"]
    manifest.to_json(tmp_path / "m.jsonl", orient="records", lines=True)
    assert listing(tmp_path / "m.jsonl", "manifest")["caption"].tolist() == ["one", "two"]
    pd.concat([manifest, manifest]).to_parquet(tmp_path / "d.parquet")
    twice = listing(tmp_path / "d.parquet", "manifest")  # a repeated URI is scored once
    assert twice["uri"].tolist() == ["s3://b/1.mov", "s3://b/2.png"]
    assert twice["_duplicates"].sum() == 2  # and its repeats are counted


def test_manifest_without_uri_column_is_a_user_error(tmp_path, capsys):
    pd.DataFrame({"path": ["x"]}).to_parquet(tmp_path / "bad.parquet")
    assert main(["score", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "q")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vqpipe: error:") and "no 'uri' column" in err
    assert err.count("\n") == 1


def test_missing_input_is_a_user_error(tmp_path, capsys):
    assert main(["score", str(tmp_path / "nope"), "--out", str(tmp_path / "q")]) == 2
    assert "input not found" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()


def test_s3_prefix_on_a_real_s3_server(s3_server, s3_bucket):
    bucket, fs = s3_bucket
    fs.pipe(f"{bucket}/corpus/img/1.jpg", b"\xff\xd8\xff\xe0")
    fs.pipe(f"{bucket}/corpus/img/2.png", b"\x89PNG\r\n\x1a\n")
    fs.pipe(f"{bucket}/corpus/vid/v.mp4", b"\x00\x00\x00\x18ftypisom")
    fs.pipe(f"{bucket}/other/ignored.jpg", b"\xff\xd8\xff")
    table = listing(f"s3://{bucket}/corpus/", storage_options=s3_server)
    assert table["uri"].tolist() == [
        f"s3://{bucket}/corpus/img/1.jpg",
        f"s3://{bucket}/corpus/img/2.png",
        f"s3://{bucket}/corpus/vid/v.mp4",
    ]
    assert table["media_type"].tolist() == ["image", "image", "video"]
    only_jpg = listing(f"s3://{bucket}/corpus", include=["**.jpg"], storage_options=s3_server)
    assert only_jpg["uri"].tolist() == [f"s3://{bucket}/corpus/img/1.jpg"]


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image"),
        (b"\x89PNG\r\n\x1a\n\x00", "image"),
        (b"GIF89a\x01\x00", "image"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image"),
        (b"\x00\x00\x00\x20ftypisom\x00\x00", "video"),
        (b"\x00\x00\x00\x1cftypheic\x00\x00", "image"),
        (b"\x1a\x45\xdf\xa3\x9f", "video"),
        (b"RIFF\x10\x00\x00\x00AVI LIST", "video"),
        (b"hello world!", None),
        (b"", None),
    ],
)
def test_sniff_media_type(head, kind):
    assert sniff_media_type(head) == kind


def test_media_type_from_name():
    assert media_type_from_name("s3://b/x.JPEG") == "image"
    assert media_type_from_name("clip.webm") == "video"
    assert media_type_from_name("x.tar.gz") == "unsupported"
