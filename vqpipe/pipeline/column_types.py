"""Carried column types fixed for every manifest shard of a job before scoring: Parquet shards
by their footers, read on the driver with threads (O(shards)); CSV / JSON lines by Ray tasks
that read them whole."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa

from vqpipe.io.manifest import carried_schema, manifest_chunks
from vqpipe.io.media_types import PARQUET_SUFFIXES
from vqpipe.pipeline.shards import Shard


def _shard_types(
    uri: str, options: dict[str, Any], storage_options: dict[str, Any]
) -> dict[str, str]:
    """One shard's carried column types, as text (Parquet: from the footer; text: the types
    of the whole file as read); empty when it does not read (its reading task makes the
    shard's error row)."""
    import pyarrow.parquet as pq

    from vqpipe.io.patterns import resolve

    try:
        if uri.lower().endswith(PARQUET_SUFFIXES):
            fs, path = resolve(uri, storage_options)
            with fs.open(path, "rb") as fh:
                schema = carried_schema(pq.read_schema(fh))
        else:
            whole = manifest_chunks(uri, 1 << 62, storage_options, uri_column=options["uri_column"])
            schema = next(whole, (0, pa.table({})))[1].schema
    except Exception:
        return {}
    return {f.name: str(f.type) for f in schema}


def _text_types(
    batch: dict[str, np.ndarray], options: dict[str, Any], storage_options: dict[str, Any]
) -> dict[str, np.ndarray]:
    found = [_shard_types(str(u), options, storage_options) for u in batch["uri"]]
    pairs = [(n, t) for types in found for n, t in types.items()]
    names, kinds = [n for n, _ in pairs], [t for _, t in pairs]
    return {"name": np.array(names, object), "type": np.array(kinds, object)}


_NUMERIC = frozenset(
    {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float", "double", "halffloat"}
)


def unified_types(
    shards: list[Shard], options: dict[str, Any], storage_options: dict[str, Any]
) -> dict[str, str]:
    """The carried columns whose types differ between manifest shards, fixed up front for all
    of them: ``double`` when they are all numbers, else ``string`` — so that no two parts of
    the table, and no two blocks Ray Data puts in one batch, disagree on a column's type."""
    if len(shards) < 2:
        return {}
    parquet = [s.uri for s in shards if s.uri.lower().endswith(PARQUET_SUFFIXES)]
    text = [s.uri for s in shards if not s.uri.lower().endswith(PARQUET_SUFFIXES)]
    pairs: list[tuple[str, str]] = []
    with ThreadPoolExecutor(max_workers=16) as pool:  # footers: small, one request each
        for types in pool.map(lambda u: _shard_types(u, options, storage_options), parquet):
            pairs += types.items()
    if text:  # read whole: by Ray tasks, not on the driver
        import ray

        ds = ray.data.from_items([{"uri": u} for u in text], override_num_blocks=len(text))
        ds = ds.map_batches(
            _text_types,
            fn_kwargs={"options": options, "storage_options": storage_options},
            batch_size=1,
            batch_format="numpy",
            num_cpus=0.25,
        )
        pairs += [(str(r["name"]), str(r["type"])) for r in ds.iter_rows()]
    seen: dict[str, set[str]] = {}
    for name, kind in pairs:
        if kind != "null":
            seen.setdefault(name, set()).add(kind)
    return {
        name: "double" if kinds <= _NUMERIC else "string"
        for name, kinds in seen.items()
        if len(kinds) > 1
    }
