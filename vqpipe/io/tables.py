"""Reading a small table (a MOS table, a quality table to evaluate) into pandas on the driver."""

from __future__ import annotations

from typing import Any

import pandas as pd


def read_table(source: str | pd.DataFrame, storage_options: dict[str, Any] | None = None) -> Any:
    """A DataFrame (copied), one Parquet / CSV / JSONL file, or a quality-table directory (a
    job's ``--out``), from a local path or an fsspec URI."""
    if isinstance(source, pd.DataFrame):
        return source.copy()
    path = str(source)
    options = (storage_options or None) if "://" in path else None  # pandas refuses them locally
    lower = path.lower().rstrip("/")
    if lower.endswith(".csv"):
        return pd.read_csv(path, storage_options=options)
    if lower.endswith((".jsonl", ".json")):
        return pd.read_json(path, lines=lower.endswith(".jsonl"), storage_options=options)
    if lower.endswith(".parquet"):
        return pd.read_parquet(path, storage_options=options)
    from vqpipe.storage.table import read_quality_table

    return read_quality_table(path, storage_options)
