"""``vqpipe eval``'s inputs checked before any work: readable tables, a writable report folder."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from vqpipe.errors import UserError


def read_input(source: str, what: str, storage_options: dict[str, Any] | None) -> pd.DataFrame:
    """:func:`vqpipe.io.tables.read_table`, a missing or unreadable table as one line."""
    from vqpipe.io.tables import read_table

    try:
        frame = read_table(source, storage_options)
    except FileNotFoundError:
        raise UserError(f"{what} {source}: no such file or directory") from None
    except UserError:
        raise
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"{what} {source}: cannot read it: {type(exc).__name__}: {first}") from None
    if not isinstance(frame, pd.DataFrame) or not len(frame.columns):
        raise UserError(f"{what} {source}: no rows or columns to read")
    return frame


def check_report_dir(out: str) -> None:
    """``--out`` must be a folder (or not exist yet): a file there is one line, before any
    metric is computed."""
    if "://" in out:
        return  # the report is written with pathlib; a URI fails there with its own message
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file: give a folder for the report")
    parent = os.path.dirname(os.path.abspath(out))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise UserError(f"--out {out}: {parent} is a file, not a folder")
