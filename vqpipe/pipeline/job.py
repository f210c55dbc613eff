"""The scoring job: plan → read/decode (CPU tasks) → score (one actor pool per scorer) → write.

Output: Parquet parts with deterministic names (``part-<signature>-<fragment>.parquet``, each
written atomically; see :mod:`vqpipe.pipeline.shards`) plus ``_job.json``. Sharded inputs
(WebDataset tars, Parquet with media bytes, manifest shards) commit shard by shard and resume by
listing the output; a listing of files resumes by the URIs already written. Parts of other
scorers, versions or checkpoints refuse a resume. ``_lock`` keeps a second job off the output;
``--no-resume`` replaces old results only once the new ones are all committed.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq

import vqpipe
from vqpipe.errors import UserError
from vqpipe.io.artifacts import COMMITTED, JOB_RECORD, STAGING, is_job_artifact
from vqpipe.io.checkpoints import checkpoint_identity
from vqpipe.io.fs import is_local, url_to_fs
from vqpipe.io.input_format import PARQUET_SUFFIXES
from vqpipe.io.sources import join_uri
from vqpipe.pipeline.config import JobConfig, ScorerOptions
from vqpipe.pipeline.damaged import quarantine, readable_parts, warn_damaged
from vqpipe.pipeline.dedupe import PENDING, Removed, drop_repeats, unified_types
from vqpipe.pipeline.lock import OutputLock
from vqpipe.pipeline.retry import DRIVER_SCAN_MAX_PARTS, drop_retryable, scan_parts
from vqpipe.pipeline.schema import (
    BYTES,
    ERROR,
    ERROR_KIND,
    MEDIA_COLUMNS,
    MEDIA_TYPE,
    URI,
    output_columns,
)
from vqpipe.pipeline.shards import (
    BLOCK_ROWS,
    LISTING,
    LISTING_PART_ROWS,
    SHARD_FRAGMENT_ROWS,
    SHARDED_FORMATS,
    PieceTracker,
    Shard,
    committed_shards,
    complete_pieces,
    listing_tables,
    merge_pieces,
    parse_part,
    shard_id,
    signature_hash,
    visible_parts,
    whole_part,
)
from vqpipe.pipeline.stages import (
    DeviceUnavailableError,
    Stage,
    actor_cpus,
    decode_cpus,
    decode_stage,
    follow_stage,
    read_decode_stage,
    read_stage,
    score_stage,
    scores_in_tasks,
    write_stage,
)
from vqpipe.pipeline.validate import (
    check_checkpoints,
    check_cluster_resources,
    storage_error,
    validate_job,
)

log = logging.getLogger(__name__)
BUNDLED_DEMO = "bundled-demo"
STARTED_RAY = False
"""Whether a job of this process started Ray (the CLI then stops it; a caller's Ray stays)."""


def _uses_bundled(spec: ScorerOptions) -> bool:
    bundled = spec.scorer_class().bundled_checkpoint()
    given = spec.options.get("checkpoint")
    return bundled is not None and (given is None or str(given) == str(bundled))


def scorer_signature(spec: ScorerOptions, storage_options: dict[str, Any]) -> dict[str, Any]:
    """What makes scores comparable: scorer name and version, output column, options and the
    checkpoint's identity (computed without downloading it: see ``checkpoint_identity``)."""
    cls = spec.scorer_class()
    kwargs = spec.scorer_kwargs(storage_options)
    checkpoint = kwargs.get("checkpoint") or cls.default_checkpoint()
    digest = None
    if checkpoint is not None:
        try:
            digest = checkpoint_identity(checkpoint, kwargs.get("storage_options"))
        except FileNotFoundError as exc:
            raise UserError(f"scorer {spec.column}: {exc}") from None
    options = {k: v for k, v in spec.options.items() if k not in ("device", "storage_options")}
    return {
        "name": spec.name,
        "version": cls.version,
        "column": spec.column,
        "options": options,
        "checkpoint_fingerprint": digest,
    }


def scorer_facts(spec: ScorerOptions) -> dict[str, Any]:
    """What a reader of the table needs to know about a pool's columns."""
    cls = spec.scorer_class()
    checkpoint = spec.options.get("checkpoint") or cls.default_checkpoint()
    return {
        "name": spec.name,
        "version": cls.version,
        "score_range": list(cls.score_range),
        "higher_better": cls.higher_better,
        "prob_labels": list(cls.prob_labels),
        "extra_outputs": list(cls.extra_outputs),
        "media": sorted(cls.media),
        "checkpoint": BUNDLED_DEMO
        if _uses_bundled(spec)
        else (str(checkpoint) if checkpoint else None),
    }


def demo_notice(config: JobConfig) -> list[str]:
    """One console line per pool that scores with a bundled demo checkpoint."""
    return [
        f"scoring with the bundled demo {spec.name} checkpoint, trained on synthetic data only; "
        f"pass {spec.name}:checkpoint=... for real weights"
        for spec in config.scorers
        if _uses_bundled(spec)
    ]


def output_fs(
    output: str, storage_options: dict[str, Any] | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = url_to_fs(output, storage_options)
    return fs, root.rstrip("/")


def create_output(config: JobConfig) -> None:
    """Create the output directory (a no-op on object stores) and, when it is local, write a
    probe into it: :func:`vqpipe.pipeline.validate.check_output` already probed a store, but
    could only check a local output's permissions (it creates nothing), which a full disk or
    a squashed NFS root passes."""
    fs, root = output_fs(config.output, config.storage_options)
    try:
        fs.makedirs(root, exist_ok=True)
        if is_local(fs):
            probe = f"{root}/.vqpipe-write-probe"
            fs.pipe(probe, b"ok")
            fs.rm(probe)
    except Exception as exc:
        raise storage_error(exc, f"output {config.output} (not writable)") from None


def existing_parts(
    output: str, storage_options: dict[str, Any] | None = None, visible: bool = True
) -> list[str]:
    """The committed ``part-*.parquet`` files under ``output`` (temporary files excluded;
    pieces already merged into their whole part too, unless ``visible`` is False)."""
    fs, root = output_fs(output, storage_options)
    if not fs.exists(root):
        return []
    parts = sorted(
        p
        for p in fs.ls(root, detail=False)
        if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet")
    )
    return visible_parts(parts) if visible else parts


def settle_pieces(output: str, storage_options: dict[str, Any] | None) -> None:
    """Finish what a killed job left between a fragment's last piece and its merge: pieces
    that cover their fragment are merged, pieces whose whole part exists are deleted."""
    fs, _ = output_fs(output, storage_options)
    parts = existing_parts(output, storage_options, visible=False)
    shown = set(visible_parts(parts))
    for path in parts:
        if path not in shown:
            fs.rm(path)
    for whole, pieces in complete_pieces(sorted(shown)).items():
        merge_pieces(output, storage_options, whole, pieces)


def fragment_rows(config: JobConfig, kind: str) -> int:
    """Rows per fragment (the output part of a commit unit): ``--rows-per-file``, else
    :data:`LISTING_PART_ROWS` for a listing of files and :data:`SHARD_FRAGMENT_ROWS` for a
    sharded input."""
    if config.rows_per_file is not None:
        return config.rows_per_file
    return SHARD_FRAGMENT_ROWS if kind in SHARDED_FORMATS else LISTING_PART_ROWS


def _foreign_parts(parts: list[str], sig: str) -> list[str]:
    return [p for p in parts if (parse_part(p) or {}).get("sig") != sig]


def refuse_foreign(config: JobConfig, parts: list[str], sig: str) -> None:
    foreign = _foreign_parts(parts, sig)
    if foreign:
        raise UserError(
            f"{config.output} holds results of other scorers, versions, options or "
            f"checkpoints ({foreign[0]}); write to a new --out, or pass --no-resume to "
            "replace them"
        )


def done_uris(config: JobConfig, parts: list[str]) -> set[str]:
    """URIs in the committed parts (a listing of files resumes by URI: a new file anywhere in
    a prefix changes which slice the others fall in)."""
    fs, _ = output_fs(config.output, config.storage_options)
    done: set[str] = set()
    for part in parts:
        with fs.open(part, "rb") as fh:
            done.update(pq.ParquetFile(fh).read(columns=[URI]).column(URI).to_pylist())
    return done


def job_progress(
    written: list[dict[str, Any]], total: int | None, elapsed: float
) -> dict[str, Any]:
    """Counts, the overall rate, and the scoring rate and ETA after warm-up: measured from the
    first committed part (its time is noted on it at the first call, which comes as soon as
    that part is in), so Ray's and the actors' start-up do not count. ``total`` is None when
    the input's size is not known in advance (sharded inputs, listings)."""
    done = sum(int(w["rows"]) for w in written)
    rate = done / elapsed if elapsed > 0 else 0.0
    steady = None
    if written:
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


def format_progress(p: dict[str, Any]) -> str:
    """One summary line: ``scored 1200/5000, 3 errors, 85.2 items/s, ETA 45 s`` (``scored
    1200`` when the total is not known); before a second part is in, the rate is not known
    yet (``ETA after warm-up``)."""
    from vqpipe.console import format_eta

    total = p["total"]
    head = (
        f"scored {p['done']}" + ("" if total is None else f"/{total}") + f", {p['errors']} errors"
    )
    rate = p.get("scoring_items_per_s")
    if total is None:  # no ETA without a total: the rates only
        return f"{head}, {rate or p['items_per_s']} items/s"
    if p["done"] >= total:
        return f"{head}, {p['items_per_s']} items/s overall"
    if rate is None:
        return f"{head}, ETA after warm-up"
    return f"{head}, {rate} items/s, ETA {format_eta(p['eta_s'])}"


def unusable_device(exc: BaseException) -> DeviceUnavailableError | None:
    """The :class:`DeviceUnavailableError` inside what Ray raised for a failed actor: an actor
    whose constructor raised comes back as ``ActorDiedError`` holding only the text."""
    marker = f"{DeviceUnavailableError.__name__}: "
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, DeviceUnavailableError):
            return exc
        text = str(exc)
        if marker in text:
            return DeviceUnavailableError(text.rsplit(marker, 1)[1].splitlines()[0])
        exc = exc.__cause__ or exc.__context__
    return None


def build_dataset(
    config: JobConfig,
    shards: list[dict[str, str]],
    signature: dict[str, Any],
    sig: str,
    output: str,
    done: Any = None,
    done_set: frozenset[str] = frozenset(),
    join_partitions: int = 1,
) -> Any:
    """The graph, top to bottom: shards or listing tasks → read, fragment by fragment (CPU
    tasks) → [anti-join on ``uri`` with ``done``, the rows already written] → decode (one
    block per task) → one actor pool per scorer → write (one summary row per part or piece).
    Each stage's resources and batch size are its own (:mod:`vqpipe.pipeline.stages`).

    Fixed cost per job is operators, tasks and worker processes, so: a sharded input (no
    resume join, no ``--limit``) is read and decoded shard by shard in one task, a few small
    shards per task (:func:`read_decode`, :func:`_fused_tasks`);
    pools whose scorer has nothing to load score in the decode tasks (:func:`scores_in_tasks`:
    no actor, whose process starts anew on every job); and writing takes the decode tasks'
    requests when no actor pool comes between, so Ray Data fuses it into them. A WebDataset
    job with the brightness scorer is then one operator: read → decode → score → write."""
    import ray

    listing = bool(shards) and shards[0]["format"] == LISTING
    rows = fragment_rows(config, shards[0]["format"] if shards else LISTING)
    block = min(BLOCK_ROWS, rows)
    so = config.storage_options
    pools = list(zip(config.scorers, signature["scorers"], strict=True))
    in_tasks = [(spec, s["checkpoint_fingerprint"]) for spec, s in pools if scores_in_tasks(spec)]
    decode = {
        "scorers": config.scorers,
        "video_fps": config.video_fps,
        "limits": config.limits,
        "pools": in_tasks,
    }
    options = {**_read_options(config, rows), "done": done_set}
    stage: Stage | None
    cpus = decode_cpus(config.scorers)
    fused = not listing and done is None and config.limit is None
    tasks = _fused_tasks(shards, cpus) if fused else None
    if tasks is not None:
        # a shard is read, decoded (and scored by the pools that score in tasks) in one call,
        # a few shards per task when they are many
        ds = ray.data.from_items(shards, override_num_blocks=tasks)
        stage = read_decode_stage(cpus)
        ds = stage.apply(
            ds,
            fn_kwargs={
                "options": options,
                "storage_options": so,
                "decode": decode,
                "block_rows": block,
            },
        )
    else:
        ds = ray.data.from_items(shards, override_num_blocks=max(1, len(shards)))
        ds = read_stage().apply(ds, fn_kwargs={"options": options, "storage_options": so})
        if done is not None:  # distributed: the driver never holds the URIs already written
            ds = ds.join(done, join_type="left_anti", on=(URI,), num_partitions=join_partitions)
        if listing:
            # A listing task's fragments (tiny rows, up to LISTING_PART_ROWS each) leave it as
            # big blocks (Ray Data coalesces a task's small outputs): cut them to BLOCK_ROWS so
            # decoding and scoring stream and spread over tasks; the writer's pieces are merged
            # back into one part per fragment. Shards of media bytes fill blocks on their own.
            ds = ds.repartition(target_num_rows_per_block=block)
        if config.limit is not None:
            ds = ds.limit(config.limit)
        stage = decode_stage(block, cpus)
        ds = stage.apply(ds, fn_kwargs={**decode, "storage_options": so})
    for spec, scorer in pools:
        if scores_in_tasks(spec):
            continue
        pool = {"spec": spec, "storage_options": so}
        fingerprint = scorer["checkpoint_fingerprint"]
        stage = score_stage(spec, config.scorers)
        ds = stage.apply(ds, fn_constructor_kwargs={**pool, "fingerprint": fingerprint})
    if config.calibration:  # --calibration: <column>_calibrated, fused into the write tasks
        from vqpipe.rewards.calibrate import calibrate_batch

        stage = follow_stage(calibrate_batch, stage)
        ds = stage.apply(ds, fn_args=(config.calibration,))
    write = {
        "output": output,
        "storage_options": so,
        "metadata": {**signature, "outputs": {s.column: scorer_facts(s) for s in config.scorers}},
        "scorer_columns": [s.column for s in config.scorers],
        "sig": sig,
    }
    # after the decode tasks (every pool scores in them), writing is fused into those tasks
    return write_stage(stage).apply(ds, fn_kwargs=write)


SHARDS_PER_TASK = 4
"""At most this many shards per fused task (:func:`_fused_tasks`): a retried task redoes its
shards, so the grouping stays small."""


def _fused_tasks(shards: list[dict[str, Any]], cpus: float) -> int | None:
    """How many fused read → decode → write tasks to spread the shards over, or None when
    there are too few shards to keep every decode slot of the cluster busy with one task per
    shard (twice as many): then a shard's blocks are decoded by tasks of their own, so that a
    few big shards (one manifest of a million rows) still spread over the CPUs.

    Many small shards share tasks, at least two tasks per slot and at most
    :data:`SHARDS_PER_TASK` shards each, as Ray Data's file readers group small files: Ray
    Data refills a slot a scheduling round (~0.1 s) after its task ends, a cost paid per task,
    close to half the work of a 250-sample shard."""
    import ray

    slots = ray.cluster_resources().get("CPU", 1.0) / max(cpus, 1e-3)
    if len(shards) < 2 * slots:
        return None
    return max(math.ceil(2 * slots), math.ceil(len(shards) / SHARDS_PER_TASK))


JOIN_PARTITIONS = 64
DRIVER_RESUME_MAX_PARTS = 64
DRIVER_RESUME_MAX_ROWS = 100_000
"""A listing resumed over at most this many parts holding at most this many rows reads their
URIs on the driver and drops them in the listing tasks; past it, a distributed anti-join."""


def _driver_resumable(fs: fsspec.AbstractFileSystem, parts: list[str]) -> bool:
    """Whether the URIs of ``parts`` are few enough for the driver (their footers say)."""
    if len(parts) > DRIVER_RESUME_MAX_PARTS:
        return False
    rows = 0
    for part in parts:
        with fs.open(part, "rb") as fh:
            rows += pq.ParquetFile(fh).metadata.num_rows
    return rows <= DRIVER_RESUME_MAX_ROWS


def _read_options(config: JobConfig, rows: int) -> dict[str, Any]:
    return {
        "spec": config.input,
        "include": list(config.include),
        "exclude": list(config.exclude),
        "since": config.since,
        "output": _output_uri(config),
        "limit": config.limit,
        "rows": rows,
        "max_bytes": config.limits.max_bytes,
        "uri_column": config.uri_column,
        "media_column": config.media_column,
        "key_column": config.key_column,
        "root": config.root,
        "reserved": sorted(output_names(config)),
    }


def output_names(config: JobConfig) -> set[str]:
    """The quality table's own column names for this job (a carried column with one of them
    is kept as ``input_<name>``)."""
    names = {URI, "shard", "key", MEDIA_TYPE, BYTES, ERROR, ERROR_KIND, *MEDIA_COLUMNS}
    for spec in config.scorers:
        names.update(output_columns(spec.column, spec.scorer_class().extra_outputs))
    return names


def resolve_format(config: JobConfig) -> str:
    """The input kind: ``--input-format``, or what :func:`detect_format` reads off the input."""
    from vqpipe.io.input_format import detect_format

    if config.input_format != "auto":
        return config.input_format
    try:
        return detect_format(
            config.input,
            config.storage_options,
            uri_column=config.uri_column,
            media_column=config.media_column,
        )
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None


def _inside(uri: str, output: str) -> bool:
    base = output.rstrip("/")
    return uri == base or uri.startswith(base + "/")


def plan_shards(config: JobConfig, kind: str) -> list[Shard]:
    """The input's shards of ``kind`` (sorted), the job's own output excluded."""
    from vqpipe.io.input_format import input_shards

    try:
        uris = input_shards(config.input, kind, config.storage_options)
    except (ValueError, FileNotFoundError) as exc:
        raise UserError(str(exc)) from None
    return [Shard(u, kind, shard_id(u)) for u in uris if not _inside(u, config.output)]


def plan_listing(config: JobConfig) -> list[dict[str, str]]:
    """A ``files`` prefix as listing tasks: one for the files directly in it, one per
    subdirectory (listed recursively by a Ray task, while scoring goes on). The driver reads
    only the top level, never a row per item below it."""
    try:
        fs, root = url_to_fs(config.input, config.storage_options)
        is_dir = fs.isdir(root)
    except Exception as exc:
        raise UserError(f"cannot list input {config.input}: {type(exc).__name__}: {exc}") from None
    if not is_dir:
        raise UserError(f"input is not a directory, a manifest or a shard: {config.input}")
    root = root.rstrip("/")
    output = _output_uri(config)
    tasks = [{"uri": config.input, "format": LISTING, "id": f"top-{shard_id(root)}"}]
    for entry in sorted(fs.ls(root, detail=True), key=lambda e: e["name"]):
        name = entry["name"].rstrip("/").rsplit("/", 1)[-1]
        if entry.get("type") != "directory" or is_job_artifact(name):
            continue
        uri = join_uri(fs, entry["name"].rstrip("/"), config.input)
        if not _inside(uri, output):
            tasks.append({"uri": uri, "format": LISTING, "id": f"dir-{shard_id(uri)}"})
    return tasks


def _output_uri(config: JobConfig) -> str:
    """The output in the style listed inputs are written in (to keep it out of the input)."""
    fs, root = url_to_fs(config.output, config.storage_options)
    return join_uri(fs, root.rstrip("/"), config.output)


def staging_uri(output: str, storage_options: dict[str, Any] | None) -> str:
    """Where ``--no-resume`` writes (``<out>/_next``), as a URI in the style of ``output``: a
    bare path would be read as a local one, whatever store the output is on."""
    fs, root = output_fs(output, storage_options)
    return join_uri(fs, f"{root}/{STAGING}", output)


def finish_replacement(output: str, storage_options: dict[str, Any] | None) -> None:
    """Complete or discard a ``--no-resume`` run: a staging directory with its commit marker
    replaces the old parts (idempotent, so a crash mid-swap is finished by the next run); one
    without the marker (the run failed or was killed) is dropped and the old results stay."""
    fs, root = output_fs(output, storage_options)
    staging_at = staging_uri(output, storage_options)
    staging = output_fs(staging_at, storage_options)[1]
    if not fs.exists(staging):
        return
    if not fs.exists(f"{staging}/{COMMITTED}"):
        fs.rm(staging, recursive=True)
        return
    # The marker names the committed run's signature: parts of any other run that reached
    # the staging directory (a killed run's late writes) are dropped, never swapped in.
    sig = fs.cat_file(f"{staging}/{COMMITTED}").decode().strip()
    staged = [
        p
        for p in existing_parts(staging_at, storage_options)
        if (parse_part(p) or {}).get("sig") == sig
    ]
    new = {p.rsplit("/", 1)[-1] for p in staged}
    for part in existing_parts(output, storage_options, visible=False):
        if part.rsplit("/", 1)[-1] not in new:
            fs.rm(part)
    for part in staged:
        fs.mv(part, f"{root}/{part.rsplit('/', 1)[-1]}")
    fs.rm(staging, recursive=True)


def run_job(
    config: JobConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every_s: float = 10.0,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run a scoring job (on ``config.address``, RAY_ADDRESS's cluster, or local Ray); returns
    the summary. Every check that needs no Ray runs first (:func:`validate_job`); user mistakes
    raise :class:`UserError` before Ray starts or anything is written. One job at a time holds
    the output (:class:`OutputLock`).

    ``progress`` receives ``{done, total, errors, items_per_s, eta_s}`` as parts are committed
    (at most every ``progress_every_s`` seconds, and once at the end; ``total`` is None for
    sharded inputs, whose size is not known in advance); ``notice`` gets one-line messages for
    the console (default: the log).
    """
    notice = notice or log.warning
    started = time.perf_counter()
    validate_job(config, checkpoints=False)  # those load model code: only when there is work
    signature = {
        "vqpipe": vqpipe.__version__,
        "scorers": [scorer_signature(s, config.storage_options) for s in config.scorers],
    }
    if config.calibration:  # other maps, other values: no resume across calibrations
        signature["calibration"] = config.calibration["columns"]
    sig = signature_hash(signature)
    kind = resolve_format(config)
    for line in demo_notice(config):
        notice(line)
    fs, root = output_fs(config.output, config.storage_options)
    created = not fs.exists(root)
    create_output(config)  # every check that needs no Ray passed
    try:
        with OutputLock(config.output, config.storage_options):
            settle_pieces(config.output, config.storage_options)
            finish_replacement(config.output, config.storage_options)
            return _run_locked(config, signature, sig, kind, started, progress, progress_every_s)
    except UserError:  # refused once Ray was up (e.g. GPUs it does not have): leave nothing
        if created and not fs.ls(root):
            fs.rm(root, recursive=True)
        raise


@dataclass
class Work:
    """What a job has left to do, planned on the driver without Ray: the read tasks (shards
    or listing tasks), the parts a listing resumes over, and the summary so far."""

    source: list[dict[str, str]]
    done_parts: list[str]
    total: int | None
    summary: dict[str, Any]
    shard_ids: list[str] | None = None
    """Manifest shards in job order, when there are several: repeats across them are removed
    once the shards are committed (:func:`vqpipe.pipeline.dedupe.drop_repeats`)."""
    repeats: Removed = field(default_factory=Removed)


def plan_work(
    config: JobConfig, kind: str, sig: str, parts: list[str], retry: list[str] = ()
) -> Work:
    """Shards not committed yet (a killed run's fragments of the others deleted), or the
    listing tasks of a prefix; a listing small enough for the driver is checked against the
    written parts here, so a resume with nothing to do never starts Ray. ``retry``: parts
    with rows to score again (:mod:`vqpipe.pipeline.retry`)."""
    fs, _ = output_fs(config.output, config.storage_options)
    if kind in SHARDED_FORMATS:
        shards = plan_shards(config, kind)
        done, stale = committed_shards(parts, sig)
        # a committed shard with rows to score again (transient errors) is read again whole
        again = {_shard_of(p, sig) for p in retry} & done
        stale += [p for p in parts if _shard_of(p, sig) in again]
        done -= again
        for path in stale:  # fragments of shards a killed run left half-done: read again
            fs.rm(path)
        todo = [{"uri": s.uri, "format": s.format, "id": s.id} for s in shards if s.id not in done]
        if kind == "manifest" and todo and len(shards) > 1:
            if not all(s.uri.lower().endswith(PARQUET_SUFFIXES) for s in shards):
                start_ray(config)  # text manifests are read whole for their types: Ray tasks
            options = _read_options(config, fragment_rows(config, kind))
            types = unified_types(shards, options, config.storage_options)
            for record in todo if types else ():  # one type per column for every shard
                record["types"] = json.dumps(types)
        summary = {"shards": len(shards), "shards_already_done": len(shards) - len(todo)}
        if again:
            summary["shards_retried"] = len(again)
        work = Work(todo, [], None, {"input_format": kind, **summary})
        if kind == "manifest" and len(shards) > 1:  # repeats across shards: removed after
            work.shard_ids = [s.id for s in shards]
        return work
    source = plan_listing(config)  # a prefix of files: resumed by an anti-join on uri
    done_parts = [p for p in parts if parse_part(p) is not None]
    # rows to score again are cut out of their parts first: their inputs are then not done
    retried = {p: drop_retryable(fs, p, config.retry_errors) for p in retry if p in done_parts}
    done_parts = [p for p in done_parts if p not in retried or fs.exists(p)]
    work = Work(source, done_parts, None, {"input_format": kind, "listing_tasks": len(source)})
    if retried:
        work.summary["rows_retried"] = sum(retried.values())
    if len(source) == 1 and done_parts and _driver_resumable(fs, done_parts):
        done = frozenset(done_uris(config, done_parts))
        left = _small_listing_left(config, done)
        if left == 0:
            work.source = []
            work.summary["already_done"] = len(done)
    return work


DRIVER_LISTING_MAX = 10_000
"""A prefix without subdirectories and at most this many entries is listed on the driver to
see whether anything is left (one listing page on an object store)."""


def _small_listing_left(config: JobConfig, done: frozenset[str]) -> int | None:
    """Files of a prefix without subdirectories not written yet, counted on the driver by
    the listing task's own code; None when the prefix is too big for the driver."""
    fs, root = url_to_fs(config.input, config.storage_options)
    if len(fs.ls(root.rstrip("/"), detail=False)) > DRIVER_LISTING_MAX:
        return None
    options = {**_read_options(config, fragment_rows(config, LISTING)), "done": done, "top": True}
    return sum(len(t) for t in listing_tables(config.input, options, config.storage_options))


def start_ray(config: JobConfig) -> None:
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


def _resume_filter(config: JobConfig, work: Work) -> tuple[Any, frozenset[str], int]:
    """The rows a listing already wrote: few parts → their URIs, dropped in the listing tasks
    (no shuffle); many → a Ray dataset of them for a distributed anti-join (and its
    partitions)."""
    import ray

    fs, _ = output_fs(config.output, config.storage_options)
    parts = work.done_parts
    if not parts:
        return None, frozenset(), 1
    if _driver_resumable(fs, parts):
        done_set = frozenset(done_uris(config, parts))
        work.summary["already_done"] = len(done_set)
        return None, done_set, 1
    done = ray.data.read_parquet(parts, filesystem=fs).select_columns([URI])
    work.summary["already_done"] = done.count()
    return done, frozenset(), max(1, min(JOIN_PARTITIONS, len(parts) // 64))


def execute(
    ds: Any,
    config: JobConfig,
    target: str,
    total: int | None,
    started: float,
    progress: Callable[[dict[str, Any]], None] | None,
    progress_every_s: float,
) -> tuple[list[dict[str, Any]], int]:
    """Run the graph: one summary row per written part or piece, as they are committed; a
    fragment whose pieces are all in is merged into one part by a Ray task. Returns the
    summary rows and the number of parts written."""
    import ray

    written: list[dict[str, Any]] = []
    last, reported = 0.0, -1
    tracker, merges, whole = PieceTracker(), [], 0
    merge = ray.remote(num_cpus=0, max_retries=3)(merge_pieces)
    try:
        for row in ds.iter_rows():
            written.append(row)
            whole += whole_part(row["file"]) == row["file"]
            pieces = tracker.add(row["file"])
            if pieces:  # a fragment's pieces are all in: one part again
                args = (target, config.storage_options, whole_part(pieces[0]), pieces)
                merges.append(merge.remote(*args))
            now = time.perf_counter()
            if progress is not None and (now - last >= progress_every_s or len(written) == 1):
                last, reported = now, len(written)
                progress(job_progress(written, total, now - started))
    except Exception as exc:
        device_error = unusable_device(exc)
        if device_error is not None:
            raise device_error from None
        raise
    files = whole + len(ray.get(merges))
    if progress is not None and reported != len(written):
        progress(job_progress(written, total, time.perf_counter() - started))
    return written, files


def _run_locked(
    config: JobConfig,
    signature: dict[str, Any],
    sig: str,
    kind: str,
    started: float,
    progress: Callable[[dict[str, Any]], None] | None,
    progress_every_s: float,
) -> dict[str, Any]:
    fs, root = output_fs(config.output, config.storage_options)
    # --no-resume writes into <out>/_next, a URI like --out (a bare path would be local)
    target = config.output if config.resume else staging_uri(config.output, config.storage_options)
    parts = existing_parts(config.output, config.storage_options) if config.resume else []
    if config.resume:
        refuse_foreign(config, parts, sig)
    # one footer read per part: damaged parts are moved aside (their rows are scored again)
    retry, damaged = _scan_parts(config, fs, parts)
    for part, why in damaged.items():
        warn_damaged(part, why, f"moved to {quarantine(fs, root, part)}; its rows are scored again")
    parts = [p for p in parts if p not in damaged]
    work = plan_work(config, kind, sig, parts, retry)
    if damaged:
        work.summary["parts_quarantined"] = len(damaged)
    if work.source:
        check_checkpoints(config)
    if not config.resume:
        fs.makedirs(target, exist_ok=True)
    written: list[dict[str, Any]] = []
    files = 0
    settle = f"{root if config.resume else f'{root}/{STAGING}'}/{PENDING}"
    dedupe = work.shard_ids is not None and (bool(work.source) or fs.exists(settle))
    if dedupe and work.source:
        fs.pipe(settle, b"")  # before the first part: a kill leaves the repeats pass owed
    if work.source:
        start_ray(config)
        done, done_set, partitions = _resume_filter(config, work)
        ds = build_dataset(config, work.source, signature, sig, target, done, done_set, partitions)
        written, files = execute(
            ds, config, target, work.total, started, progress, progress_every_s
        )
    if dedupe:
        mine = [p for p in existing_parts(target, config.storage_options) if _shard_of(p, sig)]
        before = {p.rsplit("/", 1)[-1] for p in parts}
        work.repeats = drop_repeats(
            target, mine, work.shard_ids, before, config.storage_options, lambda: start_ray(config)
        )
        fs.rm(settle)
    if not config.resume:
        fs.pipe(f"{target}/{COMMITTED}", sig.encode())
        finish_replacement(config.output, config.storage_options)
    return _record_job(config, signature, sig, work, written, files, started)


def _record_job(
    config: JobConfig,
    signature: dict[str, Any],
    sig: str,
    work: Work,
    written: list[dict[str, Any]],
    files: int,
    started: float,
) -> dict[str, Any]:
    """The summary, also written to ``_job.json`` with the signature and each pool's facts."""
    fs, root = output_fs(config.output, config.storage_options)
    seconds = time.perf_counter() - started
    final = job_progress(written, work.total, seconds)
    removed = work.repeats  # this run's own repeats are not in its table: not counted
    summary = {
        **work.summary,
        "scored_rows": final["done"] - removed.new_rows,
        "errors": final["errors"] - removed.new_errors,
        "files_written": files,
        "duplicates_dropped": removed.rows + sum(int(w.get("duplicates") or 0) for w in written),
        "seconds": round(seconds, 2),
        "items_per_s": final["items_per_s"] if seconds > 0 else None,
    }
    job = {
        "signature": signature,
        "signature_hash": sig,
        "scorers": {
            s.column: {**scorer_facts(s), "runtime": pool_runtime(written, s.column)}
            for s in config.scorers
        },
        "config": config.to_metadata(),
        "summary": summary,
    }
    fs.pipe(f"{root}/{JOB_RECORD}", json.dumps(job, indent=2, default=str).encode())
    return summary


def committed_parts(config: JobConfig) -> int:
    """Parts in the output now (``--no-resume``: in its staging directory)."""
    try:
        if config.resume:
            return len(existing_parts(config.output, config.storage_options))
        staging = staging_uri(config.output, config.storage_options)
        return len(existing_parts(staging, config.storage_options))
    except Exception:  # the count is a courtesy; the store may be what failed
        return 0


def _shard_of(part: str, sig: str) -> str | None:
    info = parse_part(part)
    return info["shard"] if info is not None and info["sig"] == sig else None


def _scan_parts(config: JobConfig, fs: Any, parts: list[str]) -> tuple[list[str], dict[str, str]]:
    """Committed parts with rows a rerun scores again, and the damaged ones
    (:mod:`vqpipe.pipeline.retry`)."""
    if len(parts) > DRIVER_SCAN_MAX_PARTS:
        start_ray(config)  # many parts are scanned by Ray tasks
    return scan_parts(fs, parts, config.retry_errors, config.output, config.storage_options)


def pool_runtime(written: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """The distinct (device, dtype, node) a pool's actors ran with, over the written parts."""
    seen = {
        json.dumps(r, sort_keys=True)
        for w in written
        for r in json.loads(str(w.get("runtime") or "{}")).get(column, [])
    }
    return [json.loads(r) for r in sorted(seen)]


def read_quality_table(output: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """All committed parts of a job's output as one DataFrame (temporary files ignored)."""
    fs, _ = output_fs(output, storage_options)
    parts = readable_parts(fs, existing_parts(output, storage_options))
    if not parts:
        return pd.DataFrame()
    frames = []
    for part in parts:
        with fs.open(part, "rb") as fh:
            frames.append(pq.read_table(fh).to_pandas())
    return pd.concat(frames, ignore_index=True)
