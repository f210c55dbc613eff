"""A URI that several manifest shards list is scored once: a distributed pass, before scoring,
finds its repeats — without a set of every URI on the driver.

Ray tasks read the URI column of every manifest shard (committed ones too); Ray Data's
``groupby`` (a hash shuffle on ``uri``) counts each URI and finds its first occurrence — the
first in a committed shard if there is one (its row is already written), else the first by
shard order and row; a hash join brings that back to the occurrences of the repeated URIs, and
only the repeats come back to the driver, as ``(shard, row)``. Each reading task then drops its
shard's repeats and counts them.

The cost is one extra read of the manifests' URI column (Parquet reads that column alone;
CSV / JSON lines are read whole) and two shuffles of the URIs (the count, the join): about
twice the size of the URI column over the network, small next to decoding the media they name.
The driver holds the repeats only. A single manifest shard needs no pass: its reading task
drops its own repeats.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from vqpipe.pipeline.schema import URI
from vqpipe.pipeline.shards import Shard, carried_schema, manifest_chunks

_RANK, _ROW, _SHARD = "_rank", "_row", "_shard"


def _uri_rows(
    batch: dict[str, np.ndarray], options: dict[str, Any], storage_options: dict[str, Any]
) -> pa.Table:
    """One shard's string URIs with their rank (committed shards first) and row."""
    column = options["uri_column"]
    out = []
    for uri, index, done in zip(batch["uri"], batch["index"], batch["done"], strict=True):
        try:
            chunks = manifest_chunks(
                str(uri), options["rows"], storage_options, uri_column=column, uri_only=True
            )
            for start, chunk in chunks:
                values = chunk.column(column).to_pylist() if column in chunk.column_names else []
                rows = [i for i, v in enumerate(values) if isinstance(v, str) and v.strip()]
                out.append(
                    pa.table(
                        {
                            URI: pa.array([values[i] for i in rows], pa.string()),
                            _SHARD: pa.array(np.full(len(rows), int(index), np.int64)),
                            _RANK: pa.array(np.full(len(rows), 0 if done else 1, np.int64)),
                            _ROW: pa.array(np.asarray(rows, np.int64) + start),
                        }
                    )
                )
        except Exception:  # the reading task makes the shard's error row; nothing to dedupe
            continue
    schema = pa.schema(
        [(URI, pa.string()), (_SHARD, pa.int64()), (_RANK, pa.int64()), (_ROW, pa.int64())]
    )
    return pa.concat_tables(out) if out else schema.empty_table()


def _key(rank: np.ndarray, shard: np.ndarray, row: np.ndarray) -> np.ndarray:
    """One int64 that orders occurrences: committed shards first, then shard order, then row
    (2^20 shards of 2^32 rows)."""
    return (rank << 52) | (shard << 32) | row


def _keyed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    batch["_key"] = _key(batch[_RANK], batch[_SHARD], batch[_ROW])
    return batch


def _repeated(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The URIs listed more than once, with their first occurrence's key."""
    keep = batch["count()"] > 1
    return {URI: batch[URI][keep], "min(_key)": batch["min(_key)"][keep]}


def _later(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The occurrences that are not their URI's first, in todo shards."""
    keep = (batch["_key"] != batch["min(_key)"]) & (batch[_RANK] == 1)
    return {_SHARD: batch[_SHARD][keep], _ROW: batch[_ROW][keep]}


def _shard_types(
    batch: dict[str, np.ndarray], options: dict[str, Any], storage_options: dict[str, Any]
) -> dict[str, np.ndarray]:
    """One shard's carried column types, as text (Parquet: from the footer)."""
    import pyarrow.parquet as pq

    from vqpipe.io.patterns import resolve

    types = {}
    for uri in batch["uri"]:
        try:
            if str(uri).lower().endswith((".parquet", ".pq")):
                fs, path = resolve(str(uri), storage_options)
                with fs.open(path, "rb") as fh:
                    schema = carried_schema(pq.read_schema(fh))
            else:  # text: the types are those of the whole file as read
                whole = manifest_chunks(
                    str(uri), 1 << 62, storage_options, uri_column=options["uri_column"]
                )
                schema = next(whole, (0, pa.table({})))[1].schema
            types.update({f.name: str(f.type) for f in schema})
        except Exception:  # the reading task makes the shard's error row
            continue
    return {"name": np.array(list(types), object), "type": np.array(list(types.values()), object)}


def unified_types(
    shards: list[Shard], options: dict[str, Any], storage_options: dict[str, Any]
) -> dict[str, str]:
    """The carried columns whose types differ between manifest shards, fixed up front for all
    of them: ``double`` when they are all numbers, else ``string`` — so that no two parts of
    the table, and no two blocks Ray Data puts in one batch, disagree on a column's type.
    One Ray task per shard (Parquet: the footer; CSV / JSON lines: read whole)."""
    import ray

    if len(shards) < 2:
        return {}
    items = [{"uri": s.uri, "format": s.format, "id": s.id} for s in shards]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _shard_types,
        fn_kwargs={"options": options, "storage_options": storage_options},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.25,
    )
    seen: dict[str, set[str]] = {}
    for row in ds.iter_rows():
        if row["type"] != "null":
            seen.setdefault(str(row["name"]), set()).add(str(row["type"]))
    numeric = {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    numeric |= {"float", "double", "halffloat"}
    return {
        name: "double" if kinds <= numeric else "string"
        for name, kinds in seen.items()
        if len(kinds) > 1
    }


def repeated_rows(
    shards: list[Shard],
    committed: set[str],
    options: dict[str, Any],
    storage_options: dict[str, Any],
    partitions: int = 16,
) -> dict[str, list[int]]:
    """``{shard id: rows}`` of the manifest rows to drop from the shards still to read: the
    repeats of a URI listed before (see the module docstring)."""
    import ray

    if len(shards) < 2:
        return {}
    items = [
        {"uri": s.uri, "format": s.format, "id": s.id, "index": i, "done": s.id in committed}
        for i, s in enumerate(shards)
    ]
    ds = ray.data.from_items(items, override_num_blocks=len(items))
    ds = ds.map_batches(
        _uri_rows,
        fn_kwargs={"options": options, "storage_options": storage_options},
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.25,
    )
    ds = ds.map_batches(_keyed, batch_format="numpy").materialize()
    from ray.data.aggregate import Count, Min

    counts = ds.groupby(URI, num_partitions=partitions).aggregate(Count(), Min("_key"))
    repeated = counts.map_batches(_repeated, batch_format="numpy")
    ds = ds.join(repeated, join_type="inner", on=(URI,), num_partitions=partitions)
    drop: dict[str, list[int]] = {}
    for batch in ds.map_batches(_later, batch_format="numpy").iter_batches(batch_format="numpy"):
        for shard, row in zip(batch[_SHARD], batch[_ROW], strict=True):
            drop.setdefault(shards[int(shard)].id, []).append(int(row))
    return {k: sorted(v) for k, v in drop.items()}
