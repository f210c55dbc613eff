"""The quality table as one object: its URI and storage options resolved to a filesystem once,
and every operation on the folder — list the committed parts, commit, lock, record the job,
quarantine, stage and swap — in one place.

The layout of a table folder: only committed parts end in ``.parquet``, so ``*.parquet`` and
``**/*.parquet`` globs read the table at any moment; everything else is in ``_``- or
``.``-prefixed names, which pyarrow, pandas and Ray Data skip given the folder::

    <out>/part-<sig>-<shard>-<fragment>[-last].parquet   committed parts: the table
    <out>/_piece.part-<sig>-<fragment>.r<lo>-<hi>of<n>    pieces of a part being written
    <out>/.vqpipe-tmp-<uuid>                               a part being written (local disks)
    <out>/_job.json                                       the last job's record
    <out>/_lock/<generation>.json                         the lock (see :mod:`.lock`)
    <out>/_dedupe_pending                                 a repeats pass still owed
    <out>/_next/part-….staged, _next/_COMMITTED           a --no-resume run's staged table
    <out>/_quarantine/part-….parquet.damaged              damaged parts moved aside
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import fsspec
import pyarrow.parquet as pq

from vqpipe.io.fs import is_local, join_uri, url_to_fs
from vqpipe.schema import CONTENT_VERSION, URI
from vqpipe.storage.damaged import readable_parts, warn_damaged
from vqpipe.storage.lock import TableLock
from vqpipe.storage.names import (
    COMMITTED,
    DAMAGED_SUFFIX,
    JOB_RECORD,
    LOCK,
    QUARANTINE,
    STAGED_SUFFIX,
    STAGING,
    WRITE_PROBE,
)
from vqpipe.storage.parts import complete_pieces, is_whole, merge_pieces, parse_part

if TYPE_CHECKING:  # pandas stays out of the worker-side modules that import the storage layer
    import pandas as pd


class QualityTable:
    """A quality table folder at ``uri`` (local path or fsspec URI)."""

    def __init__(self, uri: str, storage_options: dict[str, Any] | None = None) -> None:
        self.uri = str(uri)
        self.storage_options = dict(storage_options or {})
        fs, root = url_to_fs(self.uri, self.storage_options)
        self.fs: fsspec.AbstractFileSystem = fs
        self.root: str = root.rstrip("/")

    def __repr__(self) -> str:
        return f"QualityTable({self.uri!r})"

    # ------------------------------------------------------------------ paths
    def path(self, name: str) -> str:
        """The store path of ``name`` inside the table folder."""
        return f"{self.root}/{name}"

    def uri_of(self, path: str) -> str:
        """A store path of this table's filesystem as a URI in the style of :attr:`uri` (what
        Ray tasks open, with the same storage options)."""
        return join_uri(self.fs, path, self.uri)

    @property
    def local(self) -> bool:
        return is_local(self.fs)

    def exists(self) -> bool:
        self.fs.invalidate_cache(self.root)
        return bool(self.fs.exists(self.root))

    def create(self) -> None:
        """Create the folder (a no-op on object stores); a local one gets a write probe, which a
        full disk or a squashed NFS root fails (a permission check passes them)."""
        self.fs.makedirs(self.root, exist_ok=True)
        if self.local:
            probe = self.path(WRITE_PROBE)
            self.fs.pipe(probe, b"ok")
            self.fs.rm(probe)

    def remove_if_empty(self) -> None:
        if self.exists() and not self.fs.ls(self.root):
            self.fs.rm(self.root, recursive=True)

    # ------------------------------------------------------------------ parts
    def parts(self, pieces: bool = False) -> list[str]:
        """The whole parts (store paths, sorted): the table — every ``part-*.parquet`` at the
        top of the folder (``*.staged`` in a staging folder), ours or written by another tool.
        ``pieces``: the pieces of parts being written too (never read as the table)."""
        self.fs.invalidate_cache(self.root)  # Ray workers wrote parts since the last listing
        try:
            names = self.fs.ls(self.root, detail=False)
        except FileNotFoundError:
            return []
        found = []
        for path in names:
            name = path.rsplit("/", 1)[-1]
            info = parse_part(name)
            piece = info is not None and info["rows"] is not None
            whole = name.startswith("part-") and name.endswith((".parquet", STAGED_SUFFIX))
            if (whole and not piece) or (piece and pieces):
                found.append(path)
        return sorted(found)

    def readable_parts(self) -> list[str]:
        """:meth:`parts` whose footers read (each other one named in a warning line)."""
        return readable_parts(self.fs, self.parts())

    def foreign_parts(self, sig: str) -> list[str]:
        """Parts written under another job signature."""
        return [p for p in self.parts() if (parse_part(p) or {}).get("sig") != sig]

    def uri_versions(self, parts: list[str]) -> dict[str, str | None]:
        """URI → the ``content_version`` its row was read from (None where the part predates
        versions), over ``parts``."""
        done: dict[str, str | None] = {}
        for part in parts:
            with self.fs.open(part, "rb") as fh:
                parquet = pq.ParquetFile(fh)
                names = parquet.schema_arrow.names
                columns = [c for c in (URI, CONTENT_VERSION) if c in names]
                table = parquet.read(columns=columns)
            uris = table.column(URI).to_pylist()
            versions = (
                table.column(CONTENT_VERSION).to_pylist()
                if CONTENT_VERSION in table.column_names
                else [None] * len(uris)
            )
            done.update(zip(uris, versions, strict=True))
        return done

    def all_have(self, parts: list[str], column: str) -> bool:
        """Whether every part of ``parts`` has ``column`` (their footers say)."""
        for part in parts:
            with self.fs.open(part, "rb") as fh:
                if column not in pq.read_schema(fh).names:
                    return False
        return True

    def rows(self, parts: list[str]) -> int:
        """Rows of ``parts``, from their footers."""
        total = 0
        for part in parts:
            with self.fs.open(part, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total

    def settle_pieces(self) -> None:
        """Finish what a killed job left between a fragment's pieces and its merge: pieces
        that cover their fragment are merged; pieces whose whole part exists, and pieces of
        fragments that never came whole (their rows are not in the table), are deleted."""
        found = self.parts(pieces=True)
        complete = complete_pieces(found)
        for whole, pieces in complete.items():
            merge_pieces(self.uri, self.storage_options, whole, pieces)
        merged = {p for pieces in complete.values() for p in pieces}
        for path in found:
            if not is_whole(path) and path not in merged:
                self.fs.rm(path)

    def read_pandas(self) -> pd.DataFrame:
        """Every committed, readable part as one DataFrame (a damaged part: a warning line)."""
        import pandas as pd

        frames = []
        for part in self.readable_parts():
            with self.fs.open(part, "rb") as fh:
                frames.append(pq.read_table(fh).to_pandas())
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def quarantine(self, part: str, why: str) -> str:
        """Move a damaged part to ``_quarantine/`` (kept for a look, never read again), with a
        warning line; its rows are then scored again."""
        target = f"{self.path(QUARANTINE)}/{part.rsplit('/', 1)[-1]}{DAMAGED_SUFFIX}"
        self.fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        self.fs.mv(part, target)
        warn_damaged(part, why, f"moved to {target}; its rows are scored again")
        return target

    # ------------------------------------------------------------------ staging and swap
    def staging(self) -> QualityTable:
        """Where ``--no-resume`` writes (``<out>/_next``), as a table of its own on the same
        store (a bare path would be read as a local one, whatever store the table is on)."""
        return QualityTable(self.uri_of(self.path(STAGING)), self.storage_options)

    def mark_complete(self, sig: str) -> None:
        """Mark a staged table complete: the next swap puts its parts of signature ``sig``
        (all of them when empty) in place of the table's."""
        self.fs.pipe(self.path(COMMITTED), sig.encode())

    def finish_replacement(self) -> None:
        """Complete or discard a ``--no-resume`` run: a staged table with its commit marker
        replaces the parts (idempotent, so a crash mid-swap is finished by the next run); one
        without the marker (the run failed or was killed) is dropped and the parts stay."""
        staging = self.staging()
        if not staging.exists():
            return
        marker = staging.path(COMMITTED)
        if not self.fs.exists(marker):
            self.fs.rm(staging.root, recursive=True)
            return
        # The marker names the committed run's signature: parts of any other run that reached
        # the staging folder (a killed run's late writes) are dropped, never swapped in.
        sig = self.fs.cat_file(marker).decode().strip()  # empty: a table of another writer
        staged = [p for p in staging.parts() if not sig or (parse_part(p) or {}).get("sig") == sig]
        names = {p: self._committed_name(p) for p in staged}
        for part in self.parts(pieces=True):
            if part.rsplit("/", 1)[-1] not in set(names.values()):
                self.fs.rm(part)
        for part, name in names.items():
            self.fs.mv(part, self.path(name))
        self.fs.rm(staging.root, recursive=True)

    @staticmethod
    def _committed_name(staged: str) -> str:
        name = staged.rsplit("/", 1)[-1]
        return name[: -len(STAGED_SUFFIX)] + ".parquet" if name.endswith(STAGED_SUFFIX) else name

    # ------------------------------------------------------------------ the job record
    def write_record(self, record: dict[str, Any]) -> None:
        self.fs.pipe(self.path(JOB_RECORD), json.dumps(record, indent=2, default=str).encode())

    def read_record(self) -> dict[str, Any] | None:
        """The last job's record, or None when there is none (or it does not parse)."""
        try:
            return json.loads(self.fs.cat_file(self.path(JOB_RECORD)))
        except (FileNotFoundError, ValueError):
            return None

    # ------------------------------------------------------------------ the lock
    def lock(self) -> TableLock:
        """The table's lock (``with table.lock() as lock:``; see :mod:`vqpipe.storage.lock`)."""
        folder = self.path(LOCK)
        return TableLock(self.fs, folder, self.uri_of(folder), self.storage_options)


def read_quality_table(output: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """All committed parts of a quality table as one DataFrame (temporary files ignored; a
    damaged part: a warning line)."""
    return QualityTable(output, storage_options).read_pandas()
