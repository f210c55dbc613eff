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
from vqpipe.io.fs import url_to_fs
from vqpipe.pipeline.filtering import table_parts, table_schema


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


def output_target(out: str, storage_options: dict[str, Any] | None, source: str) -> Any:
    """The filesystem and path of an output dataset directory; refuses the input itself."""
    fs, path = url_to_fs(out, storage_options)
    _, src = url_to_fs(source, storage_options)
    if path.rstrip("/") == src.rstrip("/"):
        raise UserError(f"--out {out} is the input table: write to a new directory")
    try:
        if fs.isfile(path.rstrip("/")):
            raise UserError(f"--out {out} is a file: give a directory for the Parquet dataset")
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot write {out}: {type(exc).__name__}: {exc}") from None
    return fs, path.rstrip("/")


def _part_names() -> Any:
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        """``part-<write id>-<task>.parquet``: the names quality-table readers list."""

        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{write_uuid}-{task_index:06}.parquet"

        def get_filename_for_block(
            self, block: Any, write_uuid: str, task_index: int, block_index: int
        ) -> str:
            return self.get_filename_for_task(write_uuid, task_index)

    return PartNames()


def write_dataset(ds: Any, fs: Any, path: str) -> None:
    """Write ``ds`` as the Parquet dataset directory ``path``, replacing what was there (an
    empty dataset leaves an empty directory)."""
    ds.write_parquet(path, filesystem=fs, filename_provider=_part_names(), mode="overwrite")
    fs.makedirs(path, exist_ok=True)


def write_record(fs: Any, path: str, name: str, record: dict[str, Any]) -> None:
    """``record`` as JSON in ``path/name``, beside the parts (options, sources, counts)."""
    fs.pipe(f"{path}/{name}", json.dumps(record, indent=2, default=str).encode())


def count_rows(fs: Any, path: str) -> int:
    """Rows of a written dataset, from the Parquet footers."""
    import pyarrow.parquet as pq

    total = 0
    for part in fs.ls(path, detail=False):
        if part.rsplit("/", 1)[-1].startswith("part-") and part.endswith(".parquet"):
            with fs.open(part, "rb") as fh:
                total += pq.ParquetFile(fh).metadata.num_rows
    return total


def ensure_ray(address: str | None = None) -> bool:
    """Connect to ``address`` (else RAY_ADDRESS's cluster, else a local Ray) unless Ray is up;
    returns whether this call started it (the command then shuts it down)."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    return True
