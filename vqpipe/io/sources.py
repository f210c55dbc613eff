"""The ``files`` reader: a folder (symlinks followed), a single file or a glob, local or on any
fsspec store, listed into input rows; and how manifest entries resolve (:func:`manifest_entry`).

Every listed input becomes exactly one row (``uri``, ``media_type``, ``bytes``); inputs that
cannot be scored (unsupported extension, a symlink loop, a folder that cannot be read) are
still rows, with an ``error``; producers' sidecars are counted, not listed.
"""

from __future__ import annotations

import fnmatch
import os
import posixpath
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import fsspec

from vqpipe.io.fs import content_version, is_local, join_uri, url_to_fs
from vqpipe.io.media_types import UNSUPPORTED, extension, media_type_from_name, sidecar_of
from vqpipe.io.patterns import SymlinkLoopError, find_local, glob_base, has_magic
from vqpipe.storage.names import JOB_RECORD, is_job_artifact

if TYPE_CHECKING:
    from vqpipe.io.readers import ReadOptions


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


def is_relative(uri: str) -> bool:
    """A manifest entry with no scheme and no leading ``/`` (``images/a.jpg``)."""
    return "://" not in uri and not uri.startswith("/")


def manifest_entry(value: str, manifest: str, root: str | None) -> tuple[str, bool]:
    r"""The URI a manifest entry names, and whether it may be read: with ``--root``,
    :func:`confine`\ d to it (relative entries joined to the root); without, a relative entry
    is relative to the manifest's own folder (never to the working directory of whichever
    node reads it), an absolute one is taken as it is."""
    if root is not None:
        return confine(value, root)
    if not is_relative(value):
        return value, True
    folder = manifest.rstrip("/").rsplit("/", 1)[0] if "/" in manifest else "."
    scheme, _, path = folder.rpartition("://") if "://" in folder else ("", "", folder)
    joined = posixpath.normpath(posixpath.join(path, value))
    if not scheme:
        return os.path.abspath(joined), True
    return f"{scheme}://{joined.lstrip('/')}", True


def entry_selected(
    uri: str, base: str | None, include: Sequence[str], exclude: Sequence[str]
) -> bool:
    """``--include`` / ``--exclude`` on a manifest entry: the globs match its path relative to
    ``base`` (``--root``, else the manifest's folder) when it lies below it, else the URI."""
    if not include and not exclude:
        return True
    rel = uri
    if base is not None:
        prefix = base.rstrip("/") + "/"
        if uri.startswith(prefix):
            rel = uri[len(prefix) :]
    if include and not any(fnmatch.fnmatch(rel, pat) for pat in include):
        return False
    return not any(_excluded(rel, pat) for pat in exclude)


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


def table_folders(rels: Iterable[str]) -> set[str]:
    """Folders (relative, ``""`` for the listed root) that hold a quality table's record
    (``_job.json``): inside them, and only there, a job's files are not inputs."""
    return {posixpath.dirname(r) for r in rels if posixpath.basename(r) == JOB_RECORD}


def in_table_folder(rel: str, tables: set[str]) -> bool:
    """Whether ``rel`` is a job's file (:func:`is_job_artifact`) inside a table folder; a
    ``_next/`` or ``_lock/`` anywhere else (a web site's mirror) is an input like any other."""
    if not tables:
        return False
    parts = rel.split("/")
    return any(
        "/".join(parts[:i]) in tables and is_job_artifact("/".join(parts[i:]))
        for i in range(len(parts))
    )


def confined(path: str, root: str) -> bool:
    """Whether a local ``path`` stays inside ``root`` once symlinks are resolved."""
    base, full = os.path.realpath(root), os.path.realpath(path)
    return full == base or full.startswith(base.rstrip(os.sep) + os.sep)


def list_level(
    fs: fsspec.AbstractFileSystem, root: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """The files directly in ``root`` (path → listing info) and its folders, sorted. Local
    symlinks are followed: a link to a folder is a folder (listed like any other); a link that
    resolves to nothing (broken, or a loop such as ``a -> a``) is a file, whose read says why
    it fails."""
    root = root.rstrip("/")
    files: dict[str, dict[str, Any]] = {}
    folders: list[str] = []
    if not is_local(fs):
        for entry in fs.ls(root, detail=True):
            name = entry["name"].rstrip("/")
            if name == root:
                continue
            if entry.get("type") == "directory":
                folders.append(name)
            else:
                files[name] = entry
        return files, sorted(folders)
    with os.scandir(root) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links; False when the target cannot be read
            except OSError:
                is_dir = False
            if is_dir:
                folders.append(entry.path)
                continue
            try:
                st = entry.stat()
            except OSError:
                st = entry.stat(follow_symlinks=False)
            files[entry.path] = {
                "name": entry.path,
                "size": st.st_size,
                "type": "file",
                "mtime": st.st_mtime,
            }
    return dict(sorted(files.items())), sorted(folders)


def _named_files(
    fs: fsspec.AbstractFileSystem, path: str, problems: list[OSError]
) -> tuple[str, dict[str, dict[str, Any]]]:
    """The files a single-file or glob input names (matched folders listed whole), and the
    folder their relative paths start from (the pattern's folder before any glob character)."""
    if not has_magic(path):
        return posixpath.dirname(path), {path: fs.info(path)}
    base = glob_base(path)
    found: dict[str, dict[str, Any]] = {}
    for match, info in sorted(fs.glob(path, detail=True).items()):
        if info.get("type") != "directory":
            found[match] = info
        elif is_local(fs):
            found.update(find_local(match, problems))
        else:
            found.update(fs.find(match, withdirs=False, detail=True))
    return base, found


def canonical_input(spec: str) -> str:
    """A local input's path with symlinks resolved (``/data/link`` and ``/data/real`` are
    one folder, so a rerun through either spelling resumes); URIs, globs and brace patterns
    are kept as given."""
    text = os.fspath(spec)
    if has_magic(text) or "{" in text:
        return text
    if text.startswith("file://"):
        return "file://" + os.path.realpath(text[len("file://") :])
    if "://" in text:
        return text
    return os.path.realpath(text)


def folder_rows(
    spec: str,
    folder: str,
    options: ReadOptions,
    storage_options: dict[str, Any] | None,
    *,
    top: bool = False,
    counts: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """The input rows of one folder of a ``files`` input ``spec`` (with ``top``: only the
    files directly in it), with content versions, and one error row per folder that could
    not be listed. ``options``: ``include``, ``exclude``, ``since``, ``root``, ``output``
    (the job's own output, never an input)."""
    fs, root = url_to_fs(spec, storage_options)
    root = root.rstrip("/")
    fs.invalidate_cache()  # a listing cached by an earlier job of this process is stale
    problems: list[OSError] = []
    path = url_to_fs(folder, storage_options)[1].rstrip("/")
    folders: list[str] = []
    if has_magic(root) or not fs.isdir(root):  # a single file or a glob
        root, found = _named_files(fs, root, problems)
    elif top:
        found, folders = list_level(fs, root)
    elif is_local(fs):
        found = find_local(path, problems)
    else:  # object stores' find raises on a listing error (the task becomes one error row)
        found = fs.find(path, withdirs=False, detail=True)
    root_limit = options.root
    rows = listed_rows(
        fs,
        root,
        spec,
        found,
        options.include,
        options.exclude,
        options.since,
        versions=True,
        folders=folders,
        confine_to=root_limit if root_limit is not None and is_local(fs) else None,
        counts=counts,
    )
    for row in rows:
        row["error"] = None
    for exc in problems:  # a folder the job cannot list: one error row, never a gap
        where = printable_uri(join_uri(fs, str(getattr(exc, "filename", "") or path), spec))[0]
        if isinstance(exc, SymlinkLoopError):
            message = f"read: {exc}"
        else:
            message = f"read: cannot list directory {where}: {type(exc).__name__}: {exc}"
        rows.append({"uri": where, "media_type": None, "bytes": None, "error": message})
    output = options.output.rstrip("/")
    if output:
        rows = [r for r in rows if r["uri"] != output and not r["uri"].startswith(output + "/")]
    return rows


def sidecars(files: Iterable[str], folders: Iterable[str] = ()) -> set[str]:
    """The producers' sidecars among listed files (:func:`~vqpipe.io.media_types.sidecar_of`);
    ``folders``: the folders beside them, when the listing is of one level."""
    files = list(files)
    media_stems = {
        p[: len(p) - len(extension(p))] for p in files if media_type_from_name(p) != UNSUPPORTED
    }
    folder_set = {f.rstrip("/") for f in folders} | {posixpath.dirname(p) for p in files}
    return {
        p
        for p in files
        if media_type_from_name(p) == UNSUPPORTED and sidecar_of(p, media_stems, folder_set)
    }


def listed_rows(
    fs: fsspec.AbstractFileSystem,
    root: str,
    spec: str,
    found: dict[str, dict[str, Any]],
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    since: float | None = None,
    versions: bool = False,
    *,
    folders: Iterable[str] = (),
    confine_to: str | None = None,
    counts: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Input rows (``uri``, ``media_type``, ``bytes``; ``versions``: ``content_version``, see
    :func:`~vqpipe.io.fs.content_version`) of listed files under ``root``, sorted.

    Left out: a job's own files inside a quality table's folder (:func:`in_table_folder`;
    other ``_``- or ``.``-prefixed names are inputs: ``_DSC0001.JPG``, ``_next/``) and
    producers' sidecars (:func:`~vqpipe.io.media_types.sidecar_of`: img2dataset's ``.json`` /
    ``.txt`` beside each image; counted in ``counts["sidecars"]``, never error rows).
    ``folders``: paths of the folders beside the listed files (a listing of one level).
    ``include`` / ``exclude``: globs on the path relative to ``root``; an ``exclude`` glob
    without ``/`` also drops a path when it matches any one name in it, as in
    ``.gitignore`` (``--exclude '.*'`` drops hidden files and folders). ``since``: on the
    modification time. ``confine_to`` (``--root``, local listings): a file whose real path
    leaves it (a symlink pointing outside) is an ``outside-root`` error row, never read."""
    files = {p: i for p, i in found.items() if i.get("type") != "directory"}
    rels = {p: p[len(root) :].lstrip("/") for p in files}
    tables = table_folders(rels.values())
    sidecars_here = sidecars(files, folders)
    rows, skipped = [], 0
    for path, info in sorted(files.items()):
        rel = rels[path]
        if in_table_folder(rel, tables):
            continue
        if include and not any(fnmatch.fnmatch(rel, pat) for pat in include):
            continue
        if any(_excluded(rel, pat) for pat in exclude):
            continue
        if since is not None and modified_time(info) <= since:
            continue
        if path in sidecars_here:
            skipped += 1
            continue
        kind = media_type_from_name(path)
        uri, printable = printable_uri(join_uri(fs, path, spec))
        if not printable:
            kind = INVALID_NAME
        elif confine_to is not None and not confined(path, confine_to):
            kind = OUTSIDE_ROOT
        row = {"uri": uri, "media_type": kind, "bytes": int(info.get("size") or 0)}
        if versions:
            row["content_version"] = content_version(info)
        rows.append(row)
    if counts is not None:
        counts["sidecars"] = counts.get("sidecars", 0) + skipped
    return rows
