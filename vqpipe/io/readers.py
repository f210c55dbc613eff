"""The reader layer: one interface every input kind implements, and the one options object.

A job names its input kind (``--input-format``, or :func:`vqpipe.io.input_format.detect_format`
reads it off the input) and its shards (:func:`vqpipe.io.input_format.input_shard_versions`, or
the folders of a listing); a Ray task then reads one shard with :func:`read_tables`, which
dispatches to the kind's :class:`Reader`:

========== ====================================================== ===============================
kind       shard                                                  reader
========== ====================================================== ===============================
files      a folder (or a file, a glob) of media files            :mod:`vqpipe.io.sources`
manifest   a Parquet / CSV / JSONL file with a URI column          :mod:`vqpipe.io.manifest`
webdataset a ``.tar`` (``.tar.gz`` …)                              :mod:`vqpipe.io.webdataset`
parquet    a Parquet file with media bytes, or an Arrow IPC file  :mod:`vqpipe.io.media_parquet`,
           (a Hugging Face ``save_to_disk`` folder's shards)      :mod:`vqpipe.io.hf_arrow`
========== ====================================================== ===============================

Every reader yields Arrow tables of input rows with ``uri``, ``media_type`` and ``error``
(``read: …`` for an input that cannot be read: an error row, never a gap), bounded in rows
(``rows``) and in media bytes; what a file holds is decided by one table of names
(:mod:`vqpipe.io.media_types`), URIs by one resolver (:func:`vqpipe.io.fs.url_to_fs`), and
every byte is read within ``max_bytes`` and ``read_timeout_s``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

from vqpipe.io.media_types import (
    ARROW_SUFFIXES,
    MANIFEST_SUFFIXES,
    PARQUET_SUFFIXES,
    TAR_SUFFIXES,
)
from vqpipe.schema import BYTES, CONTENT_VERSION, ERROR, MEDIA_TYPE, URI


@dataclass(frozen=True)
class ReadOptions:
    """What every reader may need, from the job's options (CLI flags in brackets)."""

    rows: int = 256
    """Rows per table at most (``--rows-per-file``: the commit unit)."""
    max_bytes: int | None = None
    """Media bytes per input at most (``--max-bytes``)."""
    read_timeout_s: float | None = None
    """Wall-clock limit of one read (``--read-timeout``)."""
    root: str | None = None
    """Inputs must stay inside it (``--root``)."""
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    since: float | None = None
    """Listings: only files modified after this POSIX time (``--since``)."""
    uri_column: str = "uri"
    media_column: str | None = None
    key_column: str | None = None
    reserved: frozenset[str] = frozenset()
    """The job's output columns: a carried input column of that name becomes ``input_<name>``."""
    types: dict[str, str] | None = None
    """Manifests: the one type of each column over all the job's shards."""
    spec: str = ""
    """The job's input as given (listings resolve their files against it)."""
    output: str = ""
    """The job's own output: never an input."""

    @classmethod
    def of(cls, options: Mapping[str, Any] | ReadOptions) -> ReadOptions:
        """From a job's options mapping (keys that are not fields are ignored)."""
        if isinstance(options, ReadOptions):
            return options
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in options.items() if k in fields and v is not None}
        for name in ("include", "exclude"):
            if name in values:
                values[name] = tuple(values[name])
        if "reserved" in values:
            values["reserved"] = frozenset(values["reserved"])
        return cls(**values)


class Reader:
    """One input kind: the shard names it reads in a folder or glob, and its tables."""

    kind: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...] | None] = None
    """Names a folder or glob contributes as shards (None: every file)."""

    def tables(
        self, uri: str, options: ReadOptions, storage_options: dict[str, Any] | None
    ) -> Iterator[pa.Table]:
        raise NotImplementedError


class WebDatasetReader(Reader):
    kind = "webdataset"
    suffixes = TAR_SUFFIXES

    def tables(self, uri, options, storage_options):
        from vqpipe.io.webdataset import iter_webdataset_batches

        return iter_webdataset_batches(
            uri, storage_options, batch_rows=options.rows, max_bytes=options.max_bytes
        )


class MediaTableReader(Reader):
    """Parquet with media bytes, and Arrow IPC files (HF ``save_to_disk``) of the same rows."""

    kind = "parquet"
    suffixes = (*PARQUET_SUFFIXES, *ARROW_SUFFIXES)

    def tables(self, uri, options, storage_options):
        from vqpipe.io.hf_arrow import arrow_media_tables
        from vqpipe.io.media_parquet import MediaPaths, MediaRows, parquet_media_tables

        paths = MediaPaths(  # HF Image cells that name a file ({bytes: null, path})
            root=options.root,
            storage_options=storage_options,
            max_bytes=options.max_bytes,
            timeout_s=options.read_timeout_s,
        )
        rows = MediaRows(
            uri,
            media_column=options.media_column,
            key_column=options.key_column,
            max_bytes=options.max_bytes,
            reserved=options.reserved,
            paths=paths,
        )
        arrow = uri.lower().endswith(ARROW_SUFFIXES)
        read = arrow_media_tables if arrow else parquet_media_tables
        return read(rows, storage_options, options.rows)


class ManifestReader(Reader):
    kind = "manifest"
    suffixes = MANIFEST_SUFFIXES

    def tables(self, uri, options, storage_options):
        from vqpipe.io.manifest import manifest_tables

        return manifest_tables(uri, options, storage_options)


class FilesReader(Reader):
    """A folder of a ``files`` input (with ``top``: only its own files), a file or a glob: one
    table of listed rows (``uri``, ``media_type``, ``bytes``, ``error``, ``content_version``)."""

    kind = "files"

    def __init__(self, top: bool = False, counts: dict[str, int] | None = None):
        self.top, self.counts = top, counts

    def tables(self, uri, options, storage_options):
        from vqpipe.io.sources import folder_rows

        rows = folder_rows(
            options.spec, uri, options, storage_options, top=self.top, counts=self.counts
        )
        yield pa.Table.from_pylist(rows, schema=LISTED)


LISTED = pa.schema(
    [
        (URI, pa.string()),
        (MEDIA_TYPE, pa.string()),
        (BYTES, pa.int64()),
        (ERROR, pa.string()),
        (CONTENT_VERSION, pa.string()),
    ]
)
"""The columns of a listing's rows."""

READERS: dict[str, Reader] = {
    r.kind: r for r in (FilesReader(), ManifestReader(), WebDatasetReader(), MediaTableReader())
}


def read_tables(
    kind: str,
    uri: str,
    options: Mapping[str, Any] | ReadOptions,
    storage_options: dict[str, Any] | None,
) -> Iterator[pa.Table]:
    """The tables of one shard of an input of ``kind`` (see the module docstring)."""
    if kind not in READERS:
        raise ValueError(f"input kind {kind!r}: one of {', '.join(READERS)}")
    return READERS[kind].tables(uri, ReadOptions.of(options), storage_options)
