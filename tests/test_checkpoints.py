"""Checkpoint resolution, fingerprints and safetensors header reading."""

import hashlib

import fsspec
import pytest
import torch
from safetensors.torch import save_file

from vqpipe.io.checkpoints import fingerprint, read_safetensors_metadata, resolve_checkpoint


def test_file_fingerprint_is_its_sha256(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(3)}, str(path), metadata={"k": "v"})
    assert fingerprint(path) == "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    assert read_safetensors_metadata(path) == {"k": "v"}


def test_directory_fingerprint_covers_names_and_contents(tmp_path):
    d = tmp_path / "ckpt"
    d.mkdir()
    (d / "model-1.safetensors").write_bytes(b"one")
    (d / "model-2.safetensors").write_bytes(b"two")
    (d / "config.json").write_text("{}")  # not a weight file
    first = fingerprint(d)
    (d / "config.json").write_text('{"x": 1}')
    assert fingerprint(d) == first
    (d / "model-2.safetensors").rename(d / "model-3.safetensors")
    assert fingerprint(d) != first
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        fingerprint(tmp_path / "empty")


def test_resolve_checkpoint_copies_uris_once(tmp_path, monkeypatch):
    monkeypatch.setenv("VQPIPE_CACHE", str(tmp_path / "cache"))
    with fsspec.open("memory://ck/dir/a.bin", "wb") as fh:
        fh.write(b"A")
    with fsspec.open("memory://ck/dir/sub/b.bin", "wb") as fh:
        fh.write(b"B")
    local = resolve_checkpoint("memory://ck/dir")
    assert (local / "a.bin").read_bytes() == b"A" and (local / "sub" / "b.bin").read_bytes() == b"B"
    assert resolve_checkpoint("memory://ck/dir") == local  # cached
    assert resolve_checkpoint(f"file://{local}") == local
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint("memory://ck/nope")
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path / "nope")


def test_object_identity_follows_overwrites_without_downloading(s3_bucket, s3_server, tmp_path):
    from vqpipe.io.checkpoints import HEADER_BYTES, checkpoint_identity

    bucket, fs = s3_bucket
    uri = f"s3://{bucket}/m/w.safetensors"
    big = b"x" * (HEADER_BYTES * 8)
    fs.pipe(uri, b"A" + big)
    first = checkpoint_identity(uri, s3_server)
    assert first.startswith("object:") and checkpoint_identity(uri, s3_server) == first
    fs.pipe(uri, b"B" + big)  # same size, other content: the ETag and the head change
    second = checkpoint_identity(uri, s3_server)
    assert second != first
    # a directory: any file's change changes the identity
    fs.pipe(f"s3://{bucket}/d/config.json", b"{}")
    fs.pipe(f"s3://{bucket}/d/model.safetensors", b"1")
    one = checkpoint_identity(f"s3://{bucket}/d", s3_server)
    fs.pipe(f"s3://{bucket}/d/config.json", b'{"a": 1}')
    assert checkpoint_identity(f"s3://{bucket}/d/", s3_server) != one
    with pytest.raises(FileNotFoundError):
        checkpoint_identity(f"s3://{bucket}/nope.safetensors", s3_server)


def test_an_overwritten_object_is_a_new_cache_entry(s3_bucket, s3_server, tmp_path):
    bucket, fs = s3_bucket
    uri = f"s3://{bucket}/m/w.bin"
    fs.pipe(uri, b"old weights")
    old = resolve_checkpoint(uri, storage_options=s3_server, cache_dir=tmp_path)
    fs.pipe(uri, b"new weights!")
    new = resolve_checkpoint(uri, storage_options=s3_server, cache_dir=tmp_path)
    assert old != new
    assert (old.read_bytes(), new.read_bytes()) == (b"old weights", b"new weights!")


def test_concurrent_resolves_download_once(s3_bucket, s3_server, tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    from vqpipe.io import checkpoints

    bucket, fs = s3_bucket
    uri = f"s3://{bucket}/m/w.safetensors"
    fs.pipe(uri, b"w" * 100_000)
    downloads = []
    verify = checkpoints._verify  # runs once per download, on the staged copy

    def counting_verify(*args):
        downloads.append(args[0])
        return verify(*args)

    checkpoints._verify = counting_verify
    try:
        with ThreadPoolExecutor(4) as pool:
            paths = list(
                pool.map(
                    lambda _: resolve_checkpoint(
                        uri, storage_options=s3_server, cache_dir=tmp_path
                    ),
                    range(4),
                )
            )
    finally:
        checkpoints._verify = verify
    assert len(set(paths)) == 1 and paths[0].read_bytes() == b"w" * 100_000
    assert len(downloads) == 1


def test_probe_checkpoint_reads_headers_only(tmp_path):
    from vqpipe.io.checkpoints import probe_checkpoint

    good = tmp_path / "w.safetensors"
    save_file({"a": torch.ones(3)}, str(good))
    probe_checkpoint(good)
    pt = tmp_path / "w.pt"
    torch.save({"a": torch.ones(2)}, pt)
    probe_checkpoint(pt)
    (tmp_path / "fake.safetensors").write_text("not weights at all")
    with pytest.raises(ValueError, match="not a safetensors file"):
        probe_checkpoint(tmp_path / "fake.safetensors")
    (tmp_path / "fake.pth").write_text("text")
    with pytest.raises(ValueError, match="not a torch checkpoint"):
        probe_checkpoint(tmp_path / "fake.pth")
    (tmp_path / "fake.txt").write_text("x")
    with pytest.raises(ValueError, match="not a weight file"):
        probe_checkpoint(tmp_path / "fake.txt")
    (tmp_path / "dir").mkdir()
    with pytest.raises(FileNotFoundError, match="no weight files"):
        probe_checkpoint(tmp_path / "dir")
    with pytest.raises(FileNotFoundError):
        probe_checkpoint(tmp_path / "missing.safetensors")


def test_local_fingerprints_are_remembered_on_disk(tmp_path, monkeypatch):
    from vqpipe.io import checkpoints

    monkeypatch.setenv("VQPIPE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "w.bin"
    path.write_bytes(b"weights")
    first = fingerprint(path)
    checkpoints._FINGERPRINTS.clear()  # a new process: only the disk record is left
    records = list((tmp_path / "cache" / "fingerprints").iterdir())
    assert len(records) == 1 and records[0].read_text() == first.removeprefix("sha256:")
    records[0].write_text("f" * 64)  # the record is what is used, keyed by (path, size, mtime)
    assert fingerprint(path) == "sha256:" + "f" * 64
    path.write_bytes(b"other weights")  # new size and mtime: hashed again
    assert fingerprint(path) == "sha256:" + hashlib.sha256(b"other weights").hexdigest()
