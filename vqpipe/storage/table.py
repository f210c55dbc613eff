"""The quality table as one object: its URI and storage options resolved to a filesystem once,
and every operation on the folder — list the committed parts, commit, lock, record the job,
quarantine, stage and swap — in one place.

The layout of a table folder (only committed parts end in ``.parquet``; job state is in
``_``-prefixed names, which pyarrow, pandas and Ray Data skip)::

    <out>/part-<sig>-<shard>-<fragment>[-last].parquet   committed parts
    <out>/_job.json                                       the last job's record
    <out>/_lock/                                          the lock (see :mod:`.lock`)
    <out>/_next/                                          a --no-resume run's staged table
    <out>/_quarantine/                                    damaged parts moved aside
"""

from __future__ import annotations

import json
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq

from vqpipe.io.fs import is_local, join_uri, url_to_fs
from vqpipe.schema import URI
from vqpipe.storage.damaged import readable_parts, warn_damaged
from vqpipe.storage.lock import TableLock
from vqpipe.storage.names import COMMITTED, JOB_RECORD, LOCK, QUARANTINE, STAGING, WRITE_PROBE
from vqpipe.storage.parts import complete_pieces, merge_pieces, parse_part, visible_parts


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
    def parts(self, visible: bool = True) -> list[str]:
        """The committed ``part-*.parquet`` files (store paths, sorted; temporary files never;
        pieces whose whole part exists only when ``visible`` is False)."""
        if not self.fs.exists(self.root):
            return []
        parts = sorted(
            p
            for p in self.fs.ls(self.root, detail=False)
            if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet")
        )
        return visible_parts(parts) if visible else parts

    def readable_parts(self) -> list[str]:
        """:meth:`parts` whose footers read (each other one named in a warning line)."""
        return readable_parts(self.fs, self.parts())

    def foreign_parts(self, sig: str) -> list[str]:
        """Parts written under another job signature."""
        return [p for p in self.parts() if (parse_part(p) or {}).get("sig") != sig]

    def uris(self, parts: list[str]) -> set[str]:
        """The ``uri`` values of ``parts``."""
        done: set[str] = set()
        for part in parts:
            with self.fs.open(part, "rb") as fh:
                done.update(pq.ParquetFile(fh).read(columns=[URI]).column(URI).to_pylist())
        return done

    def rows(self, parts: list[str]) -> int:
        """Rows of ``parts``, from their footers."""
        total = 0
        for part in parts:
            with self.fs.open(part, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total

    def settle_pieces(self) -> None:
        """Finish what a killed job left between a fragment's last piece and its merge: pieces
        that cover their fragment are merged, pieces whose whole part exists are deleted."""
        parts = self.parts(visible=False)
        shown = set(visible_parts(parts))
        for path in parts:
            if path not in shown:
                self.fs.rm(path)
        for whole, pieces in complete_pieces(sorted(shown)).items():
            merge_pieces(self.uri, self.storage_options, whole, pieces)

    def read_pandas(self) -> pd.DataFrame:
        """Every committed, readable part as one DataFrame (a damaged part: a warning line)."""
        frames = []
        for part in self.readable_parts():
            with self.fs.open(part, "rb") as fh:
                frames.append(pq.read_table(fh).to_pandas())
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def quarantine(self, part: str, why: str) -> str:
        """Move a damaged part to ``_quarantine/`` (kept for a look, never read again), with a
        warning line; its rows are then scored again."""
        target = f"{self.path(QUARANTINE)}/{part.rsplit('/', 1)[-1]}"
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
        """Mark a staged table complete: the next swap puts it in place of the parts."""
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
        sig = self.fs.cat_file(marker).decode().strip()
        staged = [p for p in staging.parts() if (parse_part(p) or {}).get("sig") == sig]
        new = {p.rsplit("/", 1)[-1] for p in staged}
        for part in self.parts(visible=False):
            if part.rsplit("/", 1)[-1] not in new:
                self.fs.rm(part)
        for part in staged:
            self.fs.mv(part, self.path(part.rsplit("/", 1)[-1]))
        self.fs.rm(staging.root, recursive=True)

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
