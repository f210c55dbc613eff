"""Input patterns: a file, a directory, a glob or a brace pattern → a sorted list of shard URIs.

Local paths stay plain paths: a name without a ``scheme://`` is never parsed as an fsspec URL
chain (``a::b.tar`` is a file name), and storage options never reach the local filesystem.
``file://`` URLs are local too; every other URL goes through fsspec with the storage options.

Brace patterns follow WebDataset's ``braceexpand`` (``shard-{00000..00999}.tar``, ``{a,b}``,
nesting, steps, ``\\{`` escapes). The expander is written here (about 50 lines) rather than
taken from the ``braceexpand`` package: that package is not installed in the project's shared
environment and adding a dependency for this little is not worth the churn.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
from collections.abc import Iterator, Sequence
from itertools import islice
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from vqpipe.io.fs import url_to_fs

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(?:::[A-Za-z][A-Za-z0-9+.\-]*)*://")
_GLOB_CHARS = frozenset("*?[")
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$")
_CHAR_RANGE = re.compile(r"^([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?$")
_UNESCAPE = re.compile(r"\\([\\{},])")


# ---------------------------------------------------------------------------------------------
# brace expansion


def _scan(text: str, start: int = 0) -> Iterator[tuple[int, str, int]]:
    """(index, character, brace depth once it is read) of each unescaped character of
    ``text`` from ``start`` (an escape ``\\x`` and the character it escapes are passed over)."""
    depth, i = 0, start
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
        yield i, char, depth
        i += 1


def _matching_brace(text: str, start: int) -> int:
    """Index of the ``}`` closing the ``{`` at ``start``; -1 when unbalanced."""
    for i, char, depth in _scan(text, start):
        if char == "}" and depth == 0:
            return i
    return -1


def _split_commas(text: str) -> list[str]:
    """Split at commas outside nested braces (escapes kept)."""
    parts, last = [], 0
    for i, char, depth in _scan(text):
        if char == "," and depth == 0:
            parts.append(text[last:i])
            last = i + 1
    parts.append(text[last:])
    return parts


def _range_values(text: str) -> list[str] | None:
    match = _RANGE.match(text)
    if match:
        first, last, step = match.group(1), match.group(2), match.group(3)
        a, b = int(first), int(last)
        stride = abs(int(step)) if step and int(step) else 1
        padded = any(
            len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (first, last)
        )
        width = max(len(first), len(last)) if padded else 0
        values = range(a, b + 1, stride) if a <= b else range(a, b - 1, -stride)
        return [f"{v:0{width}d}" for v in values]
    match = _CHAR_RANGE.match(text)
    if match:
        a, b = ord(match.group(1)), ord(match.group(2))
        stride = abs(int(match.group(3))) if match.group(3) and int(match.group(3)) else 1
        values = range(a, b + 1, stride) if a <= b else range(a, b - 1, -stride)
        return [chr(v) for v in values]
    return None


def _expand(text: str) -> Iterator[str]:
    for i, char, _ in _scan(text):
        if char != "{":
            continue
        end = _matching_brace(text, i)
        if end < 0:
            break  # unbalanced: the rest is literal
        body = text[i + 1 : end]
        parts = _split_commas(body)
        if len(parts) > 1:
            values = [v for part in parts for v in _expand(part)]
        else:
            values = _range_values(body)
        if values is None:  # "{abc}": literal braces, keep scanning inside
            continue
        prefix, rest = text[:i], list(_expand(text[end + 1 :]))
        for value in values:
            for tail in rest:
                yield prefix + value + tail
        return
    yield text


def braceexpand(pattern: str) -> list[str]:
    """All expansions of ``pattern`` in order: ``{00..02}`` → 00, 01, 02; ``{a,b}`` → a, b;
    ``{0..10..5}``, ``{a..c}``, nesting; ``\\{`` ``\\}`` ``\\,`` are literal characters."""
    return [_UNESCAPE.sub(r"\1", value) for value in _expand(pattern)]


# ---------------------------------------------------------------------------------------------
# filesystems


def is_url(spec: str) -> bool:
    """True for ``scheme://…`` (and fsspec chains such as ``simplecache::s3://…``)."""
    return bool(_URL.match(spec))


resolve = url_to_fs
"""Filesystem and path of one input URI: :func:`vqpipe.io.fs.url_to_fs`, the one resolver."""


def _is_chain(spec: str) -> bool:
    return is_url(spec) and "::" in spec.split("://", 1)[0]


def _uri_maker(spec: str):
    """How a path found on the filesystem of ``spec`` is written back in the style of ``spec``."""
    if not is_url(spec):
        return lambda path: path
    if spec.startswith("file://"):
        return lambda path: "file://" + path
    scheme = spec.split("://", 1)[0]
    return lambda path: f"{scheme}://{path.lstrip('/')}"


def has_magic(path: str) -> bool:
    """True when ``path`` holds glob characters (``*``, ``?``, ``[``)."""
    return any(c in _GLOB_CHARS for c in path)


def glob_base(path: str) -> str:
    """The folder of a glob before its first glob character (``d/*/x.jpg`` → ``d``); a path
    without one is its own base."""
    names = path.split("/")
    first = next((i for i, n in enumerate(names) if has_magic(n)), None)
    return path if first is None else "/".join(names[:first]) or "/"


def _hidden(rel: str) -> bool:
    """Hidden files and our own job outputs (``.x``, ``_job.json``, ``_SUCCESS``) are skipped."""
    return any(part.startswith((".", "_")) for part in rel.split("/") if part)


def _suffix_ok(path: str, suffixes: Sequence[str] | None) -> bool:
    return suffixes is None or path.lower().endswith(tuple(s.lower() for s in suffixes))


def _is_dir(info: dict[str, Any]) -> bool:
    return info.get("type") == "directory"


class SymlinkLoopError(OSError):
    """A symlinked folder that points back at a folder above it (``filename``: the link)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "symlink loop"


def find_local(path: str, problems: list[OSError]) -> dict[str, dict[str, Any]]:
    """Files under a local folder, as ``fs.find(detail=True)`` lists them, symlinked folders
    followed; what could not be listed goes to ``problems`` (an unreadable folder, a link
    back to a folder above it: :class:`SymlinkLoopError`), each an error row for the caller.
    fsspec's local ``find`` drops an unreadable folder without a word and does not follow
    links."""
    found: dict[str, dict[str, Any]] = {}
    seen: set[str] = set()
    for top, dirs, names in os.walk(path, onerror=problems.append, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:  # two links to one folder: its files are listed once
            dirs[:] = []
            continue
        seen.add(real)
        for name in list(dirs):
            full = os.path.join(top, name)
            target = os.path.realpath(full)
            if os.path.islink(full) and (real == target or real.startswith(target + os.sep)):
                dirs.remove(name)
                loop = SymlinkLoopError(
                    f"symlink loop: {full} points to {target}, a folder above it"
                )
                loop.filename = full
                problems.append(loop)
        for name in names:
            full = os.path.join(top, name)
            try:
                st = os.stat(full)
            except OSError:  # a broken link: listed, the read stage says why it fails
                st = os.lstat(full)
            found[full] = {"name": full, "size": st.st_size, "type": "file", "mtime": st.st_mtime}
    return found


def _find_files(
    fs: fsspec.AbstractFileSystem, root: str, suffixes: Sequence[str] | None
) -> dict[str, dict[str, Any]]:
    """Files under ``root`` (hidden and ``_*`` names skipped) with their listing info."""
    root = root.rstrip("/")
    out = {}
    if isinstance(fs, LocalFileSystem):  # links followed; a loop or a bad link does not crash
        found = find_local(root, [])
    else:
        found = fs.find(root, withdirs=False, detail=True)
    for path, info in found.items():
        rel = path[len(root) :].lstrip("/")
        if not _hidden(rel) and _suffix_ok(path, suffixes):
            out[path] = info
    return out


def _infos(fs: fsspec.AbstractFileSystem, paths: list[str]) -> dict[str, dict[str, Any] | None]:
    """``info`` of many literal paths with one listing per parent directory (not one request per
    path: a brace pattern of 10,000 shards on S3 is a few list pages, not 10,000 HEADs)."""
    if len(paths) == 1:
        try:
            return {paths[0]: fs.info(paths[0])}
        except FileNotFoundError:
            return {paths[0]: None}
    by_parent: dict[str, list[str]] = {}
    for path in paths:
        by_parent.setdefault(posixpath.dirname(path.rstrip("/")), []).append(path)
    found: dict[str, dict[str, Any] | None] = {}
    for parent, children in by_parent.items():
        try:
            listing = {e["name"].rstrip("/"): e for e in fs.ls(parent, detail=True)}
        except (FileNotFoundError, NotADirectoryError):
            listing = {}
        for path in children:
            found[path] = listing.get(path.rstrip("/"))
    for path, info in found.items():
        if info is None:  # a listing that names it differently: ask once
            with contextlib.suppress(FileNotFoundError):
                found[path] = fs.info(path)
    return found


def expand_inputs(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    storage_options: dict[str, Any] | None = None,
    *,
    suffixes: Sequence[str] | None = None,
) -> list[str]:
    """Sorted, de-duplicated URIs of the files ``spec`` names (see :func:`expand_inputs_info`)."""
    return sorted(expand_inputs_info(spec, storage_options, suffixes=suffixes))


def expand_inputs_info(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    storage_options: dict[str, Any] | None = None,
    *,
    suffixes: Sequence[str] | None = None,
) -> dict[str, dict[str, Any] | None]:
    """The files ``spec`` names, URI → listing info (None inside URL chains), in URI order.

    ``spec``: a file, a directory (listed recursively, hidden and ``_*`` names skipped), a glob
    (``s3://b/shards/*.tar``) or a brace pattern (``shard-{00000..00999}.tar``), or a list of
    them. ``suffixes`` filters directory listings and glob matches (``(".tar",)``); a file named
    explicitly is always kept. A brace expansion naming a missing file raises
    ``FileNotFoundError``, as does a pattern that matches nothing. Inside fsspec URL chains
    (``simplecache::s3://…``) only single files. Meant for shard-level inputs (tars, Parquet
    files, manifest shards): a directory is listed completely.
    """
    specs = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: dict[str, dict[str, Any] | None] = {}
    for one in specs:
        # literal paths per filesystem, checked together (one listing per parent directory)
        groups: dict[str, tuple[fsspec.AbstractFileSystem, Any, list[str]]] = {}
        for pattern in braceexpand(os.fspath(one)):
            fs, path = resolve(pattern, storage_options)
            fs.invalidate_cache()  # versions come from the listing: never a cached one
            if _is_chain(pattern):
                if has_magic(path) or not fs.isfile(path):
                    raise ValueError(f"only single files inside URL chains: {pattern}")
                out[pattern] = None
                continue
            to_uri = _uri_maker(pattern)
            if has_magic(path) and not fs.exists(path):
                out.update(
                    (to_uri(p), i) for p, i in _glob_files(fs, path, suffixes, pattern).items()
                )
            else:
                scheme = pattern.split("://", 1)[0] if is_url(pattern) else ""
                groups.setdefault(scheme, (fs, to_uri, []))[2].append(path)
        for fs, to_uri, literal in groups.values():
            infos = _infos(fs, literal)
            missing = [p for p in literal if infos.get(p) is None]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} of {len(literal)} input(s) not found, "
                    f"e.g. {to_uri(missing[0])}"
                )
            for path in literal:
                if _is_dir(infos[path]):
                    out.update((to_uri(p), i) for p, i in _find_files(fs, path, suffixes).items())
                else:
                    out[to_uri(path)] = infos[path]
    return dict(sorted(out.items()))


def _glob_files(
    fs: fsspec.AbstractFileSystem, path: str, suffixes: Sequence[str] | None, pattern: str
) -> dict[str, dict[str, Any]]:
    """Files a glob matches (matched directories listed); ``_*`` / ``.*`` names skipped
    unless the pattern's own name asks for them."""
    name_hidden = posixpath.basename(path).startswith((".", "_"))
    matches = fs.glob(path, detail=True)
    if not matches:
        raise FileNotFoundError(f"no input matches {pattern}")
    files: dict[str, dict[str, Any]] = {}
    for match, info in sorted(matches.items()):
        if _is_dir(info):
            files.update(_find_files(fs, match, suffixes))
        elif (name_hidden or not _hidden(posixpath.basename(match))) and _suffix_ok(
            match, suffixes
        ):
            files[match] = info
    return files


def _entry_is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows links; a loop (``a -> a``) raises ELOOP
    except OSError:
        return False


def _ls_some(fs: fsspec.AbstractFileSystem, path: str, limit: int) -> list[dict[str, Any]]:
    """At most about ``limit`` entries of one directory, without listing all of a big prefix."""
    if isinstance(fs, LocalFileSystem):
        with os.scandir(path) as entries:
            return [
                {"name": e.path, "type": "directory" if _entry_is_dir(e) else "file"}
                for e in islice(entries, limit)
            ]
    lsdir = getattr(fs, "_lsdir", None)
    if lsdir is not None and getattr(fs, "protocol", None) in ("s3", ("s3", "s3a")):
        # s3fs: one page (MaxItems) instead of the whole prefix; this private method caches the
        # partial listing, so the cache entry is dropped right after. Public ls pages through
        # every object under the prefix, which is what a bounded peek must avoid.
        try:
            items = fsspec.asyn.sync(fs.loop, lsdir, path.rstrip("/"), max_items=limit)
            return list(items)[:limit]
        finally:
            fs.invalidate_cache(path.rstrip("/"))
    return fs.ls(path, detail=True)[:limit]


def peek_files(
    fs: fsspec.AbstractFileSystem, root: str, *, limit: int = 256, max_dirs: int = 64
) -> list[str]:
    """Up to ``limit`` file paths under directory ``root``, visiting at most ``max_dirs``
    directories depth first (a dated tree ``YYYY/MM/DD/*.jpg`` shows its photos, not only its
    folders): enough to tell what a prefix holds without listing it."""
    found: list[str] = []
    stack, visited = [root.rstrip("/")], 0
    base = root.rstrip("/")
    while stack and visited < max_dirs and len(found) < limit:
        current = stack.pop()
        visited += 1
        try:
            entries = sorted(_ls_some(fs, current, limit), key=lambda e: e["name"])
        except (PermissionError, NotADirectoryError):
            continue  # unreadable: the job's listing gives it an error row
        folders = []
        for entry in entries:
            name = entry["name"].rstrip("/")
            if _hidden(name[len(base) :]) or name == current:
                continue
            if _is_dir(entry):
                folders.append(name)
            else:
                found.append(name)
        stack.extend(reversed(folders))
    return found[:limit]
