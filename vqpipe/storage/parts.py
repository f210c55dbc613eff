"""Committed parts: their names, atomic commits, and the pieces a fragment may arrive in.

A part is one fragment of one input shard (or one slice of a listing task), named
deterministically so that a retried write rewrites the same file::

    part-<signature hash>-<shard id>-<fragment>[-last].parquet     (.staged in _next/)

A shard is committed when its ``-last`` fragment and every fragment before it exist. A
fragment that reaches the writer in more than one batch is written as pieces named by their
row ranges, ``_piece.part-<signature hash>-<shard id>-<fragment>.r<lo>-<hi>of<n>`` — names no
reader picks up — merged into the whole part once all are in. Only whole parts are the table.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import re
from typing import Any

import numpy as np
import pyarrow as pa

from vqpipe.storage.names import PIECE_PREFIX, TEMPORARY_PREFIX, part_suffix
from vqpipe.storage.schemas import encode_schema

_PART_NAME = re.compile(
    r"^(?P<piece>_piece\.)?part-(?P<sig>[0-9a-f]{8})-(?P<shard>.+)-(?P<seq>\d{5})(?P<last>-last)?"
    r"(?:\.r(?P<lo>\d+)-(?P<hi>\d+)of(?P<n>\d+))?(?P<suffix>\.parquet|\.staged)?$"
)
"""Whole parts (``.parquet``; ``.staged`` in a staging folder) and pieces (``_piece.`` and no
suffix; pieces of earlier versions: ``part-….r<lo>-<hi>of<n>.parquet``)."""


def part_name(
    sig: str, part: str, rows: tuple[int, int, int] | None = None, suffix: str = ".parquet"
) -> str:
    """The part file of a fragment (``suffix``: see :func:`~vqpipe.storage.names.part_suffix`);
    ``rows = (lo, hi, n)`` names a piece of it (rows lo..hi-1 of n), for a fragment that
    reached the writer in more than one batch."""
    if rows is not None:
        return f"{PIECE_PREFIX}part-{sig}-{part}.r{rows[0]}-{rows[1]}of{rows[2]}"
    return f"part-{sig}-{part}{suffix}"


def parse_part(name: str) -> dict[str, Any] | None:
    """``{sig, shard, seq, last, rows}`` of a part's file name (``rows``: ``(lo, hi, n)`` of a
    piece, else None); None for other files."""
    match = _PART_NAME.match(name.rsplit("/", 1)[-1])
    if match is None:
        return None
    if match["n"] is None:  # a whole part
        valid = match["piece"] is None and match["suffix"] is not None
    else:  # a piece (or a piece of an earlier version: no prefix, .parquet)
        valid = (match["piece"] is not None) == (match["suffix"] is None)
        valid = valid and match["suffix"] in (None, ".parquet")
    if not valid:
        return None
    piece = (int(match["lo"]), int(match["hi"]), int(match["n"])) if match["n"] else None
    return {
        "sig": match["sig"],
        "shard": match["shard"],
        "seq": int(match["seq"]),
        "last": bool(match["last"]),
        "rows": piece,
    }


def _covered(pieces: list[tuple[int, int, int] | None]) -> bool:
    """A fragment is all there: a whole part, or pieces that cover rows 0..n-1."""
    if None in pieces:
        return True
    n = pieces[0][2]
    covered = np.zeros(n, bool)
    for lo, hi, _ in pieces:
        covered[lo:hi] = True
    return bool(covered.all())


def committed_shards(part_paths: list[str], sig: str) -> tuple[set[str], list[str]]:
    """Shard ids whose fragments are all there (``-last`` and every one before it, each whole
    or covered by its pieces), and the paths of the parts of shards that are not (left by a
    killed run, to be deleted before the shard is read again)."""
    pieces: dict[str, dict[int, list[Any]]] = {}
    last: dict[str, int] = {}
    paths: dict[str, list[str]] = {}
    for path in part_paths:
        info = parse_part(path)
        if info is None or info["sig"] != sig:
            continue
        shard = info["shard"]
        pieces.setdefault(shard, {}).setdefault(info["seq"], []).append(info["rows"])
        paths.setdefault(shard, []).append(path)
        if info["last"]:
            last[shard] = info["seq"]
    done = {
        shard
        for shard, n in last.items()
        if all(seq in pieces[shard] and _covered(pieces[shard][seq]) for seq in range(n + 1))
    }
    stale = [p for s, ps in paths.items() if s not in done for p in ps]
    return done, stale


def whole_part(path: str) -> str:
    """The path of the whole part a piece belongs to, in the piece's folder (a whole part's
    own path)."""
    info = parse_part(path)
    if info is None or info["rows"] is None:
        return path
    folder, _ = posixpath.split(path)
    fragment = f"{info['shard']}-{info['seq']:05d}" + ("-last" if info["last"] else "")
    name = part_name(info["sig"], fragment, suffix=part_suffix(folder))
    return f"{folder}/{name}" if folder else name


def partial_part(whole: str, pieces: list[str]) -> str:
    """The name a fragment's pieces take when they do not cover it (see
    :meth:`PieceTracker.pending`): the whole part's, its shard id marked with a hash of the
    pieces, so a later run's rows of the same fragment never overwrite these."""
    import hashlib

    info = parse_part(whole)
    folder, _ = posixpath.split(whole)
    names = "\n".join(p.rsplit("/", 1)[-1] for p in pieces)
    digest = hashlib.sha256(names.encode()).hexdigest()[:8]
    fragment = f"{info['shard']}~{digest}-{info['seq']:05d}" + ("-last" if info["last"] else "")
    name = part_name(info["sig"], fragment, suffix=part_suffix(folder))
    return f"{folder}/{name}" if folder else name


def is_whole(path: str) -> bool:
    """Whether ``path`` is a whole part (not a piece, not another file)."""
    info = parse_part(path)
    return info is not None and info["rows"] is None


class PieceTracker:
    """The pieces of fragments as the writer commits them (driver side; only fragments still
    in flight are held). :meth:`add` returns a fragment's pieces, in row order, once they
    cover it."""

    def __init__(self) -> None:
        self._pieces: dict[str, dict[str, tuple[int, int, int]]] = {}

    def add(self, path: str) -> list[str] | None:
        info = parse_part(path)
        if info is None or info["rows"] is None:
            return None
        pieces = self._pieces.setdefault(whole_part(path), {})
        pieces[path] = info["rows"]
        if not _covered(list(pieces.values())):
            return None
        del self._pieces[whole_part(path)]
        return sorted(pieces, key=lambda p: pieces[p][0])

    def pending(self) -> dict[str, list[str]]:
        """Whole part → its pieces so far, in row order, for fragments not covered yet: once a
        run has ended, all a fragment will get (rows ``--limit`` cut, or the resume anti-join
        dropped as already written)."""
        return {w: sorted(p, key=lambda q: p[q][0]) for w, p in self._pieces.items()}


def complete_pieces(paths: list[str]) -> dict[str, list[str]]:
    """Whole part → its pieces, for fragments whose pieces cover them but were not merged
    (the job was killed between the last piece and the merge)."""
    present, tracker, found = set(paths), PieceTracker(), {}
    for path in paths:
        if whole_part(path) in present:
            continue
        pieces = tracker.add(path)
        if pieces:
            found[whole_part(path)] = pieces
    return found


def write_part(fs: Any, path: str, table: pa.Table, fence: Any = None) -> None:
    """Write one part atomically: local disks get a temporary file (``.tmp-*``, a name no
    reader's ``*.parquet`` glob matches) then a rename; object stores one PUT of the whole file
    (atomic there). A killed job never leaves a partial part. ``fence``
    (:class:`vqpipe.storage.lock.Fence`): checked right before the commit, so a job that lost
    its table's lock commits nothing."""
    import io
    import os
    import uuid

    import pyarrow.parquet as pq

    from vqpipe.io.fs import is_local

    buffer = io.BytesIO()
    pq.write_table(table, buffer, write_page_checksum=True)  # damaged pages are found
    if is_local(fs):
        tmp = f"{path.rsplit('/', 1)[0]}/{TEMPORARY_PREFIX}{uuid.uuid4().hex}"
        with fs.open(tmp, "wb") as fh:
            fh.write(buffer.getvalue())
        try:
            if fence is not None:
                fence.check()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise
    else:
        if fence is not None:
            fence.check()
        fs.pipe(path, buffer.getvalue())


def merge_pieces(
    output: str,
    storage_options: dict[str, Any] | None,
    whole: str,
    pieces: list[str],
    fence: Any = None,
    partial: bool = False,
) -> tuple[int, str]:
    """Write a fragment's whole part from its pieces (in row order, the ``runtime`` of each
    merged into the part's metadata), then delete the pieces; returns its rows and schema
    (:func:`~vqpipe.storage.schemas.encode_schema`). Idempotent: a
    merge cut short after the whole part was written only deletes what is left. ``partial``:
    the pieces need not cover the fragment (a finished run's last word on it)."""
    import pyarrow.parquet as pq

    from vqpipe.io.fs import url_to_fs
    from vqpipe.schema import METADATA_KEY

    fs, _ = url_to_fs(output, storage_options)
    left = [p for p in pieces if fs.exists(p)]
    if len(left) < len(pieces):
        if not fs.exists(whole):
            raise RuntimeError(f"pieces of {whole} are missing: {sorted(set(pieces) - set(left))}")
        for path in left:
            fs.rm(path)
        meta = pq.ParquetFile(fs.open(whole, "rb")).metadata
        return meta.num_rows, encode_schema(meta.schema.to_arrow_schema())
    tables = []
    for path in pieces:
        with fs.open(path, "rb") as fh:
            tables.append(pq.read_table(fh))
    record = json.loads(tables[0].schema.metadata[METADATA_KEY])
    runtime: dict[str, set[str]] = {}
    for table in tables:
        piece = json.loads(table.schema.metadata[METADATA_KEY])
        for column, seen in piece.get("runtime", {}).items():
            runtime.setdefault(column, set()).update(json.dumps(r, sort_keys=True) for r in seen)
    record["runtime"] = {c: [json.loads(r) for r in sorted(v)] for c, v in runtime.items()}
    table = pa.concat_tables(
        [t.replace_schema_metadata(None) for t in tables], promote_options="permissive"
    )
    expected = parse_part(pieces[0])["rows"][2]
    if len(table) != expected and not partial:
        raise RuntimeError(f"pieces of {whole} hold {len(table)} rows, not {expected}")
    metadata = {METADATA_KEY: json.dumps(record, sort_keys=True)}
    write_part(fs, whole, table.replace_schema_metadata(metadata), fence)
    for path in pieces:
        fs.rm(path)
    return len(table), encode_schema(table.schema)
