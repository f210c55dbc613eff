"""The files a scoring job writes into its output, by name: the one place listings learn what
to leave out (a job's own output is never its input, while every other name — ``_DSC0001.JPG``,
``.hidden.png`` — is an input)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath

JOB_RECORD = "_job.json"
LOCK = "_lock"
STAGING = "_next"
"""``--no-resume`` writes into ``<out>/_next/`` and swaps it in once everything is committed."""
QUARANTINE = "_quarantine"
"""Damaged parts are moved to ``<out>/_quarantine/`` (their rows are scored again)."""
COMMITTED = "_COMMITTED"
WRITE_PROBE = ".vqpipe-write-probe"
DEDUPE_PENDING = "_dedupe_pending"
"""A manifest job's repeats across shards are still to be removed (see
:mod:`vqpipe.pipeline.dedupe`)."""
NAMES = frozenset({JOB_RECORD, LOCK, STAGING, QUARANTINE, COMMITTED, WRITE_PROBE, DEDUPE_PENDING})
_FILES = re.compile(r"^(part-[0-9a-f]{8}-.+\.parquet|\.tmp-.+\.parquet)$")
"""Parts (``part-<signature>-…``, see :mod:`vqpipe.pipeline.shards`) and parts being written."""


def is_job_artifact(rel: str) -> bool:
    """Whether a path (relative to a listed prefix) is a file a scoring job wrote: its record,
    lock, staging or quarantine directory, a part or a temporary part."""
    parts = PurePosixPath(rel).parts
    return bool(parts) and (any(p in NAMES for p in parts) or bool(_FILES.match(parts[-1])))
