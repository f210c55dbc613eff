"""Per-group normalisation of score columns (``vqpipe filter --normalize``).

``group-zscore``: ``(x − mean_g) / std_g`` (population std, ddof 0; 0 when the group's scores
are all equal or it has one); ``group-rank``: ``(rank − 1) / (n_g − 1)`` with average ranks
for ties, in [0, 1] (0.5 for a one-row group). Statistics are over the rows the filter sees
(no error, a score, a group); a row without a score or a group gets NULL. The result is
``<column>_normalized`` (``gamma_score`` → ``gamma_normalized``, float64).

The statistics come from the group and score columns only (read on the driver, as
``--percentile`` reads its column); each batch of the table is then normalised by lookup, so
the table itself still streams.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vqpipe.errors import UserError
from vqpipe.schema import NORMALIZED, derived_column

METHODS = ("group-zscore", "group-rank")


def _values(column: Any) -> np.ndarray:
    return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)  # null → NaN


class GroupNormalizer:
    """Statistics of each score column per group; :meth:`__call__` normalises a batch."""

    def __init__(self, data: pa.Table, group: str, scores: list[str], method: str) -> None:
        if method not in METHODS:
            raise UserError(f"--normalize {method!r}: choose one of {', '.join(METHODS)}")
        self.group, self.scores, self.method = group, scores, method
        self.groups = pc.unique(data[group].drop_null())
        index = self._index(data[group])
        self.stats: dict[str, dict[str, np.ndarray]] = {}
        for score in scores:
            v = _values(data[score])
            ok = (index >= 0) & np.isfinite(v)
            g, v = index[ok], v[ok]
            count = np.bincount(g, minlength=len(self.groups))
            if method == "group-zscore":
                mean = np.bincount(g, weights=v, minlength=len(self.groups)) / np.maximum(count, 1)
                sq = np.bincount(g, weights=(v - mean[g]) ** 2, minlength=len(self.groups))
                std = np.sqrt(sq / np.maximum(count, 1))
                self.stats[score] = {"mean": mean, "std": std}
            else:
                # (group, value) as one sortable integer key: group · (R + 1) + rank of value
                uniq = np.unique(v)
                keys = np.sort(g * (len(uniq) + 1) + np.searchsorted(uniq, v))
                start = np.searchsorted(keys, np.arange(len(self.groups)) * (len(uniq) + 1))
                self.stats[score] = {"uniq": uniq, "keys": keys, "start": start, "count": count}

    def _index(self, column: Any) -> np.ndarray:
        index = pc.index_in(column, value_set=self.groups)
        return pc.fill_null(index, -1).to_numpy(zero_copy_only=False).astype(np.int64)

    @property
    def outputs(self) -> list[str]:
        return [derived_column(s, NORMALIZED) for s in self.scores]

    def normalize(self, score: str, group: Any, values: Any) -> np.ndarray:
        """One column of a batch, normalised (NaN where there is no score or group)."""
        g, v = self._index(group), _values(values)
        ok = (g >= 0) & np.isfinite(v)
        out = np.full(len(v), np.nan)
        stats, gi, vi = self.stats[score], g[ok], v[ok]
        if self.method == "group-zscore":
            std = stats["std"][gi]
            z = (vi - stats["mean"][gi]) / np.where(std > 0, std, 1.0)
            out[ok] = np.where(std > 0, z, 0.0)
            return out
        uniq, keys = stats["uniq"], stats["keys"]
        key = gi * (len(uniq) + 1) + np.searchsorted(uniq, vi)  # vi is one of the values
        lo = np.searchsorted(keys, key, side="left")
        hi = np.searchsorted(keys, key, side="right")
        rank = lo - stats["start"][gi] + (hi - lo + 1) / 2.0  # average rank, 1-based
        n = stats["count"][gi]
        out[ok] = np.where(n > 1, (rank - 1) / np.maximum(n - 1, 1), 0.5)
        return out

    def __call__(self, batch: pa.RecordBatch | pa.Table) -> pa.Table:
        table = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
        for score, name in zip(self.scores, self.outputs, strict=True):
            values = self.normalize(score, table[self.group], table[score])
            table = table.append_column(name, pa.array(values, mask=np.isnan(values)))
        return table
