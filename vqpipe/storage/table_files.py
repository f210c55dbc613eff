"""A table's readable parts and their unified schema, for what reads a table whole with
pyarrow (``vqpipe filter``, the reward commands); a damaged part is named and skipped."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vqpipe.errors import UserError
from vqpipe.storage.damaged import readable_parts
from vqpipe.storage.table import QualityTable


def table_parts(table: str, storage_options: dict[str, Any] | None) -> tuple[Any, list[str]]:
    """The filesystem and the committed parts of a job's output (or one Parquet file); a
    directory without ``part-*.parquet`` files gives its other ``*.parquet`` files (a Parquet
    dataset written by another tool; hidden and ``_`` files excluded)."""
    quality = QualityTable(table, storage_options)
    fs, root = quality.fs, quality.root
    try:
        if fs.isfile(root):
            return fs, [root]
        if not fs.isdir(root):
            raise UserError(f"no quality table at {table} (no such file or directory)")
        parts = quality.parts() or sorted(
            p
            for p in fs.ls(root, detail=False)
            if p.endswith(".parquet") and not p.rsplit("/", 1)[-1].startswith((".", "_"))
        )
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read {table}: {type(exc).__name__}: {exc}") from None
    if not parts:
        raise UserError(
            f"no quality table at {table}: no part-*.parquet files (the --out of vqpipe score)"
        )
    parts = readable_parts(fs, parts)  # a damaged part: one warning line naming it
    if not parts:
        raise UserError(f"no readable part in {table}")
    return fs, parts


def table_schema(fs: Any, parts: list[str], table: str) -> tuple[pa.Schema, list[pa.Schema]]:
    """The parts' unified schema (without metadata; nulls widen to the other parts' types)
    and each part's own schema (with its metadata)."""
    try:
        schemas = []
        for part in parts:
            with fs.open(part, "rb") as fh:
                schemas.append(pq.read_schema(fh))
        schema = pa.unify_schemas(
            [s.remove_metadata() for s in schemas], promote_options="permissive"
        )
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read {table}: {type(exc).__name__}: {exc}") from None
    return schema, schemas
