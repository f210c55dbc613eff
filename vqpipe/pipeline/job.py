"""The scoring job: plan → read/decode (CPU tasks) → score (one actor pool per scorer) → write,
run by :func:`vqpipe.pipeline.runner.run` as a :class:`ScoreJob`.

Output: a quality table (:class:`vqpipe.storage.QualityTable`): Parquet parts with
deterministic names (``part-<signature>-<fragment>.parquet``, each committed atomically and
fenced by the table's lock; see :mod:`vqpipe.storage.parts`) plus ``_job.json``. Sharded inputs
(WebDataset tars, Parquet with media bytes, manifest shards) commit shard by shard and resume by
listing the output; a listing of files resumes by the URIs already written. Parts of other
scorers, versions or checkpoints refuse a resume. ``_lock`` keeps a second job off the output;
``--no-resume`` replaces old results only once the new ones are all committed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import vqpipe
from vqpipe.errors import UserError
from vqpipe.io.checkpoints import checkpoint_identity
from vqpipe.io.patterns import glob_base
from vqpipe.io.sources import canonical_input, confine
from vqpipe.pipeline import runner
from vqpipe.pipeline.cascade import SKIPPED, gate_batch, parse_when, restore_rows
from vqpipe.pipeline.config import JobConfig, ScorerOptions, exact_preprocessing
from vqpipe.pipeline.planning import (
    fragment_rows,
    plan_shards,
    plan_work,
    read_options,
    resume_filter,
)
from vqpipe.pipeline.runner import SETTINGS, Build, JobKind, Work
from vqpipe.pipeline.score_stage import build_preprocessor, decodes_on_device, scores_in_tasks
from vqpipe.pipeline.shards import (
    BLOCK_ROWS,
    LISTING,
    SHARDED_FORMATS,
)
from vqpipe.pipeline.stages import (
    Stage,
    decode_cpus,
    decode_stage,
    deferred_decode_stage,
    follow_stage,
    read_decode_stage,
    read_stage,
    score_stage,
    write_stage,
)
from vqpipe.pipeline.validate import check_checkpoints, validate_job
from vqpipe.schema import (
    extra_column,
    output_columns,
)
from vqpipe.storage import QualityTable
from vqpipe.storage.retry import Scan

log = logging.getLogger(__name__)
BUNDLED_DEMO = "bundled-demo"


def _uses_bundled(spec: ScorerOptions) -> bool:
    bundled = spec.scorer_class().bundled_checkpoint()
    given = spec.options.get("checkpoint")
    return bundled is not None and (given is None or str(given) == str(bundled))


RUNTIME_OPTIONS = ("device", "storage_options", "vision_chunk", "compile")
"""Scorer options that change where or how fast scores are computed, not the scores: out of
the job signature, so a job resumed with them changed keeps its committed parts."""


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
    options = {k: v for k, v in spec.options.items() if k not in RUNTIME_OPTIONS}
    # Downscale-on-decode changes scores slightly: a job resumed with the other setting must not
    # mix the two. Recorded only when on, so jobs on the exact path keep their old signature.
    options.pop("exact_preprocessing", None)
    if exact_preprocessing(cls, kwargs) is False:
        options["exact_preprocessing"] = False
    signature = {
        "name": spec.name,
        "version": cls.version,
        "column": spec.column,
        "options": options,
        "checkpoint_fingerprint": digest,
    }
    # JPEGs decoded and resized on the device differ from Pillow's by a level here and there:
    # recorded only when on, like downscale-on-decode
    if spec.decode != "cpu":
        try:
            on_device = decodes_on_device(spec, build_preprocessor(spec, storage_options))
        except Exception:  # its preprocessing cannot be built: check_checkpoints says why
            on_device = False
        if on_device:
            signature["decode"] = "device"
    if spec.when:  # a cascade: other rows scored; recorded only when set (old signatures stay)
        signature["when"] = parse_when(spec.when).canonical
    return signature


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


def pool_facts(spec: ScorerOptions) -> dict[str, Any]:
    """A scoring job's pool: :func:`scorer_facts` plus its outputs (name → ``float`` |
    ``probs``) and the columns they are written to (Q-Align ``tasks=``: per task)."""
    outputs = spec.outputs()
    facts = {
        **scorer_facts(spec),
        "outputs": outputs,
        "columns": output_columns(spec.column, outputs),
    }
    if spec.when:  # a cascade: the rows it scored, and the flag of those it did not
        facts["when"] = spec.when
        facts["columns"].append(extra_column(spec.column, SKIPPED))
    return facts


def demo_notice(config: JobConfig) -> list[str]:
    """One console line per pool that scores with a bundled demo checkpoint."""
    return [
        f"scoring with the bundled demo {spec.name} checkpoint, trained on synthetic data only; "
        f"pass {spec.name}:checkpoint=... for real weights"
        for spec in config.scorers
        if _uses_bundled(spec)
    ]


def build_dataset(
    config: JobConfig,
    shards: list[dict[str, str]],
    signature: dict[str, Any],
    sig: str,
    output: str,
    done: Any = None,
    done_set: dict[str, str | None] | None = None,
    join_partitions: int = 1,
    fence: Any = None,
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
        "arrow": True,  # pixels as tensor columns (vqpipe.pipeline.pixels)
    }
    options = {**read_options(config, rows), "done": done_set or {}}
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
            on = tuple(done.columns())  # (uri, content_version), or uri for old tables
            ds = ds.join(done, join_type="left_anti", on=on, num_partitions=join_partitions)
        if listing:
            # A listing task's fragments (tiny rows, up to LISTING_PART_ROWS each) leave it as
            # big blocks (Ray Data coalesces a task's small outputs): cut them to BLOCK_ROWS so
            # decoding and scoring stream and spread over tasks; the writer's pieces are merged
            # back into one part per fragment. Shards of media bytes fill blocks on their own.
            ds = ds.repartition(target_num_rows_per_block=block)
        if config.limit is not None:
            ds = ds.limit(config.limit)
        stage = decode_stage(block, cpus)
        # a batch of `block` rows is decoded in blocks of `block` frames (videos: fewer rows)
        ds = stage.apply(ds, fn_kwargs={**decode, "storage_options": so, "block_frames": block})
    # when= pools after the others (their predicates read earlier pools only): the rows a gate
    # holds back skip every pool after it, and only gates come after a gate
    actors = [p for p in sorted(pools, key=lambda p: bool(p[0].when)) if not scores_in_tasks(p[0])]
    for k, (spec, scorer) in enumerate(actors):
        if spec.when and k == 0:
            # cascade: the rows its predicate does not send on skip the pool; its gate is a
            # task here, after the decode tasks (fused into them), and after an actor pool
            # it runs at the end of that pool's calls (gate_for): no task of its own
            stage = follow_stage(gate_batch, stage)
            ds = stage.apply(ds, fn_args=(spec,))
        if spec.when:  # the rows sent on: their images decoded for the pool now, not before
            stage = deferred_decode_stage(stage)
            ds = stage.apply(ds, fn_args=(spec, so, config.limits))
        pool = {"spec": spec, "storage_options": so, "limits": config.limits}
        fingerprint = scorer["checkpoint_fingerprint"]
        stage = score_stage(spec, config.scorers)
        pool.update(fingerprint=fingerprint, arrow=True)  # later pools' pixels: tensor columns
        if k + 1 < len(actors) and actors[k + 1][0].when:
            pool["gate_for"] = actors[k + 1][0]
        ds = stage.apply(ds, fn_constructor_kwargs=pool)
    if any(spec.when for spec in config.scorers):  # the held rows back, fused into the writes
        stage = follow_stage(restore_rows, stage)
        ds = stage.apply(ds)
    if config.calibration:  # --calibration: <column>_calibrated, fused into the write tasks
        from vqpipe.rewards.calibrate import calibrate_batch

        stage = follow_stage(calibrate_batch, stage)
        ds = stage.apply(ds, fn_args=(config.calibration,))
    write = {
        "output": output,
        "storage_options": so,
        "metadata": {**signature, "outputs": {s.column: pool_facts(s) for s in config.scorers}},
        "scorer_columns": [s.column for s in config.scorers],
        "sig": sig,
        "fence": fence,
    }
    skipped = {extra_column(s.column, SKIPPED): "bool" for s in config.scorers if s.when}
    if skipped:  # when= pools' flags: boolean, not scores
        write["typed_columns"] = skipped
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


class ScoreJob(JobKind):
    """``vqpipe score``: inputs → one row per input with each scorer's columns."""

    def validate(self, config: JobConfig) -> None:
        validate_job(config, checkpoints=False)  # those load model code: only when there is work
        config.input = canonical_input(config.input)
        self.format = resolve_format(config)
        if self.format != "manifest" and config.root is not None:  # a manifest's entries are
            check_inside_root(config.input, config.root)  # confined as they are read
        self.shards = plan_shards(config, self.format) if self.format in SHARDED_FORMATS else None

    def signature(self, config: JobConfig) -> dict[str, Any]:
        signature = {
            "vqpipe": vqpipe.__version__,
            "scorers": [scorer_signature(s, config.storage_options) for s in config.scorers],
        }
        if config.calibration:  # other maps, other values: no resume across calibrations
            signature["calibration"] = config.calibration["columns"]
        signature[SETTINGS] = score_settings(config)
        return signature

    def notices(self, config: JobConfig) -> list[str]:
        return demo_notice(config)

    def plan(
        self, config: JobConfig, table: QualityTable, sig: str, parts: list[str], scan: Scan
    ) -> Work:
        return plan_work(config, self.format, sig, parts, scan, self.shards)

    def prepare(self, config: JobConfig) -> None:
        check_checkpoints(config)

    def resume_filter(self, config: JobConfig, table: QualityTable, work: Work) -> dict[str, Any]:
        done, done_set, partitions = resume_filter(config, work)
        return {"done": done, "done_set": done_set, "join_partitions": partitions}

    def build(self, run: Build) -> Any:
        sources = (run.config, run.work.source, run.signature, run.sig, run.target.uri)
        return build_dataset(*sources, fence=run.fence, **run.resume)

    def facts(self, config: JobConfig) -> dict[str, dict[str, Any]]:
        return {s.column: pool_facts(s) for s in config.scorers}


def check_inside_root(spec: str, root: str) -> None:
    """``--root`` with an input that is not a manifest (a folder, file or glob of media, tars
    or Parquet): the input must lie inside it (a listing checks each file's real path again:
    a symlink that leaves the root is an error row)."""
    if not confine(glob_base(spec), root)[1]:
        raise UserError(f"--root {root}: the input {spec} is not inside it")


def score_settings(config: JobConfig) -> dict[str, Any]:
    """The job options, besides the scorers', that change a score (the frames a video is scored
    from; the calibration maps), by the CLI option that sets each: a resume with other values
    is refused (:func:`vqpipe.pipeline.runner.check_settings`)."""
    settings: dict[str, Any] = {
        "--video-fps": config.video_fps,
        "--max-frames": config.limits.max_frames,
    }
    if config.calibration:
        settings["--calibration"] = config.calibration["columns"]
    return settings


def run_job(
    config: JobConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every_s: float = 10.0,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run a scoring job (on ``config.address``, RAY_ADDRESS's cluster, or local Ray); returns
    the summary. Every check that needs no Ray runs first (:func:`validate_job`); user mistakes
    raise :class:`UserError` before Ray starts or anything is written. One job at a time holds
    the output (:mod:`vqpipe.storage.lock`); the steps are :func:`vqpipe.pipeline.runner.run`'s.

    ``progress`` receives ``{done, total, errors, items_per_s, eta_s}`` as parts are committed
    (at most every ``progress_every_s`` seconds, and once at the end; ``total`` is the plan's
    count of rows left when known: a folder without subfolders, Parquet footers; else None);
    ``notice`` gets one-line messages for the console (default: the log).
    """
    return runner.run(ScoreJob(), config, progress, progress_every_s, notice)
