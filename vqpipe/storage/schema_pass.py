"""The schema pass at the end of every run: the parts' schemas unified
(:func:`vqpipe.storage.schemas.unified_schema`) and the parts that differ rewritten to it,
atomically and fenced (see :mod:`vqpipe.storage.schemas` for the rules)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from vqpipe.storage.parts import write_part
from vqpipe.storage.schemas import canonical, conform, decode_schema, encode_schema, unified_schema

DRIVER_MAX_REWRITES = 256
"""Up to this many parts to rewrite are rewritten on the driver (threads); past it, by Ray
tasks (a type widened across runs rewrites every older part)."""


def _rewrite(path: str, fs: Any, schema: pa.Schema, fence: Any) -> None:
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    write_part(fs, path, conform(table, schema), fence)


def _rewrite_task(
    batch: dict[str, Any], storage_options: dict[str, Any], schema: str, fence: Any
) -> dict[str, Any]:
    from vqpipe.io.fs import url_to_fs

    target = decode_schema(schema)
    for uri in batch["part"]:
        fs, path = url_to_fs(str(uri), storage_options)
        _rewrite(path, fs, target, fence)
    return {"part": list(batch["part"])}


def conform_parts(
    fs: Any,
    schemas: dict[str, pa.Schema],
    fence: Any = None,
    uri_of: Any = None,
    storage_options: dict[str, Any] | None = None,
    start_ray: Any = None,
) -> tuple[pa.Schema | None, int]:
    """Unify ``schemas`` (part path → its schema) and rewrite the parts that differ; returns
    the table's schema (None without parts) and how many parts were rewritten. Many rewrites
    run as Ray tasks when ``start_ray`` is given (``uri_of``: path → URI the tasks open)."""
    if not schemas:
        return None, 0
    parts = sorted(schemas)
    known = {p: canonical(schemas[p]) for p in parts}
    schema = unified_schema(known[p] for p in parts)
    differ = [p for p in parts if not known[p].equals(schema)]
    if len(differ) > DRIVER_MAX_REWRITES and start_ray is not None and uri_of is not None:
        import ray

        start_ray()
        ds = ray.data.from_items([{"part": uri_of(p)} for p in differ])
        kwargs = {
            "storage_options": storage_options or {},
            "schema": encode_schema(schema),
            "fence": fence,
        }
        ds = ds.map_batches(_rewrite_task, fn_kwargs=kwargs, batch_size=16, num_cpus=0.25)
        ds.materialize()
        return schema, len(differ)
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda p: _rewrite(p, fs, schema, fence), differ))
    return schema, len(differ)
