"""A URI that several manifest shards list is written once — and nothing waits for that
before scoring starts.

Within one shard its reading task drops repeats itself (a set bounded by the shard). Across
shards, a pass *after* the shards are committed removes the repeats from the written parts, so
the time to the first committed part does not grow with the corpus (a pass before scoring
would read every manifest's URI column and shuffle it first). The price is that a URI listed
in two shards is scored twice and written once.

The pass reads the ``uri`` column of every part, orders the occurrences of each URI — parts
that were there before this run first (their rows were already there for readers), then by
the shard's place in the job's shard order, fragment and row — and rewrites each part that
holds a later occurrence without it (atomically, metadata kept; a part left empty stays, an
empty file, so that its shard still counts as committed). Any such order is safe to apply to
whatever the output holds now: only URIs with two or more rows lose rows, and each keeps one,
so a pass cut short is simply run again (``_dedupe_pending`` marks a pass still owed).

Small outputs are settled on the driver with pyarrow; larger ones with Ray Data (a
``groupby`` on ``uri`` for each URI's count and first occurrence, a hash join back, and a
``groupby`` of the later occurrences by part, each part rewritten by its own task) — the
driver holds the list of parts, never the URIs.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vqpipe.schema import ERROR, URI
from vqpipe.storage.names import DEDUPE_PENDING
from vqpipe.storage.parts import parse_part, write_part

PENDING = DEDUPE_PENDING
"""Written into the output before a manifest job commits its first part, removed once the
repeats are gone: a rerun that finds it settles them even with nothing left to score."""

_KEY, _PART, _ROW = "_key", "_part", "_row"
_ROW_BITS = 32
DRIVER_MAX_ROWS = 1_000_000
"""Up to this many written rows the pass runs on the driver; past it, with Ray Data."""


def part_order(parts: list[str], shard_ids: list[str], before: set[str]) -> list[str]:
    """``parts`` in the order whose first occurrence of a URI is kept: parts there before
    this run, then by shard (its index in ``shard_ids``; unknown shards last), fragment, piece
    and name."""
    rank = {sid: i for i, sid in enumerate(shard_ids)}

    def key(path: str) -> tuple:
        info = parse_part(path) or {"shard": "", "seq": 0, "rows": None}
        name = path.rsplit("/", 1)[-1]
        piece = info["rows"][0] if info["rows"] else 0
        shard = rank.get(info["shard"], len(rank))
        return (name not in before, shard, info["seq"], piece, name)

    return sorted(parts, key=key)


def _part_keys(fs: Any, path: str, order: int) -> pa.Table:
    """One part's URIs with the key that orders them (``order << 32 | row``); null URIs are
    not compared (each is its own error row)."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        uris = pq.read_table(fh, columns=[URI]).column(URI)
    rows = np.flatnonzero(pc.is_valid(uris).to_numpy(zero_copy_only=False))
    keys = (np.int64(order) << _ROW_BITS) | rows.astype(np.int64)
    return pa.table({URI: pc.take(uris, pa.array(rows)), _KEY: pa.array(keys, pa.int64())})


def _later_keys(keys: pa.Table) -> pa.Table:
    """The keys of the occurrences that are not their URI's first (pyarrow, one table)."""
    first = keys.group_by(URI).aggregate([(_KEY, "min"), (_KEY, "count")])
    first = first.filter(pc.greater(first[f"{_KEY}_count"], 1))
    joined = keys.join(first.select([URI, f"{_KEY}_min"]), URI, join_type="inner")
    return joined.filter(pc.not_equal(joined[_KEY], joined[f"{_KEY}_min"])).select([_KEY])


@dataclass(frozen=True)
class Removed:
    """What a repeats pass took out: ``rows`` in all; ``new_rows`` of them from parts this
    run wrote, ``new_errors`` of those error rows (the run's own counts lose these)."""

    rows: int = 0
    new_rows: int = 0
    new_errors: int = 0


def drop_rows(fs: Any, path: str, rows: np.ndarray, fence: Any = None) -> tuple[int, int]:
    """Rewrite ``path`` without ``rows`` (atomically, metadata kept); returns how many went,
    and how many of those were error rows."""
    import pyarrow.parquet as pq

    with fs.open(path, "rb") as fh:
        table = pq.read_table(fh)
    keep = np.ones(len(table), bool)
    keep[rows[rows < len(table)]] = False
    if keep.all():
        return 0, 0
    gone = ~keep
    errors = 0
    if ERROR in table.column_names:
        errors = int(pc.is_valid(table.column(ERROR)).to_numpy(zero_copy_only=False)[gone].sum())
    write_part(fs, path, table.filter(pa.array(keep)), fence)
    return int(gone.sum()), errors


def _removed(ordered: list[str], counts: dict[int, tuple[int, int]], before: set[str]) -> Removed:
    """Sum ``{part order: (rows, errors)}`` into a :class:`Removed`."""
    new = [c for o, c in counts.items() if ordered[o].rsplit("/", 1)[-1] not in before]
    return Removed(
        rows=sum(r for r, _ in counts.values()),
        new_rows=sum(r for r, _ in new),
        new_errors=sum(e for _, e in new),
    )


def _split(keys: np.ndarray) -> dict[int, np.ndarray]:
    """``{part order: rows}`` of later-occurrence keys."""
    orders, rows = keys >> _ROW_BITS, keys & ((1 << _ROW_BITS) - 1)
    return {int(o): rows[orders == o] for o in np.unique(orders)}


def _driver_pass(fs: Any, ordered: list[str], fence: Any) -> dict[int, tuple[int, int]]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        tables = list(pool.map(lambda i: _part_keys(fs, ordered[i], i), range(len(ordered))))
    later = _later_keys(pa.concat_tables(tables)).column(_KEY).to_numpy()
    return {o: drop_rows(fs, ordered[o], rows, fence) for o, rows in _split(later).items()}


def _keys_task(batch: dict[str, np.ndarray], storage_options: dict[str, Any]) -> pa.Table:
    from vqpipe.io.fs import url_to_fs

    tables = []
    for uri, order in zip(batch["part"], batch["order"], strict=True):
        fs, path = url_to_fs(str(uri), storage_options)
        tables.append(_part_keys(fs, path, int(order)))
    return pa.concat_tables(tables)


def _repeated(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keep = batch["count()"] > 1
    return {k: v[keep] for k, v in batch.items()}


def _later(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    keep = (batch["count()"] > 1) & (batch[_KEY] != batch["min(_key)"])
    keys = batch[_KEY][keep]
    return {_PART: keys >> _ROW_BITS, _ROW: keys & ((1 << _ROW_BITS) - 1)}


def _rewrite(group: dict[str, np.ndarray], parts: Any, storage_options: dict[str, Any], fence: Any):
    import ray

    from vqpipe.io.fs import url_to_fs

    uris = ray.get(parts[0])
    uri = uris[int(group[_PART][0])]
    fs, path = url_to_fs(uri, storage_options)
    dropped, errors = drop_rows(fs, path, np.asarray(group[_ROW], np.int64), fence)
    return {
        _PART: group[_PART][:1],
        "dropped": np.array([dropped]),
        "errors": np.array([errors]),
    }


def _ray_pass(
    uris: list[str], storage_options: dict[str, Any], partitions: int, fence: Any = None
) -> dict[int, tuple[int, int]]:
    import ray
    from ray.data.aggregate import Count, Min

    items = [{"part": u, "order": i} for i, u in enumerate(uris)]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 8, 2000)))
    keys = ds.map_batches(
        _keys_task, fn_kwargs={"storage_options": storage_options}, batch_size=8, num_cpus=0.25
    ).materialize()
    first = keys.groupby(URI, num_partitions=partitions).aggregate(Count(), Min(_KEY))
    repeated = first.map_batches(_repeated, batch_format="numpy")
    later = keys.join(repeated, join_type="inner", on=(URI,), num_partitions=partitions)
    later = later.map_batches(_later, batch_format="numpy")
    # the part list travels once, by reference (a list wrapped so Ray Data leaves it a ref)
    kwargs = {"parts": [ray.put(uris)], "storage_options": storage_options, "fence": fence}
    done = later.groupby(_PART).map_groups(_rewrite, fn_kwargs=kwargs, batch_format="numpy")
    return {int(r[_PART]): (int(r["dropped"]), int(r["errors"])) for r in done.iter_rows()}


def drop_repeats(
    output: str,
    parts: list[str],
    shard_ids: list[str],
    before: set[str],
    storage_options: dict[str, Any] | None = None,
    start_ray: Any = None,
    partitions: int = 16,
    fence: Any = None,
) -> Removed:
    """Remove the later occurrences of every URI written more than once among ``parts``
    (paths in ``output``'s store; ``before``: the names of those there before this run);
    returns what went (see the module docstring). ``start_ray``: called before the pass
    needs Ray (a large output); ``fence``: checked before each part is rewritten."""
    ordered = part_order(parts, shard_ids, before)
    return _drop_later(output, ordered, before, storage_options, start_ray, partitions, fence)


def drop_superseded(
    output: str,
    fresh: set[str],
    storage_options: dict[str, Any] | None = None,
    start_ray: Any = None,
    partitions: int = 16,
    fence: Any = None,
) -> Removed:
    """A listing's files scored again (replaced in place since their rows were written) have
    two rows: keep the newest and drop the earlier ones. The newest is in a part written by
    this run (``fresh``), else in the part written last (by modification time). Returns what
    went; the same pass as :func:`drop_repeats`, in another order."""
    from vqpipe.io.fs import url_to_fs
    from vqpipe.storage.parts import is_whole

    fs, root = url_to_fs(output, storage_options)
    fs.invalidate_cache(root.rstrip("/"))  # the parts Ray workers wrote since the last listing
    listing = [e for e in fs.ls(root.rstrip("/"), detail=True) if is_whole(e["name"])]

    def written_at(entry: dict[str, Any]) -> float:
        when = entry.get("mtime") or entry.get("LastModified") or entry.get("updated") or 0
        return float(when.timestamp() if hasattr(when, "timestamp") else when)

    ordered = [
        e["name"]
        for e in sorted(listing, key=lambda e: (e["name"] not in fresh, -written_at(e), e["name"]))
    ]
    old = {p.rsplit("/", 1)[-1] for p in ordered if p not in fresh}
    return _drop_later(output, ordered, old, storage_options, start_ray, partitions, fence)


def _drop_later(
    output: str,
    ordered: list[str],
    before: set[str],
    storage_options: dict[str, Any] | None,
    start_ray: Any,
    partitions: int,
    fence: Any,
) -> Removed:
    """Keep each URI's first occurrence in ``ordered`` parts, drop the others."""
    import pyarrow.parquet as pq

    from vqpipe.io.fs import join_uri, url_to_fs

    if len(ordered) < 2:
        return Removed()
    fs, _ = url_to_fs(output, storage_options)
    with ThreadPoolExecutor(max_workers=16) as pool:
        rows = sum(pool.map(lambda p: pq.ParquetFile(fs.open(p, "rb")).metadata.num_rows, ordered))
    if rows <= DRIVER_MAX_ROWS:
        return _removed(ordered, _driver_pass(fs, ordered, fence), before)
    if start_ray is not None:
        start_ray()
    uris = [join_uri(fs, p, output) for p in ordered]  # the tasks open them by URI
    return _removed(ordered, _ray_pass(uris, storage_options or {}, partitions, fence), before)
