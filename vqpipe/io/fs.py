"""fsspec access shared by inputs, outputs and checkpoints."""

from __future__ import annotations

import os
from typing import Any

import fsspec


def url_to_fs(
    uri: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path of ``uri``; storage options apply to URIs only (``s3://...``), so a
    job's S3 credentials never reach the local filesystem."""
    text = os.fspath(uri)
    options = (storage_options or {}) if "://" in text else {}
    return fsspec.core.url_to_fs(text, **options)


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (where rename is atomic and paths need no copying)."""
    protocol = fs.protocol
    return "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))
