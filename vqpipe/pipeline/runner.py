"""One job runner for every job kind that writes a quality table (``score``, ``compare``):

validate → lock → settle → plan → start Ray → execute → repeats → swap → record.

A :class:`JobKind` says what differs — its checks, signature, plan and Ray Data graph; the
table itself (parts, lock, staging, record) is :class:`vqpipe.storage.QualityTable`'s. Every
commit is fenced by the lock (:class:`vqpipe.storage.Fence`): a job that lost its table while
paused stops in one line and commits nothing more.

Why one module of ~600 lines: the runner's steps share the lock and the order they run in
(commit → repeats → swap → record is what makes a kill at any moment safe); split by step,
that order would be spread over files that each look free to reorder.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vqpipe.console import RateMeter
from vqpipe.errors import UserError, check_interrupted
from vqpipe.io.media_types import PARQUET_SUFFIXES
from vqpipe.pipeline.config import JobConfig
from vqpipe.pipeline.score_stage import DeviceUnavailableError
from vqpipe.pipeline.shards import Shard, signature_hash
from vqpipe.pipeline.stages import actor_cpus
from vqpipe.pipeline.validate import check_cluster_resources, storage_error
from vqpipe.schema import METADATA_KEY
from vqpipe.storage import LostLockError, QualityTable, TableLock
from vqpipe.storage.names import SUPERSEDE_PENDING
from vqpipe.storage.parts import (
    PieceTracker,
    committed_shards,
    merge_pieces,
    parse_part,
    partial_part,
    whole_part,
)
from vqpipe.storage.repeats import PENDING, Removed, drop_repeats, drop_superseded
from vqpipe.storage.retry import DRIVER_SCAN_MAX_PARTS, Scan, scan_parts
from vqpipe.storage.schema_pass import conform_parts
from vqpipe.storage.schemas import decode_schema

log = logging.getLogger(__name__)
SETTINGS = "settings"
"""The signature's job options that change a score, by CLI option (see :func:`check_settings`)."""
STARTED_RAY = False
"""Whether a job of this process started Ray (the CLI then stops it; a caller's Ray stays)."""


@dataclass
class Work:
    """What a job has left to do, planned on the driver without Ray: the read tasks (shards
    or listing tasks), the parts a listing resumes over, and the summary so far."""

    source: list[dict[str, Any]]
    done_parts: list[str]
    total: int | None
    summary: dict[str, Any]
    shard_ids: list[str] | None = None
    """Manifest shards in job order, when there are several: repeats across them are removed
    once the shards are committed (:func:`vqpipe.storage.repeats.drop_repeats`)."""
    repeats: Removed = field(default_factory=Removed)
    superseded: list[str] = field(default_factory=list)
    """Parts of shards whose content changed since they were written: read again, and those
    of their fragments the new version does not rewrite are deleted after the run."""
    replacing: bool = False
    """The run may score files again whose earlier rows the table holds (a listing resumed
    over written parts): their earlier rows are dropped after it."""


@dataclass
class Build:
    """What :meth:`JobKind.build` builds a run's graph from."""

    config: JobConfig
    work: Work
    signature: dict[str, Any]
    sig: str
    target: QualityTable
    """Where the parts go: the table, or its staging folder (``--no-resume``)."""
    fence: Any
    """Checked by the writers before each commit (:class:`vqpipe.storage.Fence`)."""
    resume: dict[str, Any] = field(default_factory=dict)
    """What :meth:`JobKind.resume_filter` gave (listings)."""


class JobKind:
    """What a kind of job brings to :func:`run`."""

    task: str | None = None
    """Written in the record (``compare-pairs``); None for scoring jobs."""
    rows_key = "scored_rows"
    rate_key = "items_per_s"

    def validate(self, config: JobConfig) -> None:
        """Every check that needs no Ray; raises :class:`UserError`."""
        raise NotImplementedError

    def signature(self, config: JobConfig) -> dict[str, Any]:
        """What makes two runs' rows comparable (``scorers`` names the part signature)."""
        raise NotImplementedError

    def notices(self, config: JobConfig) -> list[str]:
        return []

    def plan(
        self, config: JobConfig, table: QualityTable, sig: str, parts: list[str], scan: Scan
    ) -> Work:
        """What is left to do, given the table's parts and what the resume scan found."""
        raise NotImplementedError

    def prepare(self, config: JobConfig) -> None:
        """Checks run only when there is work (they may load model code)."""

    def resume_filter(self, config: JobConfig, table: QualityTable, work: Work) -> dict[str, Any]:
        """What :meth:`build` needs to drop rows already written (listings)."""
        return {}

    def build(self, run: Build) -> Any:
        """The Ray Data graph, ending in one summary row per written part or piece."""
        raise NotImplementedError

    def facts(self, config: JobConfig) -> dict[str, dict[str, Any]]:
        """Per output column, what a reader of the table needs to know about it."""
        raise NotImplementedError


def start_ray(config: JobConfig) -> None:
    """Attach to ``config.address`` (else RAY_ADDRESS's cluster, else a local Ray) unless Ray
    is up, then check every pool's request against the cluster."""
    import ray

    if not ray.is_initialized():
        global STARTED_RAY
        # ray.init replaces the SIGTERM handler (with sys.exit); the caller's stays
        previous = signal.getsignal(signal.SIGTERM)
        ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
        STARTED_RAY = True
        if threading.current_thread() is threading.main_thread() and previous is not None:
            signal.signal(signal.SIGTERM, previous)
    check_cluster_resources(
        config.scorers, {s.column: actor_cpus(s, config.scorers) for s in config.scorers}
    )


def job_progress(
    written: list[dict[str, Any]],
    total: int | None,
    elapsed: float,
    meter: RateMeter | None = None,
) -> dict[str, Any]:
    """Counts, the overall rate, and the scoring rate and ETA after warm-up: measured from the
    first committed part (its time is noted on it at the first call, which comes as soon as
    that part is in), so Ray's and the actors' start-up do not count; with ``meter`` (fed each
    commit by :func:`execute`) the scoring rate is its burst-proof estimate instead. ``total``
    is None when the input's size is not known in advance (tar shards, nested listings)."""
    done = sum(int(w["rows"]) for w in written)
    rate = done / elapsed if elapsed > 0 else 0.0
    steady = None
    if meter is not None:
        steady = meter.rate(elapsed)
    elif written:
        first_s = written[0].setdefault("_committed_s", elapsed)
        if len(written) > 1 and elapsed > first_s:
            steady = (done - int(written[0]["rows"])) / (elapsed - first_s)
    return {
        "done": done,
        "total": total,
        "errors": sum(int(w["errors"]) for w in written),
        "items_per_s": round(rate, 2),
        "scoring_items_per_s": round(steady, 2) if steady is not None else None,
        "eta_s": None
        if total is None
        else (round((total - done) / steady, 1) if steady else (0.0 if done >= total else None)),
    }


_KNOWN_FAILURES: tuple[type[Exception], ...] = (DeviceUnavailableError, LostLockError)


def known_failure(exc: BaseException) -> Exception | None:
    """The :class:`DeviceUnavailableError` or :class:`LostLockError` inside what Ray raised
    for a failed task or actor (an actor whose constructor raised comes back as
    ``ActorDiedError`` holding only the text)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, _KNOWN_FAILURES):
            return exc
        text = str(exc)
        for kind in _KNOWN_FAILURES:
            marker = f"{kind.__name__}: "
            if marker in text:
                return kind(text.rsplit(marker, 1)[1].splitlines()[0])
        exc = exc.__cause__ or exc.__context__
    return None


class Schemas:
    """Part path → schema, for the parts a run knows (scanned or written); one object per
    distinct schema (a run writes millions of parts of a few schemas)."""

    def __init__(self, known: dict[str, pa.Schema] | None = None) -> None:
        self.parts: dict[str, pa.Schema] = dict(known or {})
        self.fresh: set[str] = set()
        """The parts this run wrote."""
        self._decoded: dict[str, pa.Schema] = {}

    def add(self, part: str, text: str) -> None:
        """A part this run wrote, and its schema."""
        if text not in self._decoded:
            self._decoded[text] = decode_schema(text)
        self.parts[part] = self._decoded[text]
        self.fresh.add(part)


def execute(
    ds: Any,
    config: JobConfig,
    target: QualityTable,
    lock: TableLock,
    total: int | None,
    started: float,
    progress: Callable[[dict[str, Any]], None] | None,
    progress_every_s: float,
    schemas: Schemas,
) -> tuple[list[dict[str, Any]], int]:
    """Run the graph: one summary row per written part or piece, as they are committed; a
    fragment whose pieces are all in is merged into one part by a Ray task. Returns the
    summary rows and the number of parts written; each part's schema goes into ``schemas``."""
    import ray

    written: list[dict[str, Any]] = []
    last, reported = 0.0, -1
    meter = RateMeter()
    tracker, merges = PieceTracker(), []
    merge = ray.remote(num_cpus=0, max_retries=3)(merge_pieces)
    try:
        for row in ds.iter_rows():
            check_interrupted()  # a Ctrl-C that Ray Data's iterator caught still stops the job
            if lock.lost.is_set():
                lock.check()
            text = row.pop("schema", None)
            written.append(row)
            if whole_part(row["file"]) == row["file"]:
                schemas.add(row["file"], text)
            pieces = tracker.add(row["file"])
            if pieces:  # a fragment's pieces are all in: one part again
                merged = whole_part(pieces[0])
                args = (target.uri, target.storage_options, merged, pieces)
                merges.append((merged, merge.remote(*args, fence=lock.fence)))
            now = time.perf_counter()
            meter.add(int(row["rows"]), now - started)
            if progress is not None and (now - last >= progress_every_s or len(written) == 1):
                last, reported = now, len(written)
                progress(job_progress(written, total, now - started, meter))
        # the run is over: a fragment still in pieces has all the rows it will get (--limit
        # cut it, or the resume anti-join dropped rows already written): one part of them
        for whole_path, pieces in tracker.pending().items():
            merged = partial_part(whole_path, pieces)
            args = (target.uri, target.storage_options, merged, pieces)
            merges.append((merged, merge.remote(*args, fence=lock.fence, partial=True)))
        for merged, (_, text) in zip(
            [m for m, _ in merges], ray.get([r for _, r in merges]), strict=True
        ):
            schemas.add(merged, text)
    except Exception as exc:
        found = known_failure(exc)
        if found is not None:
            raise found from None
        raise
    done = sum(int(w["rows"]) for w in written)
    if total is not None and done != total:  # the run is over: repeats dropped, inputs gone
        total, reported = done, -1
    if progress is not None and reported != len(written):
        progress(job_progress(written, total, time.perf_counter() - started, meter))
    files = sum(1 for row in written if whole_part(row["file"]) == row["file"]) + len(merges)
    return written, files


def refuse_foreign(config: JobConfig, table: QualityTable, sig: str) -> None:
    foreign = table.foreign_parts(sig)
    if foreign:
        raise UserError(
            f"{config.output} holds results of other scorers, versions, options or "
            f"checkpoints ({foreign[0]}); write to a new --out, or pass --no-resume to "
            "replace them"
        )


def recorded_signature(table: QualityTable, parts: list[str]) -> dict[str, Any] | None:
    """The signature the table's rows were written under: the last job's record, else (a first
    run killed before its record) the metadata of a part."""
    record = table.read_record()
    if record and isinstance(record.get("signature"), dict):
        return record["signature"]
    for part in parts[:1]:
        try:
            with table.fs.open(part, "rb") as fh:
                metadata = pq.read_schema(fh).metadata or {}
            return json.loads(metadata[METADATA_KEY])
        except Exception:  # a damaged part: the scan moves it aside
            return None
    return None


def check_settings(
    config: JobConfig, table: QualityTable, parts: list[str], signature: dict[str, Any]
) -> None:
    """Refuse, in one line naming the option, a resume whose score-changing settings differ
    from those the table was written with (a table of an earlier version without them: any)."""
    if not parts:
        return
    before = (recorded_signature(table, parts) or {}).get(SETTINGS)
    if not isinstance(before, dict):
        return
    for option, value in signature.get(SETTINGS, {}).items():
        if option in before and before[option] != value:
            raise UserError(
                f"{option} {json.dumps(value)} differs from the {json.dumps(before[option])} "
                f"{config.output} was scored with; pass the same {option}, write to a new "
                "--out, or pass --no-resume to replace the table"
            )


def shard_of(part: str, sig: str) -> str | None:
    info = parse_part(part)
    return info["shard"] if info is not None and info["sig"] == sig else None


def plan_sharded(
    table: QualityTable, shards: list[Shard], sig: str, parts: list[str], scan: Scan
) -> Work:
    """Shards not committed yet, or changed since (their content version differs from the one
    their rows were read from: read again, their parts replaced part by part); fragments of
    shards a killed run left half-done are deleted, and a committed shard with rows to score
    again (``scan.retry``) is read again whole."""
    done, stale = committed_shards(parts, sig)
    again = {shard_of(p, sig) for p in scan.retry} & done
    stale += [p for p in parts if shard_of(p, sig) in again]
    done -= again
    current = {s.id: s.version for s in shards}
    changed: set[str] = set()
    for part in parts:
        shard = shard_of(part, sig)
        now = current.get(shard)
        recorded = scan.versions.get(part, [])  # none recorded: a table of an earlier version
        if shard in done and now is not None and any(v not in (None, now) for v in recorded):
            changed.add(shard)
    done -= changed
    for path in stale:
        table.fs.rm(path)
    todo = [
        {"uri": s.uri, "format": s.format, "id": s.id, "version": s.version}
        | ({} if s.offset is None else {"offset": s.offset})
        for s in shards
        if s.id not in done
    ]
    summary: dict[str, Any] = {
        "shards": len(shards),
        "shards_already_done": len(shards) - len(todo),
    }
    if again:
        summary["shards_retried"] = len(again)
    if changed:
        summary["shards_changed"] = len(changed)
    work = Work(todo, [], None, summary)
    work.superseded = [p for p in parts if shard_of(p, sig) in changed]
    return work


def all_parquet(shards: list[Shard]) -> bool:
    return all(s.uri.lower().endswith(PARQUET_SUFFIXES) for s in shards)


def pool_runtime(written: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """The distinct (device, dtype, node) a pool's actors ran with, over the written parts."""
    seen = {
        json.dumps(r, sort_keys=True)
        for w in written
        for r in json.loads(str(w.get("runtime") or "{}")).get(column, [])
    }
    return [json.loads(r) for r in sorted(seen)]


def run(
    kind: JobKind,
    config: JobConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every_s: float = 10.0,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run a job of ``kind``; returns the summary (also in the table's ``_job.json``). User
    mistakes raise :class:`UserError` before Ray starts or anything is written."""
    notice = notice or log.warning
    started = time.perf_counter()
    kind.validate(config)
    config = config.resolved()  # the pools' scorer arguments, once: workers get them as they are
    signature = kind.signature(config)
    sig = signature_hash(signature)
    for line in kind.notices(config):
        notice(line)
    table = QualityTable(config.output, config.storage_options)
    created = not table.exists()
    try:
        table.create()  # every check that needs no Ray passed
    except Exception as exc:
        raise storage_error(exc, f"output {config.output} (not writable)") from None
    try:
        with table.lock() as lock:
            table.settle_pieces()
            table.finish_replacement()
            return _run_locked(
                kind, config, table, lock, signature, sig, started, progress, progress_every_s
            )
    except UserError:  # refused once Ray was up (e.g. GPUs it does not have): leave nothing
        if created:
            table.remove_if_empty()
        raise


def _run_locked(
    kind: JobKind,
    config: JobConfig,
    table: QualityTable,
    lock: TableLock,
    signature: dict[str, Any],
    sig: str,
    started: float,
    progress: Callable[[dict[str, Any]], None] | None,
    progress_every_s: float,
) -> dict[str, Any]:
    target = table if config.resume else table.staging()
    parts = table.parts() if config.resume else []
    if config.resume:
        refuse_foreign(config, table, sig)
        check_settings(config, table, parts, signature)
    # every part read whole: damaged parts are moved aside (their rows are scored again)
    if len(parts) > DRIVER_SCAN_MAX_PARTS:
        start_ray(config)  # many parts are scanned by Ray tasks
    scan = scan_parts(table.fs, parts, config.retry_errors, table.uri, table.storage_options)
    schemas = Schemas(scan.schemas)
    for part, why in scan.damaged.items():
        table.quarantine(part, why)
    parts = [p for p in parts if p not in scan.damaged]
    work = kind.plan(config, table, sig, parts, scan)
    if scan.damaged:
        work.summary["parts_quarantined"] = len(scan.damaged)
    if work.source:
        kind.prepare(config)
    if not config.resume:
        target.fs.makedirs(target.root, exist_ok=True)
    written: list[dict[str, Any]] = []
    files = 0
    # passes a kill may leave owed: marked before the first part, cleared once done
    settle, supersede = target.path(PENDING), target.path(SUPERSEDE_PENDING)
    dedupe = work.shard_ids is not None and (bool(work.source) or target.fs.exists(settle))
    if dedupe and work.source:
        target.fs.pipe(settle, b"")
    owed = target.fs.exists(supersede)
    replacing = (work.replacing and bool(work.source)) or owed
    if replacing and work.source:
        target.fs.pipe(supersede, b"")
    if work.source:
        start_ray(config)
        resume = kind.resume_filter(config, table, work)
        ds = kind.build(Build(config, work, signature, sig, target, lock.fence, resume))
        written, files = execute(
            ds, config, target, lock, work.total, started, progress, progress_every_s, schemas
        )
    lock.check()
    superseded = [p for p in work.superseded if p not in schemas.fresh]
    for part in superseded:  # a changed shard's fragments its new version no longer has
        lock.check()
        target.fs.rm(part)
    if dedupe:
        mine = [p for p in target.parts() if shard_of(p, sig)]
        before = {p.rsplit("/", 1)[-1] for p in parts}
        work.repeats = drop_repeats(
            target.uri,
            mine,
            work.shard_ids,
            before,
            target.storage_options,
            lambda: start_ray(config),
            fence=lock.fence,
        )
        target.fs.rm(settle)
    if replacing and (written or owed):  # no row written, no earlier row to drop
        replaced = drop_superseded(
            target.uri,
            schemas.fresh,
            target.storage_options,
            lambda: start_ray(config),
            fence=lock.fence,
        )
        if replaced.rows:
            work.summary["rows_replaced"] = replaced.rows
    if replacing:
        target.fs.rm(supersede)
    lock.check()
    _, conformed = conform_parts(
        target.fs,
        _final_schemas(target, schemas),
        lock.fence,
        target.uri_of,
        target.storage_options,
        lambda: start_ray(config),
    )
    if conformed:
        work.summary["parts_conformed"] = conformed
    if not config.resume:
        lock.check()
        target.mark_complete(sig)
        table.finish_replacement()
    return _record_job(kind, config, table, signature, sig, work, written, files, started)


def _final_schemas(target: QualityTable, schemas: Schemas) -> dict[str, pa.Schema]:
    """Every part of ``target`` now, with its schema: known from the scan or this run's
    writers, else (a part no step of this run saw, e.g. a killed run's) read from its footer."""
    parts = target.parts()
    unknown = [p for p in parts if p not in schemas.parts]
    for part in unknown:
        with target.fs.open(part, "rb") as fh:
            schemas.parts[part] = pq.read_schema(fh)
    return {p: schemas.parts[p] for p in parts}


def _record_job(
    kind: JobKind,
    config: JobConfig,
    table: QualityTable,
    signature: dict[str, Any],
    sig: str,
    work: Work,
    written: list[dict[str, Any]],
    files: int,
    started: float,
) -> dict[str, Any]:
    """The summary, also written to ``_job.json`` with the signature and each pool's facts."""
    seconds = time.perf_counter() - started
    final = job_progress(written, work.total, seconds)
    removed = work.repeats  # this run's own repeats are not in its table: not counted
    summary = {
        **work.summary,
        kind.rows_key: final["done"] - removed.new_rows,
        "errors": final["errors"] - removed.new_errors,
        "files_written": files,
        "duplicates_dropped": removed.rows + sum(int(w.get("duplicates") or 0) for w in written),
    }
    sidecars = work.summary.get("sidecars_skipped", 0)
    sidecars += sum(int(w.get("sidecars") or 0) for w in written)
    if sidecars:  # producers' metadata files beside the media (img2dataset): not inputs
        summary["sidecars_skipped"] = sidecars
    summary |= {
        "seconds": round(seconds, 2),
        kind.rate_key: final["items_per_s"] if seconds > 0 else None,
    }
    record = {
        **({"task": kind.task} if kind.task else {}),
        "signature": signature,
        "signature_hash": sig,
        "scorers": {
            column: {**facts, "runtime": pool_runtime(written, column)}
            for column, facts in kind.facts(config).items()
        },
        "config": config.to_metadata(),
        "summary": summary,
    }
    table.write_record(record)
    return summary


def committed_parts(config: JobConfig) -> int:
    """Parts in the output now (``--no-resume``: in its staging folder)."""
    try:
        table = QualityTable(config.output, config.storage_options)
        return len((table if config.resume else table.staging()).parts())
    except Exception:  # the count is a courtesy; the store may be what failed
        return 0
