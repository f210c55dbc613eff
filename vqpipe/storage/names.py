"""The files a job writes into a quality table's folder, by name: the one place the storage
layer and the input listings learn them (a job's own output is never its input, while every
other name — ``_DSC0001.JPG``, ``.hidden.png`` — is an input).

Only committed parts end in ``.parquet``; everything else is ``_``- or ``.``-prefixed (skipped
by pyarrow, pandas and Ray Data given the folder) and named so no ``*.parquet`` glob matches."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

JOB_RECORD = "_job.json"
LOCK = "_lock"
STAGING = "_next"
"""``--no-resume`` writes into ``<out>/_next/`` and swaps it in once everything is committed."""
STAGED_SUFFIX = ".staged"
"""Parts in the staging folder end in this instead of ``.parquet`` until they are swapped in."""
QUARANTINE = "_quarantine"
"""Damaged parts are moved to ``<out>/_quarantine/`` (their rows are scored again)."""
DAMAGED_SUFFIX = ".damaged"
"""Appended to a quarantined part's name."""
PIECE_PREFIX = "_piece."
"""Pieces of a part still being written (merged into the whole part once all are in)."""
COMMITTED = "_COMMITTED"
WRITE_PROBE = ".vqpipe-write-probe"
TEMPORARY_PREFIX = ".vqpipe-tmp-"
"""A part being written (local disks: written, then renamed to its name)."""
DEDUPE_PENDING = "_dedupe_pending"
"""A manifest job's repeats across shards are still to be removed (see
:mod:`vqpipe.storage.repeats`)."""
SUPERSEDE_PENDING = "_supersede_pending"
"""A run that may have scored files again (replaced in place) still owes the pass that drops
their earlier rows (see :func:`vqpipe.storage.repeats.drop_superseded`)."""
NAMES = frozenset(
    {
        JOB_RECORD,
        LOCK,
        STAGING,
        QUARANTINE,
        COMMITTED,
        WRITE_PROBE,
        DEDUPE_PENDING,
        SUPERSEDE_PENDING,
    }
)
_FILES = re.compile(
    r"^(part-[0-9a-f]{8}-.+\.parquet|_piece\.part-[0-9a-f]{8}-.+"
    r"|\.tmp-.+\.parquet|\.vqpipe-tmp-[0-9a-f]{32})$"
)
"""Parts (``part-<signature>-…``, see :mod:`vqpipe.storage.parts`), their pieces and parts
being written (``.tmp-*.parquet``: left by earlier versions; now :data:`TEMPORARY_PREFIX`)."""


def part_suffix(folder: str) -> str:
    """The suffix of whole parts in ``folder``: :data:`STAGED_SUFFIX` in a staging folder (no
    reader's ``**/*.parquet`` glob may match a part not swapped in yet), else ``.parquet``."""
    return STAGED_SUFFIX if folder.rstrip("/").rsplit("/", 1)[-1] == STAGING else ".parquet"


def is_job_artifact(rel: str) -> bool:
    """Whether a path (relative to a listed prefix) is a file a scoring job wrote: its record,
    lock, staging or quarantine directory, a part or a temporary part."""
    parts = PurePosixPath(rel).parts
    return bool(parts) and (any(p in NAMES for p in parts) or bool(_FILES.match(parts[-1])))
