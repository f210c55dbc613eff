"""Quality tables (or any Parquet file / dataset) in and out of Ray Data.

Reading reuses ``vqpipe filter``'s part listing and schema unification; writing names the files
``part-<write id>-<task>.parquet``, so what the reward commands write is itself a table that
``vqpipe filter``, ``vqpipe eval`` and these commands read.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable
from typing import Any

from vqpipe.errors import UserError
from vqpipe.pipeline.filtering import table_parts, table_schema
from vqpipe.storage import QualityTable
from vqpipe.storage.names import STAGED_SUFFIX


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


def write_dataset(ds: Any, table: QualityTable) -> None:
    """Write ``ds`` as ``table``, replacing what it held only once the new one is complete:
    under the table's lock, Ray Data writes the staging folder (``*.staged``: no reader picks
    them up), which is then swapped in (:meth:`QualityTable.finish_replacement`). A run killed
    half-way leaves the old table; an empty dataset leaves an empty table."""
    table.create()
    with table.lock() as lock:
        table.finish_replacement()  # what a killed run left: finished or dropped
        staging = table.staging()
        staging.fs.makedirs(staging.root, exist_ok=True)
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
