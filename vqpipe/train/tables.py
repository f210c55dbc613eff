"""The MOS tables of a training config: one ``datasets`` entry's table with its paths resolved,
its split, its name, and the rows of media a method can read. The lowest training module (it
imports no other), so that the config check and the data pipeline both build on it."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from typing import Any

import pandas as pd

from vqpipe.io.sources import is_relative
from vqpipe.io.tables import read_table


def split_rows(table: pd.DataFrame, split: str | None) -> pd.DataFrame:
    """The rows of ``split`` (all rows when ``split`` is None or the table has no splits)."""
    if split is None or "split" not in table:
        return table
    return table[table["split"] == split]


def joined_path(path: str, base: str) -> str:
    """``path`` as it is when absolute or a URI, else joined to ``base`` (a folder or URI
    prefix)."""
    if not is_relative(path):
        return path
    if "://" in base:
        scheme, _, prefix = base.partition("://")
        return f"{scheme}://{posixpath.normpath(posixpath.join(prefix, path))}"
    return os.path.abspath(os.path.join(base, path))


def dataset_table(
    spec: Mapping[str, Any], storage_options: dict[str, Any] | None = None
) -> pd.DataFrame:
    """A ``datasets`` entry's MOS table, every relative ``path`` joined to the entry's
    ``image_root``, else to the table's own folder (never to the working directory of
    whichever worker reads it); a DataFrame's relative paths need ``image_root``."""
    source = spec["table"]
    table = read_table(source, storage_options)
    base = spec.get("image_root")
    if base is None and isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        base = text.rsplit("/", 1)[0] if "://" in text else os.path.dirname(os.path.abspath(text))
    if base is None or "path" not in table or table.empty:
        return table
    table = table.copy()
    table["path"] = [
        joined_path(p, os.fspath(base)) if isinstance(p, str) else p for p in table["path"]
    ]
    return table


def dataset_name(table: pd.DataFrame, default: str = "dataset") -> str:
    return str(table["dataset"].iloc[0]) if "dataset" in table and len(table) else default


def rows_of_media(table: pd.DataFrame, media: frozenset[str]) -> tuple[Any, Any]:
    """(rows whose media is in ``media``, image / video rows of another medium)."""
    from vqpipe.io.media_types import media_type_from_name

    kinds = table["path"].astype(str).map(media_type_from_name)
    unreadable = kinds.isin(["image", "video"]) & ~kinds.isin(sorted(media))
    return table[~unreadable], table[unreadable]


def skipped_rows_note(skipped: Any, method: str, media: frozenset[str], where: str) -> str:
    """The log line for rows skipped by :func:`rows_of_media`: how many, and the first files."""
    files = [str(p) for p in skipped["path"][:5]]
    more = f" and {len(skipped) - len(files)} more" if len(skipped) > len(files) else ""
    return (
        f"{where}: skipping {len(skipped)} row(s) that {method} cannot train on "
        f"(it takes {'/'.join(sorted(media))}): {', '.join(files)}{more}"
    )


def check_table(
    spec: Mapping[str, Any],
    storage_options: dict[str, Any] | None,
    method: str,
    columns: tuple[str, ...],
    media: frozenset[str],
    split: str | None,
    where: str,
) -> tuple[int, str | None, str | None]:
    """(training rows, a note about skipped rows, a problem) for one ``datasets`` entry that
    ``method`` trains on: the table readable, with ``columns``, its files there."""
    source = spec["table"]
    name = "a DataFrame" if not isinstance(source, (str, os.PathLike)) else os.fspath(source)
    try:
        table = dataset_table(spec, storage_options)
    except Exception as exc:
        return 0, None, f"{where}cannot read table {name}: {type(exc).__name__}: {exc}"
    missing = [c for c in columns if c not in table.columns]
    if missing:
        return 0, None, f"{where}table {name} lacks column(s) {missing} ({method} needs them)"
    rows = split_rows(table, split)
    taken, skipped = rows_of_media(rows, media)
    note = skipped_rows_note(skipped, method, media, where + name) if len(skipped) else None
    return len(rows) - len(skipped), note, _missing_files(taken, spec, where + name)


def _missing_files(table: Any, spec: Mapping[str, Any], where: str) -> str | None:
    """A problem naming the local training files that do not exist (URIs are not listed)."""
    paths = [p for p in table["path"] if isinstance(p, str) and "://" not in p]
    missing = [p for p in paths if not os.path.exists(p)]
    if not missing:
        return None
    root = spec.get("image_root")
    against = f"image_root {root}" if root is not None else "the table's folder (or image_root)"
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return (
        f"{where}: {len(missing)} of {len(paths)} image file(s) not found: "
        f"{', '.join(missing[:3])}{more} (relative paths resolve against {against})"
    )
