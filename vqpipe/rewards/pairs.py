"""Preference pairs within groups (``vqpipe pairs``): (chosen, rejected) by a score.

Within a group the usable rows (no ``error``, a score and a group value) are ranked by score,
highest first, ties by ``uri``; a pair's ``margin`` is ``score_chosen − score_rejected`` and
only pairs with ``margin > --margin`` are made (the default 0 skips exact ties). Strategies:

- ``best-worst``: the top-ranked row against the bottom-ranked one (at most one pair);
- ``all``: every pair of rows (quadratic in the group's size);
- ``adjacent``: each row against the nearest row ranked below it whose margin passes.

``--max-pairs-per-group K`` keeps K of a group's pairs drawn uniformly without replacement by
a generator seeded with ``(--seed, crc32(group))`` — the same pairs however the table is
partitioned. The group-by runs on Ray Data (``groupby().map_groups()``): a group's rows meet
in one task; the driver holds no rows.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vqpipe.errors import UserError
from vqpipe.schema import ERROR, URI

STRATEGIES = ("best-worst", "all", "adjacent")
SHUFFLE_PARTITIONS = 200
"""At most this many group-by partitions (fewer for a table of fewer parts: Ray's default of
200 hash partitions costs a small table minutes of task start-up)."""
PAIRS_RECORD = "_pairs.json"
"""Beside the parts: the options, the source and the counts."""


@dataclass
class PairOptions:
    group: str
    score: str
    strategy: str = "best-worst"
    margin: float = 0.0
    max_pairs_per_group: int | None = None
    seed: int = 0
    carry: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise UserError(f"--strategy {self.strategy!r}: choose one of {', '.join(STRATEGIES)}")
        if self.margin < 0 or not np.isfinite(self.margin):
            raise UserError(f"--margin {self.margin}: use a finite number >= 0")
        if self.max_pairs_per_group is not None and self.max_pairs_per_group < 1:
            raise UserError(f"--max-pairs-per-group {self.max_pairs_per_group}: use N >= 1")


def group_seed(seed: int, group: Any) -> np.random.Generator:
    """The generator that samples one group's pairs: ``(seed, crc32(str(group)))``."""
    return np.random.default_rng([int(seed), zlib.crc32(str(group).encode())])


def select_pairs(
    uris: np.ndarray,
    scores: np.ndarray,
    strategy: str,
    margin: float = 0.0,
    max_pairs: int | None = None,
    rng: np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(chosen, rejected)`` of one group's pairs (see the module docstring), in the
    order: chosen's rank, then rejected's rank."""
    scores = np.asarray(scores, np.float64)
    order = np.lexsort((np.asarray(uris, dtype=str), -scores))  # score desc, uri asc
    s = scores[order]
    n = len(order)
    if n < 2:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if strategy == "best-worst":
        i, j = np.array([0]), np.array([n - 1])
    elif strategy == "all":
        i, j = np.triu_indices(n, k=1)
    elif strategy == "adjacent":
        # the first rank below i whose margin passes: s descends, so the test s[i] − s[j] >
        # margin is monotone in j; a vectorised binary search on that very test (a
        # searchsorted on s − margin can round differently from it)
        i = np.arange(n)
        lo, hi = i + 1, np.full(n, n)
        while np.any(lo < hi):
            mid = (lo + hi) // 2
            passes = (s - s[np.minimum(mid, n - 1)]) > margin
            open_ = lo < hi
            hi = np.where(open_ & passes, mid, hi)
            lo = np.where(open_ & ~passes, mid + 1, lo)
        keep = lo < n
        i, j = i[keep], lo[keep]
    else:
        raise ValueError(f"unknown strategy {strategy!r}")
    keep = (s[i] - s[j]) > margin
    i, j = i[keep], j[keep]
    if max_pairs is not None and len(i) > max_pairs:
        rng = rng if rng is not None else np.random.default_rng(0)
        pick = np.sort(rng.choice(len(i), size=max_pairs, replace=False))
        i, j = i[pick], j[pick]
    return order[i], order[j]


def _usable(batch: pa.Table, group: str, score: str) -> pa.Table:
    keep = pc.and_kleene(pc.is_valid(batch[group]), pc.is_valid(batch[score]))
    keep = pc.and_kleene(keep, pc.invert(pc.is_nan(pc.cast(batch[score], pa.float64()))))
    if ERROR in batch.column_names:
        keep = pc.and_kleene(keep, pc.is_null(batch[ERROR]))
    return batch.filter(pc.fill_null(keep, False))


def _counts(batch: pa.Table, group: str, score: str) -> pa.Table:
    """One row per batch: rows, error rows, NULL scores (no error) and NULL groups (the rest)."""
    n = batch.num_rows
    error = pc.is_valid(batch[ERROR]) if ERROR in batch.column_names else pa.array([False] * n)
    values = pc.cast(batch[score], pa.float64())
    null_score = pc.and_kleene(
        pc.invert(error), pc.or_kleene(pc.is_null(values), pc.is_nan(values))
    )
    null_score = pc.fill_null(null_score, True)
    null_group = pc.and_kleene(
        pc.and_kleene(pc.invert(error), pc.invert(null_score)), pc.is_null(batch[group])
    )

    def total(mask: Any) -> int:
        return int(pc.sum(pc.cast(mask, pa.int64())).as_py() or 0)

    return pa.table(
        {
            "rows": [n],
            "error_rows": [total(error)],
            "null_scores": [total(null_score)],
            "null_groups": [total(null_group)],
        }
    )


def output_schema(schema: pa.Schema, options: PairOptions) -> pa.Schema:
    """``group, uri_chosen, uri_rejected, score_chosen, score_rejected, margin`` and each
    carried column as ``<col>_chosen``, ``<col>_rejected``."""
    fields = [
        pa.field("group", schema.field(options.group).type),
        pa.field("uri_chosen", pa.string()),
        pa.field("uri_rejected", pa.string()),
        pa.field("score_chosen", pa.float64()),
        pa.field("score_rejected", pa.float64()),
        pa.field("margin", pa.float64()),
    ]
    for col in options.carry:
        fields += [
            pa.field(f"{col}_chosen", schema.field(col).type),
            pa.field(f"{col}_rejected", schema.field(col).type),
        ]
    return pa.schema(fields)


def group_pairs(batch: pa.Table, options: PairOptions, schema: pa.Schema) -> pa.Table:
    """``map_groups``: one group's usable rows → its pairs (a table of ``schema``)."""
    if batch.num_rows == 0:
        return schema.empty_table()
    group = batch[options.group][0].as_py()
    scores = batch[options.score].to_numpy(zero_copy_only=False).astype(np.float64)
    uris = np.asarray(batch[URI].to_pylist(), dtype=object)
    chosen, rejected = select_pairs(
        uris,
        scores,
        options.strategy,
        options.margin,
        options.max_pairs_per_group,
        group_seed(options.seed, group),
    )
    chosen_rows, rejected_rows = batch.take(chosen), batch.take(rejected)
    columns = {
        "group": pa.array([group] * len(chosen), type=schema.field("group").type),
        "uri_chosen": pc.cast(chosen_rows[URI], pa.string()),
        "uri_rejected": pc.cast(rejected_rows[URI], pa.string()),
        "score_chosen": pa.array(scores[chosen]),
        "score_rejected": pa.array(scores[rejected]),
        "margin": pa.array(scores[chosen] - scores[rejected]),
    }
    for col in options.carry:
        columns[f"{col}_chosen"] = chosen_rows[col]
        columns[f"{col}_rejected"] = rejected_rows[col]
    return pa.table(columns, schema=schema)


class PairsJob:
    """``vqpipe pairs``: checks on the driver at construction (before Ray starts), the Ray
    Data job in :meth:`run`."""

    def __init__(
        self,
        table: str,
        out: str,
        options: PairOptions,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        from vqpipe.rewards.table import TableSource, output_target

        self.table, self.out, self.options = table, out, options
        self.source = source = TableSource(table, storage_options)
        source.require([URI], "the table needs the column")
        source.require([options.group], "--group")
        source.require([options.score], "--score")
        source.require(options.carry, "--carry")
        kind = source.schema.field(options.score).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            raise UserError(f"--score {options.score!r} is not numeric ({kind})")
        if {options.group, options.score, URI} & set(options.carry):
            raise UserError("--carry: the group, score and uri columns are in every pair already")
        self.target = output_target(out, storage_options, table)

    def run(self) -> dict[str, Any]:
        """Write the pairs (a Parquet dataset with ``_pairs.json``); returns the counts."""
        from vqpipe.console import phase
        from vqpipe.rewards.table import count_rows, write_dataset, write_record

        options, source = self.options, self.source
        columns = list(dict.fromkeys([URI, options.group, options.score, *options.carry]))
        with_error = columns + ([ERROR] if ERROR in source.columns else [])
        schema = output_schema(source.schema, options)
        ds = source.dataset(with_error)
        phase(f"counting the rows of {len(source.parts)} parts")
        # one count row per block, summed on the driver (as many rows as blocks)
        counted = ds.map_batches(
            _counts, fn_args=(options.group, options.score), batch_format="pyarrow"
        ).take_all()
        names = ("rows", "error_rows", "null_scores", "null_groups")
        counts = {k: int(sum(r[k] for r in counted)) for k in names}
        pairs = (
            ds.map_batches(_usable, fn_args=(options.group, options.score), batch_format="pyarrow")
            .select_columns(columns)
            .groupby(
                options.group, num_partitions=max(1, min(SHUFFLE_PARTITIONS, len(source.parts)))
            )
            .map_groups(group_pairs, fn_args=(options, schema), batch_format="pyarrow")
        )
        phase(f"grouping {counts['rows']:,} rows by {options.group}")
        write_dataset(pairs, self.target, unit="pairs written")
        counts["pairs"] = count_rows(self.target)
        record = {"source": self.table, "options": vars(options), "counts": counts}
        write_record(self.target, PAIRS_RECORD, record)
        return {**counts, "out": self.out}
