"""Quality tables (or any Parquet file / dataset) in and out of Ray Data.

Reading reuses ``vqpipe filter``'s part listing and schema unification; writing names the files
``part-<write id>-<task>.parquet``, so what the reward commands write is itself a table that
``vqpipe filter``, ``vqpipe eval`` and these commands read.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import threading
from collections.abc import Iterable
from typing import Any

import pyarrow.parquet as pq

from vqpipe.errors import UserError
from vqpipe.storage import QualityTable
from vqpipe.storage.names import STAGED_SUFFIX
from vqpipe.storage.table_files import table_parts, table_schema


class TableSource:
    """A table's filesystem, parts and unified schema, read on the driver (O(parts))."""

    def __init__(self, table: str, storage_options: dict[str, Any] | None = None) -> None:
        self.table = table
        self.storage_options = storage_options or {}
        self.fs, self.parts = table_parts(table, storage_options)
        self.schema, _ = table_schema(self.fs, self.parts, table)

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def require(self, columns: Iterable[str], what: str) -> None:
        """A :class:`UserError` naming the first of ``columns`` the table lacks."""
        for column in columns:
            if column not in self.schema.names:
                close = difflib.get_close_matches(column, self.schema.names, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UserError(
                    f"{what} {column!r}: no such column in {self.table}{hint} "
                    f"(columns: {', '.join(self.schema.names)})"
                )

    def dataset(self, columns: list[str] | None = None) -> Any:
        """The table as a Ray Dataset (only ``columns`` when given)."""
        import ray

        ds = ray.data.read_parquet(self.parts, filesystem=self.fs, schema=self.schema)
        return ds if columns is None else ds.select_columns(columns)


def output_target(out: str, storage_options: dict[str, Any] | None, source: str) -> QualityTable:
    """The output table (a folder); refuses the input itself and a file."""
    target = QualityTable(out, storage_options)
    if target.root == QualityTable(source, storage_options).root:
        raise UserError(f"--out {out} is the input table: write to a new directory")
    try:
        if target.fs.isfile(target.root):
            raise UserError(f"--out {out} is a file: give a directory for the Parquet dataset")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot write {out}: {type(exc).__name__}: {exc}") from None
    return target


def _part_names(suffix: str) -> Any:
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        """``part-<write id>-<task><suffix>``: the names quality-table readers list."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{write_uuid}-{task_index:06}{suffix}"

        def get_filename_for_block(
            self, block: Any, write_uuid: str, task_index: int, block_index: int
        ) -> str:
            return self.get_filename_for_task(write_uuid, task_index)

    return PartNames()


def write_dataset(
    ds: Any, table: QualityTable, total: int | None = None, unit: str = "rows written"
) -> None:
    """Write ``ds`` as ``table``, replacing what it held only once the new one is complete:
    under the table's lock, Ray Data writes the staging folder (``*.staged``: no reader picks
    them up), which is then swapped in (:meth:`QualityTable.finish_replacement`). A run killed
    half-way leaves the old table; an empty dataset leaves an empty table. The command's
    progress line (:func:`~vqpipe.console.current_progress`) counts the ``unit`` written so
    far, of ``total`` when known."""
    table.create()
    with table.lock() as lock:
        table.finish_replacement()  # what a killed run left: finished or dropped
        staging = table.staging()
        staging.fs.makedirs(staging.root, exist_ok=True)
        with WrittenRows(staging, total, unit):
            ds.write_parquet(
                staging.root,
                filesystem=staging.fs,
                filename_provider=_part_names(STAGED_SUFFIX),
                mode="overwrite",
            )
        staging.fs.makedirs(staging.root, exist_ok=True)
        lock.check()
        staging.mark_complete("")
        table.finish_replacement()


class WrittenRows:
    """While Ray Data writes a staging folder, count the rows of the parts that have landed
    (their footers; a file still being written has none yet) every ``every_s`` seconds into
    the command's progress line. Ray Data's own progress is kept off the terminal (it would
    cut into vqpipe's line), and its write call gives nothing back until it is done."""

    def __init__(
        self, staging: QualityTable, total: int | None, unit: str, every_s: float = 2.0
    ) -> None:
        from vqpipe.console import current_progress

        self.staging, self.total, self.unit, self.every_s = staging, total, unit, every_s
        self.progress = current_progress()
        self.counted: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> WrittenRows:
        if self.progress is not None:
            self.progress.count(0, self.total, self.unit)
            if self.total is not None:  # the counts say it all; else the phase until a part lands
                self.progress.step("")
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, kind: Any, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if kind is None and self.progress is not None:
            self.poll()

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):  # the count is a courtesy
                self.poll()

    def poll(self) -> None:
        """Count the parts landed since the last call; show the sum."""
        for part in self.staging.parts():
            if part not in self.counted:
                try:
                    with self.staging.fs.open(part, "rb") as fh:
                        self.counted[part] = pq.ParquetFile(fh).metadata.num_rows
                except Exception:  # still being written: counted at the next call
                    continue
        assert self.progress is not None
        self.progress.count(sum(self.counted.values()))


def source_rows(source: TableSource) -> int | None:
    """The rows of a table source, from its parts' footers; None when one cannot be read."""
    try:
        total = 0
        for part in source.parts:
            with source.fs.open(part, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
        return total
    except Exception:  # the total is a courtesy; the job's read says what is wrong
        return None


def write_record(table: QualityTable, name: str, record: dict[str, Any]) -> None:
    """``record`` as JSON in the table's folder (``name``: an ``_``-prefixed file, beside the
    parts: options, sources, counts)."""
    table.fs.pipe(table.path(name), json.dumps(record, indent=2, default=str).encode())


def count_rows(table: QualityTable) -> int:
    """Rows of a written table, from the Parquet footers."""
    return table.rows(table.parts())


def ensure_ray(address: str | None = None) -> bool:
    """Connect to ``address`` (else RAY_ADDRESS's cluster, else a local Ray) unless Ray is up;
    returns whether this call started it (the command then shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True
