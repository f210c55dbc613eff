"""``--input-format auto``: tell a WebDataset, a Parquet-with-bytes, a manifest and a prefix of
files apart from names, Parquet footers and the first bytes of CSV / JSONL files only.

Rules (first match wins), on the first file, the glob's first matches or a bounded peek into a
directory (``peek_files``: a few hundred names, depth first, never the whole prefix):

1. more ``.tar`` shards than media files → ``webdataset`` (img2dataset writes ``.parquet`` /
   ``_stats.json`` beside its tars: the tars win);
2. image or video files present → ``files`` (img2dataset's "files" layout has ``.json`` /
   ``.txt`` beside each image: still files; a tree of photos with one stray tar: files);
3. tables (Parquet first, then Arrow IPC — a Hugging Face ``save_to_disk`` folder, whose
   ``.json`` files are not manifests —, then CSV / JSONL): ``media_column`` named and present
   → ``parquet``; a ``uri_column`` column → ``manifest``; a media-bytes column
   (``find_media_column``) → ``parquet``; neither → ``ValueError`` (say ``--input-format``);
4. anything else → ``files``.
"""

from __future__ import annotations

import csv
import io
import json
import os
import posixpath
from collections.abc import Sequence
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from vqpipe.io.fs import content_version
from vqpipe.io.media_parquet import find_media_column
from vqpipe.io.media_types import (
    ARROW_SUFFIXES,
    COMPRESSION_SUFFIXES,
    MEDIA_EXTENSIONS,
    PARQUET_SUFFIXES,
    TAR_SUFFIXES,
)
from vqpipe.io.patterns import (
    braceexpand,
    expand_inputs_info,
    has_magic,
    peek_files,
    resolve,
)
from vqpipe.io.readers import READERS

InputFormat = Literal["files", "manifest", "webdataset", "parquet"]
INPUT_FORMATS: tuple[str, ...] = ("auto", "files", "manifest", "webdataset", "parquet")
FORMAT_SUFFIXES: dict[str, tuple[str, ...] | None] = {
    kind: reader.suffixes for kind, reader in READERS.items()
}
"""Which names a directory or glob contributes as shards of each format."""
HEAD_BYTES = 64 * 1024


def _kind(name: str) -> str | None:
    lower = posixpath.basename(name).lower()
    if lower.endswith(TAR_SUFFIXES):
        return "tar"
    for suffix in COMPRESSION_SUFFIXES:
        if lower.endswith(suffix):
            lower = lower[: -len(suffix)]
            break
    ext = posixpath.splitext(lower)[1]
    if ext in PARQUET_SUFFIXES:
        return "parquet"
    if ext in ARROW_SUFFIXES:
        return "arrow"
    if ext == ".csv":
        return "csv"
    if ext in (".jsonl", ".ndjson", ".json"):
        return "json"
    if ext in MEDIA_EXTENSIONS:
        return "media"
    return None


def _head_text(fs, path: str) -> str:
    with fs.open(path, "rb", compression="infer") as fh:
        return fh.read(HEAD_BYTES).decode("utf-8", errors="replace")


def table_columns(fs, path: str) -> tuple[list[str], Any]:
    """Column names of a Parquet / CSV / JSON(L) file and, for Parquet, its Arrow schema; reads
    the Parquet footer or the first 64 KiB only."""
    kind = _kind(path)
    if kind == "parquet":
        with fs.open(path, "rb") as fh:
            schema = pq.ParquetFile(fh).schema_arrow
        return list(schema.names), schema
    if kind == "arrow":
        with fs.open(path, "rb") as fh:  # the IPC stream format (datasets), or the file format
            magic = fh.read(6)
            fh.seek(0)
            schema = (pa.ipc.open_file if magic == b"ARROW1" else pa.ipc.open_stream)(fh).schema
        return list(schema.names), schema
    text = _head_text(fs, path)
    if kind == "csv":
        header = next(csv.reader(io.StringIO(text)), [])
        return [h.strip() for h in header], None
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array: its first object
        stripped = stripped[1:].lstrip()
    try:
        first, _ = json.JSONDecoder().raw_decode(stripped)
    except ValueError:
        return [], None
    return (list(first) if isinstance(first, dict) else []), None


def _sample_files(spec: str, storage_options: dict[str, Any] | None, peek: int):
    first = braceexpand(spec)[0]
    fs, path = resolve(first, storage_options)
    if has_magic(path) and not fs.exists(path):
        if _kind(path) in ("media", "tar"):  # "*.jpg", "shard-*.tar": no need to list a prefix
            return fs, [path]
        matches = sorted(fs.glob(path, detail=True).items())
        files = [p for p, info in matches if info.get("type") != "directory"][:peek]
        dirs = [p for p, info in matches if info.get("type") == "directory"]
        if not files and dirs:
            files = peek_files(fs, dirs[0], limit=peek)
        if not matches:
            raise FileNotFoundError(f"no input matches {first}")
        return fs, files
    if fs.isdir(path):
        return fs, peek_files(fs, path, limit=peek)
    if not fs.exists(path):
        raise FileNotFoundError(f"input not found: {first}")
    return fs, [path]


def detect_format(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    storage_options: dict[str, Any] | None = None,
    *,
    uri_column: str = "uri",
    media_column: str | None = None,
    peek: int = 256,
) -> InputFormat:
    """``"files"``, ``"manifest"``, ``"webdataset"`` or ``"parquet"`` for an input spec (a file,
    directory, glob, brace pattern, or a list of them: the first decides). Rules in the module
    docstring; ``ValueError`` for tables that are neither a manifest nor media Parquet."""
    first = spec if isinstance(spec, (str, os.PathLike)) else spec[0]
    fs, files = _sample_files(os.fspath(first), storage_options, peek)
    kinds = [_kind(p) for p in files]
    media, tars = kinds.count("media"), kinds.count("tar")
    if tars > media:  # decided in bulk: a tree of photos with one stray tar is photos
        return "webdataset"
    if media:
        return "files"
    # Parquet, then Arrow (a save_to_disk folder: its .json files are not manifests)
    tables = [p for p, k in zip(files, kinds, strict=True) if k == "parquet"]
    tables += [p for p, k in zip(files, kinds, strict=True) if k == "arrow"]
    tables += [p for p, k in zip(files, kinds, strict=True) if k in ("csv", "json")]
    if not tables:
        return "files"
    names, schema = table_columns(fs, tables[0])
    if schema is not None and media_column is not None and media_column in names:
        return "parquet"
    if uri_column in names:
        return "manifest"
    if schema is None:
        raise ValueError(
            f"{tables[0]}: no {uri_column!r} column for a manifest (columns: {', '.join(names)});"
            " name it with --uri-column, or set --input-format"
        )
    try:
        find_media_column(schema, media_column)
    except ValueError as exc:
        raise ValueError(
            f"{tables[0]}: neither a manifest (no {uri_column!r} column) nor Parquet with media "
            f"bytes ({exc}); set --uri-column, --media-column or --input-format"
        ) from None
    return "parquet"


ROW_COUNT_THREADS = 32


def shard_rows(uris: Sequence[str], storage_options: dict[str, Any] | None = None) -> list[int]:
    """The rows of each Parquet (from its footer) or Arrow IPC file (from its batches), read
    concurrently: a plan's row offsets. Raises what the store raised."""
    from concurrent.futures import ThreadPoolExecutor

    from vqpipe.io.hf_arrow import arrow_rows

    def rows(uri: str) -> int:
        if uri.lower().endswith(ARROW_SUFFIXES):
            return arrow_rows(uri, storage_options)
        fs, path = resolve(uri, storage_options)
        with fs.open(path, "rb") as fh:
            return pq.ParquetFile(fh).metadata.num_rows

    with ThreadPoolExecutor(max_workers=min(ROW_COUNT_THREADS, max(1, len(uris)))) as pool:
        return list(pool.map(rows, uris))


def input_shards(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    input_format: str,
    storage_options: dict[str, Any] | None = None,
    **detect_kwargs: Any,
) -> list[str]:
    """Sorted shard URIs of ``spec`` for a format (``"auto"``: ``detect_format`` with
    ``detect_kwargs``); directories and globs contribute only that format's names."""
    return list(input_shard_versions(spec, input_format, storage_options, **detect_kwargs))


def input_shard_versions(
    spec: str | os.PathLike | Sequence[str | os.PathLike],
    input_format: str,
    storage_options: dict[str, Any] | None = None,
    **detect_kwargs: Any,
) -> dict[str, str | None]:
    """Shard URI → its content version (:func:`~vqpipe.io.fs.content_version`, from the
    listing: no request per shard), sorted by URI; see :func:`input_shards`."""
    if input_format not in INPUT_FORMATS:
        raise ValueError(f"input format {input_format!r}: one of {', '.join(INPUT_FORMATS)}")
    if input_format == "auto":
        input_format = detect_format(spec, storage_options, **detect_kwargs)
    found = expand_inputs_info(spec, storage_options, suffixes=FORMAT_SUFFIXES[input_format])
    return {uri: content_version(info) for uri, info in found.items()}
