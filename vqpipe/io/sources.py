"""Job inputs: a local dir, an fsspec URI prefix with glob filters, or a manifest table.

Every listed input becomes exactly one row (``uri``, ``media_type``, ``bytes`` and any carried
manifest columns); inputs that cannot be scored (unsupported extension) are still listed, with
``media_type="unsupported"``, so that the job writes a row with an ``error`` for them.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import fsspec
import numpy as np

from vqpipe.io.fs import content_version, join_uri, url_to_fs
from vqpipe.storage.names import is_job_artifact

if TYPE_CHECKING:  # pandas only where a manifest or listing becomes a table (not in workers)
    import pandas as pd

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".jfif"}
)
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".mpg", ".mpeg"})
MANIFEST_SUFFIXES = (".parquet", ".csv", ".jsonl", ".json")


def media_type_from_name(name: str) -> str:
    """``"image"``, ``"video"`` or ``"unsupported"`` from the file extension."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return "unsupported"


def sniff_media_type(head: bytes) -> str | None:
    """Media type from the first bytes of a file (magic numbers); None when unknown."""
    if head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image"
    if head[:6] in (b"GIF87a", b"GIF89a") or head.startswith(b"BM"):
        return "image"
    if head[:4] in (b"II*\x00", b"MM\x00*") or (head[:4] == b"RIFF" and head[8:12] == b"WEBP"):
        return "image"
    if head[4:8] == b"ftyp":  # ISO BMFF: mp4 / mov / heic
        brand = head[8:12]
        return "image" if brand in (b"heic", b"heix", b"avif", b"mif1") else "video"
    if head.startswith(b"\x1a\x45\xdf\xa3") or (head[:4] == b"RIFF" and head[8:12] == b"AVI "):
        return "video"
    if head[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"):  # MPEG-PS / MPEG-1
        return "video"
    return None


INVALID_NAME = "invalid-name"
"""``media_type`` of a listed file whose name is not valid UTF-8 (it gets an error row)."""


def printable_uri(uri: str) -> tuple[str, bool]:
    """``(uri, True)``, or for a local name that is not valid UTF-8 (surrogate-escaped by
    Python) a readable stand-in with ``\\x`` escapes and ``False``: Parquet strings must be
    UTF-8, and the input must still get its one row."""
    try:
        uri.encode("utf-8")
        return uri, True
    except UnicodeEncodeError:
        raw = uri.encode("utf-8", "surrogateescape")
        return raw.decode("utf-8", "backslashreplace"), False


OUTSIDE_ROOT = "outside-root"
"""``media_type`` of a manifest entry that points outside the configured root (error row)."""


LOCAL_SCHEMES = frozenset({"", "file", "local"})


def confine(uri: str, root: str) -> tuple[str, bool]:
    """Resolve ``uri`` against ``root`` (relative entries are joined to it) and say whether it
    stays inside: no ``..`` escapes, no absolute paths or other buckets elsewhere. Local paths
    (plain, ``file://``, ``local://``) are compared after resolving symlinks, so a link inside
    the root that points outside is outside."""
    root_scheme, _, root_path = root.rpartition("://") if "://" in root else ("", "", root)
    scheme, _, path = uri.rpartition("://") if "://" in uri else ("", "", uri)
    if not scheme and not path.startswith("/"):
        scheme, path = root_scheme, posixpath.join(root_path, path)
    if scheme in LOCAL_SCHEMES and root_scheme in LOCAL_SCHEMES:
        base = os.path.realpath(root_path)
        full = os.path.realpath(path)
        inside = full == base or full.startswith(base.rstrip(os.sep) + os.sep)
        return (f"{scheme}://{full}" if scheme else full), inside
    if scheme != root_scheme:
        return uri, False
    base = posixpath.normpath(root_path).rstrip("/")
    full = posixpath.normpath(path)
    inside = full == base or full.startswith(base + "/")
    return f"{scheme}://{full}", inside


def is_manifest(spec: str) -> bool:
    return spec.lower().endswith(MANIFEST_SUFFIXES)


def read_manifest(spec: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """A manifest (Parquet / CSV / JSONL) with a ``uri`` column; other columns are carried."""
    import pandas as pd

    opts = {"storage_options": storage_options} if "://" in spec else {}
    lower = spec.lower()
    if lower.endswith(".parquet"):
        table = pd.read_parquet(spec, **opts)
    elif lower.endswith(".csv"):
        table = pd.read_csv(spec, **opts)
    else:
        table = pd.read_json(spec, lines=lower.endswith(".jsonl"), **opts)
    if "uri" not in table.columns:
        raise ValueError(f"manifest {spec} has no 'uri' column (columns: {list(table.columns)})")
    return table


def modified_time(info: dict[str, Any]) -> float:
    """An object's modification time (POSIX seconds) from an fsspec listing entry: ``mtime``
    (local), ``LastModified`` (S3), ``updated`` / ``mtime`` strings (GCS and others); +inf when
    the store does not say, so that ``--since`` never drops an input it cannot date."""
    import datetime as dt

    for key in ("mtime", "LastModified", "last_modified", "updated", "modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, dt.datetime):
            return value.timestamp()
        try:
            return dt.datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
        except ValueError:
            continue
    return float("inf")


def _excluded(rel: str, pattern: str) -> bool:
    if fnmatch.fnmatch(rel, pattern):
        return True
    return "/" not in pattern and any(
        fnmatch.fnmatch(part, pattern) for part in PurePosixPath(rel).parts
    )


def listed_rows(
    fs: fsspec.AbstractFileSystem,
    root: str,
    spec: str,
    found: dict[str, dict[str, Any]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    since: float | None = None,
    versions: bool = False,
) -> list[dict[str, Any]]:
    """Input rows (``uri``, ``media_type``, ``bytes``; ``versions``: ``content_version``, see
    :func:`~vqpipe.io.fs.content_version`) of listed files under ``root``, sorted.

    Only a scoring job's own files are left out (:func:`is_job_artifact`: ``_job.json``,
    ``_lock``, ``_next/``, ``_quarantine/``, parts); other ``_``- or ``.``-prefixed names are
    inputs (``_DSC0001.JPG``). ``include`` / ``exclude``: globs on the path relative to
    ``root``; an ``exclude`` glob without ``/`` also drops a path when it matches any one
    name in it, as in ``.gitignore`` (``--exclude '.*'`` drops hidden files and folders).
    ``since``: on the modification time."""
    rows = []
    for path, info in sorted(found.items()):
        if info.get("type") == "directory":
            continue
        rel = path[len(root) :].lstrip("/")
        if is_job_artifact(rel):
            continue
        if include and not any(fnmatch.fnmatch(rel, pat) for pat in include):
            continue
        if any(_excluded(rel, pat) for pat in exclude):
            continue
        if since is not None and modified_time(info) <= since:
            continue
        uri, printable = printable_uri(join_uri(fs, path, spec))
        row = {
            "uri": uri,
            "media_type": media_type_from_name(path) if printable else INVALID_NAME,
            "bytes": int(info.get("size") or 0),
        }
        if versions:
            row["content_version"] = content_version(info)
        rows.append(row)
    return rows


def list_inputs(
    spec: str | os.PathLike,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    storage_options: dict[str, Any] | None = None,
    limit: int | None = None,
    root: str | None = None,
    since: float | None = None,
) -> pd.DataFrame:
    """All inputs of a job, sorted by ``uri`` (a stable order for sharding and resume).

    ``spec``: a local directory, an fsspec URI prefix (``s3://bucket/prefix/``), or a manifest
    file (``.parquet`` / ``.csv`` / ``.jsonl``, needs a ``uri`` column). ``include`` /
    ``exclude``: glob patterns on the path relative to the prefix (``"**/*.jpg"``); a manifest
    is taken as it is. A job's own files (``_job.json``, parts, ``_next/``) are skipped.
    ``root``: manifest entries are resolved against it and must stay inside it (``..``,
    absolute paths or other buckets elsewhere become error rows, never reads). ``since``: a
    prefix listing keeps only objects modified after this POSIX time (nightly incremental runs).
    """
    import pandas as pd

    spec = os.fspath(spec)
    if is_manifest(spec):
        table = read_manifest(spec, storage_options)
        table = table.assign(uri=table["uri"].astype(str))
        if "media_type" not in table.columns:
            table["media_type"] = table["uri"].map(media_type_from_name)
        if root is not None:
            resolved = [confine(u, str(root)) for u in table["uri"]]
            # rejected entries keep the manifest's text, so the error row names what was asked
            table["uri"] = [
                r if ok else u for u, (r, ok) in zip(table["uri"], resolved, strict=True)
            ]
            outside = np.array([not ok for _, ok in resolved], dtype=bool)
            table.loc[outside, "media_type"] = OUTSIDE_ROOT
        if "bytes" not in table.columns:
            table["bytes"] = pd.array([None] * len(table), dtype="Int64")
    else:
        fs, root = url_to_fs(spec, storage_options)
        if not fs.isdir(root):
            raise FileNotFoundError(f"input not found or not a directory: {spec}")
        root = root.rstrip("/")
        found = fs.find(root, withdirs=False, detail=True)
        rows = listed_rows(fs, root, spec, found, include, exclude, since)
        table = pd.DataFrame(rows, columns=["uri", "media_type", "bytes"])
    dupes = table["uri"].duplicated()
    if dupes.any():
        raise ValueError(
            f"{int(dupes.sum())} duplicate uri(s) in the input, e.g. {table['uri'][dupes].iloc[0]}"
        )
    table = table.sort_values("uri", kind="stable").reset_index(drop=True)
    return table.head(limit) if limit is not None else table
