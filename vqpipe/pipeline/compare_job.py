"""The pair-comparison job (``vqpipe compare``): manifest shards of (``uri_a``, ``uri_b``) rows →
read (CPU tasks) → decode both images → one comparison actor pool → Parquet parts.

A scoring job of another shape, run by the same runner (:mod:`vqpipe.pipeline.runner`):
validation before Ray starts, shard planning, fragments with deterministic part names
(``part-<signature>-<shard>-<fragment>[-last].parquet``) committed shard by shard and fenced,
resume by listing the output, the lock, the ``--no-resume`` swap and ``_job.json``.
One row per pair:

- ``uri`` = ``<manifest file>#<row index>`` (the row's identity; the manifest's own ``uri``
  column, if any, is carried as ``input_uri``), ``shard`` = the manifest file, ``key`` = the row
  index, ``uri_a``, ``uri_b`` and the manifest's other columns;
- the outputs of :mod:`vqpipe.scorers.pairwise` (``p_b_better``, … ; null after an error);
- ``error``: naming the stage and the side (``read: uri_b: not found: …``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

import vqpipe
from vqpipe.errors import UserError
from vqpipe.io.manifest import carry_columns, manifest_chunks
from vqpipe.io.media_types import media_type_from_name
from vqpipe.io.sources import manifest_entry
from vqpipe.media.decode import MediaLimits
from vqpipe.pipeline import job, planning, runner
from vqpipe.pipeline.config import JobConfig, ScorerOptions
from vqpipe.pipeline.decode_stage import decode_batch
from vqpipe.pipeline.runner import JobKind
from vqpipe.pipeline.score_stage import ScoreStage
from vqpipe.pipeline.shards import (
    KEY,
    SHARD,
    Shard,
    _fragments,
)
from vqpipe.pipeline.stages import (
    DECODE_CPUS,
    DECODE_MEMORY,
    DECODE_RETRIES,
    READ_CPUS,
    Stage,
    _from_bytes,
    _to_bytes,
    actor_cpus,
    write_stage,
)
from vqpipe.schema import (
    ERROR,
    INPUT_PREFIX,
    MEDIA_TYPE,
    PAIR_FLOAT_COLUMNS,
    PAIR_PROBS_COLUMNS,
    RUNTIME_PREFIX,
    URI,
    URI_A,
    URI_B,
    error_text,
)
from vqpipe.storage import QualityTable
from vqpipe.storage.retry import Scan

log = logging.getLogger(__name__)
TASK = "compare-pairs"
"""In the job signature: parts of a score job with the same scorer never look committed here."""
SIDES = (URI_A, URI_B)
INPUT_A, INPUT_B = f"{INPUT_PREFIX}a", f"{INPUT_PREFIX}b"
"""Columns in transit: each side's preprocessed image as ``.npy`` bytes (empty after an error)."""
TYPED = {**dict.fromkeys(PAIR_FLOAT_COLUMNS, "float"), **dict.fromkeys(PAIR_PROBS_COLUMNS, "probs")}
LEVELS = 5


PAIRS_SIDES = ("uri_rejected", "uri_chosen")
"""``vqpipe pairs``' output as a manifest: a = rejected, b = chosen, so ``p_b_better`` is the
model's P(chosen ≻ rejected) — above 0.5 where it agrees with the pair."""


# ---------------------------------------------------------------------------- checks
def pair_sides(
    names: list[str], a_column: str | None, b_column: str | None, where: str
) -> tuple[str, str]:
    """The manifest columns read as ``uri_a`` and ``uri_b``: the named ones, else ``uri_a`` /
    ``uri_b``, else ``vqpipe pairs``' ``uri_rejected`` / ``uri_chosen``
    (:data:`PAIRS_SIDES`); a :class:`UserError` naming the manifest's columns otherwise."""
    columns = ", ".join(names) or "none"
    if a_column or b_column:
        sides = (a_column or URI_A, b_column or URI_B)
        missing = [c for c in sides if c not in names]
        if missing:
            raise UserError(
                f"{where} has no {' and no '.join(map(repr, missing))} column "
                f"(--a-column / --b-column; columns: {columns})"
            )
        return sides
    for sides in (SIDES, PAIRS_SIDES):
        if all(c in names for c in sides):
            return sides
    missing = [c for c in SIDES if c not in names]
    raise UserError(
        f"{where} has no {' and no '.join(repr(c) for c in missing)} column (a pairs manifest "
        f"has {URI_A} and {URI_B}, or vqpipe pairs' {PAIRS_SIDES[1]} and {PAIRS_SIDES[0]}; "
        f"--a-column / --b-column name others; columns: {columns})"
    )


def validate_compare(
    config: JobConfig, a_column: str | None = None, b_column: str | None = None
) -> tuple[str, str]:
    """Every check that needs no Ray: one scorer that can compare pairs, the score job's
    checks (options, input, output), the first manifest's pair columns (from its footer or
    first bytes: :func:`pair_sides`, returned) and only then the checkpoint (a hub probe can
    take a minute)."""
    from vqpipe.io.input_format import table_columns
    from vqpipe.io.patterns import resolve
    from vqpipe.pipeline.validate import check_checkpoint, check_scorer, validate_job
    from vqpipe.scorers.pairwise import can_compare

    if len(config.scorers) != 1:
        raise UserError(f"vqpipe compare takes one --scorer (got {len(config.scorers)})")
    spec = config.scorers[0]
    cls = check_scorer(spec, config.storage_options)
    if not can_compare(cls):
        raise UserError(
            f"scorer {spec.name} cannot compare two given images; use compare2score or "
            "compare2score-lmm"
        )
    if spec.column != ScorerOptions(spec.name).column:
        raise UserError(
            f"column={spec.column} does not apply to vqpipe compare (its columns are "
            f"{', '.join(PAIR_FLOAT_COLUMNS)}, …)"
        )
    validate_job(config, checkpoints=False)
    shards = plan_pair_shards(config)
    try:
        fs, path = resolve(shards[0].uri, config.storage_options)
        names, _ = table_columns(fs, path)
    except Exception as exc:
        raise UserError(f"cannot read {shards[0].uri}: {type(exc).__name__}: {exc}") from None
    sides = pair_sides(list(names), a_column, b_column, shards[0].uri)
    check_checkpoint(spec, cls, config.storage_options)
    return sides


def plan_pair_shards(config: JobConfig) -> list[Shard]:
    """The manifest files of the input (sorted; the job's own output excluded)."""
    shards = planning.plan_shards(config, "manifest")
    if not shards:
        raise UserError(f"no Parquet / CSV / JSONL manifest in {config.input}")
    return shards


def compare_signature(
    spec: ScorerOptions, storage_options: dict[str, Any], sides: tuple[str, str] = SIDES
) -> dict[str, Any]:
    """The job signature: the scorer's (name, version, options, checkpoint identity) and the
    task, so that a score job's parts never count as this job's; the manifest columns read as
    the two sides when they are not ``uri_a`` / ``uri_b``."""
    scorer = {**job.scorer_signature(spec, storage_options), "task": TASK}
    if tuple(sides) != SIDES:
        scorer["sides"] = list(sides)
    return {"vqpipe": vqpipe.__version__, "scorers": [scorer]}


# ---------------------------------------------------------------------------- stages
def pair_rows(
    table: pa.Table,
    shard: Shard,
    start: int,
    root: str | None,
    sides: tuple[str, str] = SIDES,
) -> pa.Table:
    """Manifest rows → pair rows: ``uri`` = ``<shard>#<row>``, ``shard``, ``key``, ``uri_a``,
    ``uri_b`` (the manifest's ``sides`` columns, confined to ``root`` when given), ``error``
    for a row without either side; other columns carried (``sides`` named otherwise too)."""
    missing = [c for c in sides if c not in table.column_names]
    if missing:
        raise ValueError(
            f"manifest {shard.uri} has no {' and no '.join(map(repr, missing))} column"
        )
    n = len(table)
    values = {side: table.column(col).to_pylist() for side, col in zip(SIDES, sides, strict=True)}
    picked: dict[str, list[str | None]] = {side: [] for side in SIDES}
    errors: list[str | None] = []
    for i in range(n):
        problems = []
        for side in SIDES:
            value = values[side][i]
            if not isinstance(value, str) or not value.strip():
                picked[side].append(None if value is None else str(value))
                name = side if sides == SIDES else f"{side} ({sides[SIDES.index(side)]})"
                problems.append(f"read: manifest row {start + i} has no {name} ({value!r})")
                continue
            resolved, inside = manifest_entry(value, shard.uri, root)
            if not inside:
                problems.append(f"read: {side}: outside the configured input root; not read")
            value = resolved if inside else value
            picked[side].append(value)
        errors.append("; ".join(problems) or None)
    columns: dict[str, Any] = {
        URI: pa.array([f"{shard.uri}#{start + i}" for i in range(n)], pa.string()),
        SHARD: pa.array([shard.uri] * n, pa.string()),
        KEY: pa.array([str(start + i) for i in range(n)], pa.string()),
        URI_A: pa.array(picked[URI_A], pa.string()),
        URI_B: pa.array(picked[URI_B], pa.string()),
        ERROR: pa.array(errors, pa.string()),
    }
    carried = [c for c in sides if c in SIDES]  # uri_a / uri_b are ours; others are carried
    return pa.table(carry_columns(columns, table.drop_columns(carried)))


def read_pair_shards(
    batch: dict[str, np.ndarray], options: dict[str, Any], storage_options: dict[str, Any]
) -> Iterator[pa.Table]:
    """Ray Data stage (one manifest per call): its pair rows, fragment by fragment, tagged with
    their part names; a manifest that cannot be read becomes an error row naming it."""
    versions = batch.get("version", [None] * len(batch["uri"]))
    for uri, sid, version in zip(batch["uri"], batch["id"], versions, strict=True):
        shard = Shard(str(uri), "manifest", str(sid), None if version is None else str(version))
        chunks = manifest_chunks(shard.uri, options["rows"], storage_options)
        sides = tuple(options.get("sides") or SIDES)
        tables = (pair_rows(t, shard, start, options.get("root"), sides) for start, t in chunks)
        yield from _fragments(tables, shard, final=options.get("limit") is None)


def _side_error(message: str, side: str) -> str:
    """``read: not found: x`` of one image → ``read: uri_a: not found: x`` (stage, then side)."""
    stage, _, rest = message.partition(": ")
    return f"{stage}: {side}: {rest}"


def decode_pairs(
    batch: dict[str, np.ndarray],
    spec: ScorerOptions,
    storage_options: dict[str, Any],
    limits: MediaLimits,
) -> dict[str, np.ndarray]:
    """CPU stage: every distinct image of the batch read, decoded and preprocessed once (the
    score job's :func:`decode_batch`); each row gets both sides' arrays, or the errors of its
    sides."""
    n = len(batch[URI])
    given = batch.get(ERROR)
    errors = [error_text(given[i]) if given is not None else None for i in range(n)]
    slots: dict[str, int] = {}
    for i in range(n):
        if errors[i] is None:
            for side in SIDES:
                slots.setdefault(str(batch[side][i]), len(slots))
    uris = list(slots)
    kinds = [media_type_from_name(u) for u in uris]
    videos = [
        "decode: a video; vqpipe compare compares images" if k == "video" else None for k in kinds
    ]
    arrays: np.ndarray = np.array([], dtype=object)
    found: list[str | None] = []
    if uris:
        decoded = decode_batch(
            {
                URI: np.array(uris, dtype=object),
                MEDIA_TYPE: np.array(kinds, dtype=object),
                ERROR: np.array(videos, dtype=object),
            },
            [spec],
            storage_options,
            video_fps=1.0,
            limits=limits,
        )
        arrays = decoded[INPUT_PREFIX + spec.column]
        found = [error_text(e) for e in decoded[ERROR]]
    inputs = {INPUT_A: np.full(n, b"", dtype=object), INPUT_B: np.full(n, b"", dtype=object)}
    for i in range(n):
        if errors[i] is not None:
            continue
        problems = []
        for side, column in zip(SIDES, (INPUT_A, INPUT_B), strict=True):
            slot = slots[str(batch[side][i])]
            if found[slot] is not None:
                problems.append(_side_error(found[slot], side))
            else:
                inputs[column][i] = _to_bytes(arrays[slot])  # pairs travel as .npy bytes
        if problems:
            errors[i] = "; ".join(problems)
            inputs[INPUT_A][i] = inputs[INPUT_B][i] = b""
    out = dict(batch)
    out.update(inputs)
    out[ERROR] = np.array(errors, dtype=object)
    return out


class CompareStage(ScoreStage):
    """Actor stage: the scorer loaded once (as :class:`ScoreStage`: device from what Ray
    assigned, checkpoint identity checked); each batch of pairs compared in both orders by one
    :func:`~vqpipe.scorers.pairwise.compare_pairs` call, each distinct image once."""

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from vqpipe.scorers.pairwise import compare_pairs

        first = [_from_bytes(v) for v in batch.pop(INPUT_A)]
        second = [_from_bytes(v) for v in batch.pop(INPUT_B)]
        n = len(first)
        errors = np.array([error_text(e) for e in batch[ERROR]], dtype=object)
        outputs = {c: np.full(n, np.nan, np.float32) for c in PAIR_FLOAT_COLUMNS}
        outputs.update({c: np.full((n, LEVELS), np.nan, np.float32) for c in PAIR_PROBS_COLUMNS})
        todo = [
            i
            for i in range(n)
            if errors[i] is None and first[i] is not None and second[i] is not None
        ]
        if todo:
            images: list[np.ndarray] = []
            slots: dict[str, int] = {}

            def slot(uri: str, array: np.ndarray) -> int:
                if uri not in slots:
                    slots[uri] = len(images)
                    images.append(array[0])  # [1, ...]: an image's one frame
                return slots[uri]

            a = [slot(str(batch[URI_A][i]), first[i]) for i in todo]
            b = [slot(str(batch[URI_B][i]), second[i]) for i in todo]
            try:
                out = compare_pairs(self.scorer, images, a, b)
                for column, values in outputs.items():
                    values[todo] = out[column]
            except Exception as exc:
                for i in todo:
                    errors[i] = f"score[{self.spec.column}]: {type(exc).__name__}: {exc}"
        batch.update(outputs)
        batch[RUNTIME_PREFIX + self.spec.column] = np.full(n, self.runtime, dtype=object)
        batch[ERROR] = errors
        return batch


# ---------------------------------------------------------------------------- the job
def build_compare_dataset(
    config: JobConfig,
    shards: list[dict[str, str]],
    signature: dict[str, Any],
    sig: str,
    output: str,
    fence: Any = None,
    sides: tuple[str, str] = SIDES,
) -> Any:
    """The graph, top to bottom: manifest shards → pair rows, fragment by fragment → decode
    both sides (CPU tasks) → the comparison actor pool → write (one summary row per part)."""
    import ray

    spec = config.scorers[0]
    ds = ray.data.from_items(shards, override_num_blocks=max(1, len(shards)))
    read = {"rows": config.rows_per_file, "root": config.root, "limit": config.limit}
    read["sides"] = list(sides)
    ds = Stage(read_pair_shards, 1, READ_CPUS, memory=DECODE_MEMORY, batch_format=None).apply(
        ds, fn_kwargs={"options": read, "storage_options": config.storage_options}
    )
    if config.limit is not None:
        ds = ds.limit(config.limit)
    decode = {"spec": spec, "storage_options": config.storage_options, "limits": config.limits}
    ds = Stage(
        decode_pairs,
        config.rows_per_file,
        DECODE_CPUS,
        memory=DECODE_MEMORY,
        max_retries=DECODE_RETRIES,
    ).apply(ds, fn_kwargs=decode)
    cpus = actor_cpus(spec, config.scorers)
    pool = Stage(CompareStage, spec.batch_size, cpus, num_gpus=spec.num_gpus, actors=spec.actors)
    fingerprint = signature["scorers"][0]["checkpoint_fingerprint"]
    ds = pool.apply(
        ds,
        fn_constructor_kwargs={
            "spec": spec,
            "storage_options": config.storage_options,
            "fingerprint": fingerprint,
        },
    )
    outputs = {spec.column: {**job.scorer_facts(spec), "task": TASK, "columns": list(TYPED)}}
    write = {
        "output": output,
        "storage_options": config.storage_options,
        "metadata": {**signature, "outputs": outputs},
        "scorer_columns": [],
        "sig": sig,
        "typed_columns": TYPED,
        "fence": fence,
    }
    return write_stage().apply(ds, fn_kwargs=write)


class CompareJob(JobKind):
    """``vqpipe compare``: pair manifests → one row per pair, run by
    :func:`vqpipe.pipeline.runner.run` like a scoring job."""

    task = TASK
    rows_key = "compared_pairs"
    rate_key = "pairs_per_s"

    def __init__(self, a_column: str | None = None, b_column: str | None = None) -> None:
        self.columns = (a_column, b_column)
        self.sides: tuple[str, str] = SIDES

    def validate(self, config: JobConfig) -> None:
        self.sides = validate_compare(config, *self.columns)

    def signature(self, config: JobConfig) -> dict[str, Any]:
        return compare_signature(config.scorers[0], config.storage_options, self.sides)

    def plan(
        self, config: JobConfig, table: QualityTable, sig: str, parts: list[str], scan: Scan
    ) -> runner.Work:
        return runner.plan_sharded(table, plan_pair_shards(config), sig, parts, scan)

    def build(self, run: runner.Build) -> Any:
        sources = (run.config, run.work.source, run.signature, run.sig, run.target.uri)
        return build_compare_dataset(*sources, run.fence, self.sides)

    def facts(self, config: JobConfig) -> dict[str, dict[str, Any]]:
        spec = config.scorers[0]
        return {spec.column: job.scorer_facts(spec)}


def run_compare(
    config: JobConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every_s: float = 10.0,
    a_column: str | None = None,
    b_column: str | None = None,
) -> dict[str, Any]:
    """Run a pair-comparison job; returns the summary. ``a_column`` / ``b_column`` name the
    manifest's sides (default: ``uri_a`` / ``uri_b``, else ``vqpipe pairs``' columns). User
    mistakes raise :class:`UserError` before Ray starts (:func:`validate_compare`); one job at
    a time holds the output."""
    return runner.run(CompareJob(a_column, b_column), config, progress, progress_every_s)
