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
