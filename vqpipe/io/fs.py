"""fsspec access shared by inputs, outputs and checkpoints."""

from __future__ import annotations

import errno
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
        # botocore / aiobotocore / aiohttp / urllib3 / http.client exception classes, matched by
        # class name along the MRO (not imported: optional packages)
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
_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses worth a retry: request timeout, throttling, server errors and outages."""
_TRANSIENT_CODES = frozenset(
    {
        # S3 and other AWS-style error codes (``response["Error"]["Code"]``)
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "ProvisionedThroughputExceededException",
        "RequestTimeout",
        "RequestTimeoutException",
        "PriorRequestNotComplete",
        "InternalError",
        "ServiceUnavailable",
    }
)
_TRANSIENT_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNREFUSED",
        "ECONNRESET",
        "ECONNABORTED",
        "ETIMEDOUT",
        "EPIPE",
        "ENOTCONN",
        "ESHUTDOWN",
        "EHOSTUNREACH",
        "EHOSTDOWN",
        "ENETUNREACH",
        "ENETDOWN",
        "ENETRESET",
        "EAI_AGAIN",
    )
    if hasattr(errno, name)
)
_STATUS_LINE = re.compile(
    r"(429 Too Many Requests|500 Internal Server Error|502 Bad Gateway|"
    r"503 Service Unavailable|503 Slow Down|504 Gateway Time-?out)\b",
    re.IGNORECASE,
)
"""An HTTP status line that a client gave as its message (``OSError("503 Service Unavailable
(SlowDown)")``): a status code with its reason phrase, matched only at the start of the
message — never a word anywhere in it, which may name a file (``img_0500.png``,
``timeout_cat.jpg``)."""


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: resets, refused or closed connections, an unreachable endpoint,
    timeouts, throttling and 5xx — not 403/404 or bad data. Decided from exception types,
    ``errno`` values and status codes, never from words in a message (which may be a path).
    The exception and its causes are looked at (s3fs, fsspec and Ray wrap the store's
    errors: fsspec's HTTP filesystem says ``FileNotFoundError`` for a refused connection,
    with the connection error as its cause)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if _transient_one(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _status_of(exc: BaseException) -> tuple[int | None, str | None]:
    """The HTTP status and service error code an exception carries, when it carries them:
    botocore's ``ClientError.response``, aiohttp's ``ClientResponseError.status``, a
    ``requests`` ``HTTPError.response.status_code``."""
    status, code = None, None
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        error = response.get("Error") or {}
        code = error.get("Code")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    elif response is not None:
        status = getattr(response, "status_code", None) or getattr(response, "status", None)
    for name in ("status", "status_code"):
        value = getattr(exc, name, None)
        if status is None and isinstance(value, int):
            status = value
    if isinstance(code, str) and code.isdigit() and status is None:
        status = int(code)
    return (status if isinstance(status, int) else None), (code if isinstance(code, str) else None)


def _transient_one(exc: BaseException) -> bool:
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False  # permanent here; a cause below it may still be a connection error
    if isinstance(exc, (ConnectionError, TimeoutError)):  # socket.timeout, asyncio's, ours
        return True
    if any(t.__name__ in _TRANSIENT_TYPES for t in type(exc).__mro__):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    status, code = _status_of(exc)
    if code in _TRANSIENT_CODES or status in _TRANSIENT_STATUS:
        return True
    try:
        text = str(exc)
    except Exception:  # a broken __str__ (aiohttp's without its request) says nothing more
        return False
    return _STATUS_LINE.match(text.lstrip()) is not None


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


SOCKET_TIMEOUT_MAX_S = 60.0
"""Socket timeouts set for reads are never looser than botocore's own defaults (60 s)."""


def with_socket_timeouts(
    uri: str, storage_options: dict[str, Any] | None, timeout_s: float | None
) -> dict[str, Any] | None:
    """``storage_options`` for reading ``uri`` with socket timeouts of at most ``timeout_s``:
    for S3 (s3fs → aiobotocore → aiohttp), botocore's ``connect_timeout`` and ``read_timeout``
    (``read_timeout`` is aiohttp's ``sock_read``: the longest wait for the next bytes), each
    only where the user's ``config_kwargs`` do not set it. Other stores are left as they are:
    the read deadline (:mod:`vqpipe.io.reading`) bounds them."""
    match = _SCHEME.match(os.fspath(uri))
    if timeout_s is None or match is None or match.group(1).lower() not in ("s3", "s3a"):
        return storage_options
    options = dict(storage_options or {})
    config = dict(options.get("config_kwargs") or {})
    seconds = min(float(timeout_s), SOCKET_TIMEOUT_MAX_S)
    config.setdefault("connect_timeout", seconds)
    config.setdefault("read_timeout", seconds)
    options["config_kwargs"] = config
    return options


def is_async(fs: fsspec.AbstractFileSystem) -> bool:
    """True for an fsspec async filesystem used from blocking code (s3fs, gcsfs, adlfs, HTTP):
    its calls accept ``timeout=`` (``fsspec.asyn.sync``), which cancels the request."""
    from fsspec.asyn import AsyncFileSystem

    return isinstance(fs, AsyncFileSystem) and not fs.asynchronous
