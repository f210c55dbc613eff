"""Checkpoint resolution (local path or fsspec URI → local file, fetched once), fingerprints."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

from vqpipe.io.fs import is_local, url_to_fs

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


def default_cache_dir() -> Path:
    """``$VQPIPE_CACHE``, else ``~/.cache/vqpipe``."""
    return Path(os.environ.get("VQPIPE_CACHE", Path.home() / ".cache" / "vqpipe"))


def resolve_checkpoint(
    uri: str | os.PathLike,
    *,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    hub_files: list[str] | None = None,
) -> Path:
    """A local path for a checkpoint file or directory.

    Local paths (and ``file://`` URIs) are used in place. Other fsspec URIs (``s3://``,
    ``gs://``, ``memory://``, ...) are copied once into ``cache_dir/<hash of URI>/<name>``; the
    copy is made in a temporary directory and renamed into place, so an interrupted download
    is never mistaken for a complete one. An ``owner/name`` that is not a local path is a
    Hugging Face hub repository (fetched when online; only ``hub_files`` patterns).
    """
    text = os.fspath(uri)
    if "://" not in text:
        path = Path(text).expanduser()
        if path.exists():
            return path
        if is_hub_id(text):
            return _hub_snapshot(text, hub_files)
        raise FileNotFoundError(f"checkpoint not found: {path}")
    fs, remote = url_to_fs(text, storage_options)
    if is_local(fs):
        return resolve_checkpoint(remote)
    if not fs.exists(remote):
        raise FileNotFoundError(f"checkpoint not found: {text}")
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(text.rstrip("/").encode()).hexdigest()[:16]
    target = root / "checkpoints" / key / (Path(remote.rstrip("/")).name or "checkpoint")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
        staged = Path(tmp) / target.name
        if fs.isdir(remote):
            fs.get(remote.rstrip("/") + "/", str(staged), recursive=True)
        else:
            fs.get(remote, str(staged))
        try:
            staged.rename(target)
        except OSError:  # another process finished first
            if not target.exists():
                raise
    return target


def is_hub_id(text: str) -> bool:
    """``owner/name`` with no scheme and not a relative or absolute path."""
    parts = text.split("/")
    return len(parts) == 2 and all(parts) and not text.startswith((".", "~"))


def _hub_snapshot(repo_id: str, patterns: list[str] | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise FileNotFoundError(
            f"checkpoint {repo_id!r} is not a local path and could not be fetched from the "
            f"Hugging Face hub ({type(exc).__name__}: {exc}); point to a local dir or an "
            "s3:// prefix instead"
        ) from exc


def weight_files(path: str | os.PathLike) -> list[Path]:
    """The weight files of a checkpoint file or directory, sorted by name."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)


_FINGERPRINTS: dict[tuple[str, int, int], str] = {}


def fingerprint(path: str | os.PathLike) -> str:
    """``sha256:<hex>`` of a checkpoint: a file's own sha256, or for a directory one over its
    weight files (names relative to it + their sha256).

    Memoised per file by (path, size, mtime), so rebuilding a scorer does not re-hash.
    """
    path = Path(path)
    if path.is_file():  # the plain sha256 of the file, as `sha256sum` prints it
        return f"sha256:{_file_digest(path)}"
    files = weight_files(path)
    if not files:
        raise FileNotFoundError(f"no weight files ({', '.join(WEIGHT_SUFFIXES)}) in {path}")
    digest = hashlib.sha256()
    for file in files:
        name = file.relative_to(path).as_posix()
        digest.update(name.encode() + b"\0" + _file_digest(file).encode() + b"\n")
    return f"sha256:{digest.hexdigest()}"


def _file_digest(file: Path) -> str:
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        _FINGERPRINTS[key] = h.hexdigest()
    return _FINGERPRINTS[key]


def read_safetensors_metadata(
    uri: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file, reading only its header (local or fsspec)."""
    fs, path = url_to_fs(uri, storage_options)
    with fs.open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        if length > 100 * 1024 * 1024:
            raise ValueError(f"{uri}: safetensors header of {length} bytes is not plausible")
        header = json.loads(fh.read(length))
    return dict(header.get("__metadata__") or {})
