"""Checkpoint resolution (local path or fsspec URI → local file, fetched once), fingerprints."""

from __future__ import annotations

import fcntl
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
    ``gs://``, ``memory://``, ...) are copied into ``cache_dir/<hash of URI + identity>/<name>``:
    an object overwritten with other weights has another :func:`checkpoint_identity`, so it is
    a new cache entry, never the old copy. One process per node downloads (a file lock; the
    others wait and reuse it); the copy is made in a temporary directory, checked against the
    identity (sizes, headers) and renamed into place, so an interrupted or raced download is
    never mistaken for a complete one. An ``owner/name`` that is not a local path is a Hugging
    Face hub repository (fetched when online; only ``hub_files`` patterns).
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
    entries = _remote_entries(fs, remote, text)
    identity = _identity_of(entries)
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = hashlib.sha256(f"{text.rstrip('/')}\n{identity}".encode()).hexdigest()[:16]
    target = root / "checkpoints" / key / (Path(remote.rstrip("/")).name or "checkpoint")
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the rest wait for it
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".download-") as tmp:
            staged = Path(tmp) / target.name
            if len(entries) == 1 and entries[0]["name"] == "":
                fs.get(remote, str(staged))
            else:
                fs.get(remote.rstrip("/") + "/", str(staged), recursive=True)
            _verify(staged, entries, text)
            staged.rename(target)
    return target


HEADER_BYTES = 64 * 1024
"""How much of each remote file's head goes into its identity."""
_VERSION_FIELDS = ("VersionId", "version_id", "generation", "ETag", "etag", "md5Hash")


def checkpoint_identity(
    uri: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> str:
    """What identifies a checkpoint's content, without downloading the weights.

    Local files and directories (and hub snapshots): :func:`fingerprint`, the content sha256
    (cached by path, size and mtime). Object stores: ``object:<sha256>`` over each file's
    relative name, size, version id / ETag and the sha256 of its first 64 KiB — an overwritten
    object gets a new identity, and a 14 GB checkpoint is identified with a few small reads.
    """
    text = os.fspath(uri)
    if "://" in text:
        fs, remote = url_to_fs(text, storage_options)
        if not is_local(fs):
            return _identity_of(_remote_entries(fs, remote, text))
        text = remote
    return fingerprint(resolve_checkpoint(text))


def _remote_entries(fs: Any, remote: str, uri: str) -> list[dict[str, Any]]:
    """One record per file of a remote checkpoint (name relative to it, size, version, head)."""
    fs.invalidate_cache(remote)  # a listing cached by an earlier call may predate an overwrite
    try:
        info = fs.info(remote)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {uri}") from None
    if info.get("type") == "directory":
        base = remote.rstrip("/")
        found = fs.find(base, detail=True)
        if not found:
            raise FileNotFoundError(f"checkpoint not found (empty prefix): {uri}")
        items = [(path[len(base) :].lstrip("/"), path, meta) for path, meta in found.items()]
    else:
        items = [("", remote, info)]
    entries = []
    for name, path, meta in sorted(items, key=lambda item: item[0]):
        version = next((str(meta[k]) for k in _VERSION_FIELDS if meta.get(k)), None)
        head = fs.cat_file(path, start=0, end=HEADER_BYTES)
        entries.append(
            {
                "name": name,
                "size": int(meta.get("size") or 0),
                "version": version,
                "head": hashlib.sha256(head).hexdigest(),
            }
        )
    return entries


def _identity_of(entries: list[dict[str, Any]]) -> str:
    blob = json.dumps(entries, sort_keys=True).encode()
    return f"object:{hashlib.sha256(blob).hexdigest()}"


def _verify(local: Path, entries: list[dict[str, Any]], uri: str) -> None:
    """The downloaded copy has the sizes and heads the identity was computed from."""
    for entry in entries:
        path = local / entry["name"] if entry["name"] else local
        if not path.is_file() or path.stat().st_size != entry["size"]:
            raise OSError(f"checkpoint {uri} changed while it was downloaded ({entry['name']})")
        with open(path, "rb") as fh:
            if hashlib.sha256(fh.read(HEADER_BYTES)).hexdigest() != entry["head"]:
                raise OSError(f"checkpoint {uri} changed while it was downloaded ({entry['name']})")


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
    """sha256 of a file, memoised in the process and on disk by (path, size, mtime): a job
    started again does not re-hash a 14 GB checkpoint."""
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key in _FINGERPRINTS:
        return _FINGERPRINTS[key]
    record = default_cache_dir() / "fingerprints" / hashlib.sha256(repr(key).encode()).hexdigest()
    try:
        digest = record.read_text().strip()
    except OSError:
        digest = ""
    if len(digest) != 64:
        h = hashlib.sha256()
        with open(file, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
        digest = h.hexdigest()
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            staged = record.with_suffix(f".{os.getpid()}.tmp")
            staged.write_text(digest)
            staged.replace(record)
        except OSError:  # a read-only cache only costs the re-hash
            pass
    _FINGERPRINTS[key] = digest
    return digest


_PICKLE_HEADS = (b"PK\x03\x04", b"\x80")  # torch.save zip archive; legacy pickle protocol 2+


def probe_checkpoint(uri: str | os.PathLike, storage_options: dict[str, Any] | None = None) -> None:
    """Fail with a clear message when a checkpoint is missing or no loadable kind: reads only
    the listing and each weight file's first bytes (a safetensors header must parse; a
    ``.pt``/``.pth``/``.bin`` must be a torch archive or pickle). Hub ids are not checked."""
    text = os.fspath(uri)
    if "://" not in text and not Path(text).expanduser().exists():
        if is_hub_id(text):
            return
        raise FileNotFoundError(f"checkpoint not found: {text}")
    fs, path = url_to_fs(text if "://" in text else str(Path(text).expanduser()), storage_options)
    fs.invalidate_cache(path)
    if not fs.exists(path):
        raise FileNotFoundError(f"checkpoint not found: {text}")
    if fs.isdir(path):
        files = [p for p in fs.find(path) if p.endswith(WEIGHT_SUFFIXES)]
        if not files:
            raise FileNotFoundError(
                f"checkpoint {text} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})"
            )
    else:
        files = [path]
    for file in files:
        name = file.rsplit("/", 1)[-1]
        if not name.endswith(WEIGHT_SUFFIXES):
            raise ValueError(
                f"checkpoint {text}: {name!r} is not a weight file ({', '.join(WEIGHT_SUFFIXES)})"
            )
        head = fs.cat_file(file, start=0, end=HEADER_BYTES)
        if name.endswith(".safetensors"):
            _check_safetensors_head(head, text if file == path else f"{text} ({name})")
        elif not head.startswith(_PICKLE_HEADS):
            raise ValueError(f"checkpoint {text}: {name} is not a torch checkpoint (bad header)")


def _check_safetensors_head(head: bytes, where: str) -> None:
    if len(head) < 8:
        raise ValueError(f"checkpoint {where} is not a safetensors file ({len(head)} bytes)")
    (length,) = struct.unpack("<Q", head[:8])
    if not 2 <= length <= 100 * 1024 * 1024 or head[8:9] != b"{":
        raise ValueError(f"checkpoint {where} is not a safetensors file (bad header)")
    if length + 8 <= len(head):
        try:
            json.loads(head[8 : 8 + length])
        except ValueError:
            raise ValueError(f"checkpoint {where} is not a safetensors file (bad header)") from None


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
