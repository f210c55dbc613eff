"""fsspec access shared by inputs, outputs and checkpoints."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import fsspec

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")


def url_to_fs(
    uri: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Filesystem and path of ``uri``; storage options apply to URIs only (``s3://...``), so a
    job's S3 credentials never reach the local filesystem.

    Paths are exact: a local path or an object key containing ``::``, ``#``, ``?``, ``%`` or
    spaces is that name, never an fsspec URL chain (``fsspec.core.url_to_fs`` would read
    ``names/a::b.png`` as ``names/a``). Only an explicit chain (``simplecache::s3://...``,
    ``::`` before the first ``://``) goes through fsspec's chaining."""
    text = os.fspath(uri)
    head = text.split("://", 1)[0]
    if "://" in text and "::" in head:
        return fsspec.core.url_to_fs(text, **(storage_options or {}))
    match = _SCHEME.match(text)
    if match is None:
        fs = fsspec.filesystem("file")
        return fs, fs._strip_protocol(text)
    fs = fsspec.filesystem(match.group(1), **(storage_options or {}))
    return fs, fs._strip_protocol(text)


def join_uri(fs: fsspec.AbstractFileSystem, path: str, spec: str) -> str:
    """A path of ``fs`` as a URI in the style of ``spec``: bare when ``spec`` is a bare path,
    else with ``fs``'s scheme (``s3://bucket/key``), so Ray tasks open it the same way."""
    if "://" not in spec:
        return path
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{path.lstrip('/')}" if protocol != "file" else f"file://{path}"


def content_version(info: dict[str, Any] | None) -> str | None:
    """An object's version as its listing gives it, with no request of its own: the store's
    version id (S3 versioning, GCS generation), else its ETag, else size and modification
    time (local disks: nanoseconds). None when the listing says nothing of it."""
    if not info:
        return None
    for key in ("VersionId", "version_id", "generation"):
        if info.get(key) not in (None, "", "null"):
            return f"v:{info[key]}"
    for key in ("ETag", "etag", "md5Hash"):
        if info.get(key):
            return "etag:" + str(info[key]).strip('"')
    mtime = info.get("mtime_ns") or info.get("mtime") or info.get("LastModified")
    if mtime is None and info.get("size") is None:
        return None
    if hasattr(mtime, "timestamp"):
        mtime = mtime.timestamp()
    return f"size:{info.get('size')}:mtime:{mtime}"


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """True for the local filesystem (where rename is atomic and paths need no copying)."""
    protocol = fs.protocol
    return "file" in ((protocol,) if isinstance(protocol, str) else tuple(protocol))


READ_ATTEMPTS = 4
READ_BACKOFF_S = 0.2


_TRANSIENT_TYPES = frozenset(
    {
        # botocore / aiobotocore / aiohttp / urllib3 names (not imported: optional packages)
        "EndpointConnectionError",
        "ConnectionClosedError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ClientConnectorError",
        "ClientOSError",
        "ServerDisconnectedError",
        "ServerTimeoutError",
        "IncompleteRead",
        "ProtocolError",
        "ResponseStreamingError",
        "FSTimeoutError",
    }
)


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: resets, refused or closed connections, an unreachable endpoint,
    timeouts, throttling and 5xx — not 403/404 or bad data. The exception and its causes are
    looked at (s3fs and Ray wrap the store's errors)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _transient_one(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any(t.__name__ in _TRANSIENT_TYPES for t in type(exc).__mro__):
        return True
    text = f"{type(exc).__name__} {exc}".lower()
    return any(
        word in text
        for word in (
            "could not connect to the endpoint",
            "connection was closed",
            "connection refused",
            "broken pipe",
            "throttl",
            "slowdown",
            "slow down",
            "timeout",
            "timed out",
            "temporarily",
            "service unavailable",
            "internal error",
            "503",
            "500",
            "connection reset",
            "connection aborted",
        )
    )


def read_bytes(uri: str, storage_options: dict[str, Any] | None = None) -> bytes:
    """The object's bytes; transient store errors are retried with exponential backoff."""
    for attempt in range(READ_ATTEMPTS):
        try:
            fs, path = url_to_fs(uri, storage_options)
            with fs.open(path, "rb") as fh:
                return fh.read()
        except Exception as exc:
            if attempt == READ_ATTEMPTS - 1 or not is_transient(exc):
                raise
            time.sleep(READ_BACKOFF_S * 2**attempt)
    raise AssertionError("unreachable")
