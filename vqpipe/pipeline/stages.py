"""The stages of a scoring job's Ray Data graph: what each one runs and asks for
(:class:`Stage`: CPUs, memory, retries, actor pools), and the write of every block as parts.
The functions they run live in :mod:`~vqpipe.pipeline.decode_stage` (read, decode, preprocess)
and :mod:`~vqpipe.pipeline.score_stage` (the pools' actors). Errors are data: a failing item
becomes a row with ``error`` (naming the stage), never an exception that kills a block."""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from vqpipe.io.fs import url_to_fs
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.pipeline.decode_stage import (
    decode_deferred,
    decode_score,
    read_decode,
    read_shards_within,
)
from vqpipe.pipeline.score_stage import ScoreStage, scores_in_tasks
from vqpipe.pipeline.shards import (
    BLOCK_BYTES,
    BLOCK_ROWS,
    PART,
    ROW,
    ROWS,
    SIDECARS,
)
from vqpipe.schema import (
    DUPLICATES,
    ERROR,
    METADATA_KEY,
    RUNTIME_PREFIX,
    to_arrow,
)
from vqpipe.storage.names import part_suffix
from vqpipe.storage.parts import part_name, write_part
from vqpipe.storage.schemas import encode_schema


def write_batch(
    batch: dict[str, np.ndarray],
    output: str,
    storage_options: dict[str, Any],
    metadata: dict[str, Any],
    scorer_columns: list[str],
    sig: str,
    typed_columns: dict[str, str] | None = None,
    fence: Any = None,
) -> dict[str, np.ndarray]:
    """Write each fragment of the batch as its Parquet part, atomically; one summary row each.
    ``typed_columns``: further output columns for :func:`~vqpipe.schema.to_arrow`; ``fence``
    (:class:`vqpipe.storage.Fence`): checked before each commit.

    A part's name comes from its fragment (``part-<sig>-<fragment>.parquet``, see
    :mod:`vqpipe.pipeline.shards`; a fragment that arrives in pieces is written as pieces
    named by their row ranges, merged by the driver once all are in), so a retried write
    rewrites the same file; each is written atomically (:func:`write_part`). The part's
    metadata is the job's plus the devices and dtypes its rows were scored with.
    """
    parts = np.asarray(batch.pop(PART))
    index, sizes = np.asarray(batch.pop(ROW), np.int64), np.asarray(batch.pop(ROWS), np.int64)
    dupes = batch.pop(DUPLICATES, None)
    dupes = np.zeros(len(parts)) if dupes is None else np.nan_to_num(np.asarray(dupes, float))
    sidecars = batch.pop(SIDECARS, None)
    sidecars = (
        np.zeros(len(parts)) if sidecars is None else np.nan_to_num(np.asarray(sidecars, float))
    )
    fs, root = url_to_fs(output, storage_options)
    summary: dict[str, list[Any]] = {
        "file": [],
        "rows": [],
        "errors": [],
        "duplicates": [],
        "sidecars": [],
        "runtime": [],
        "schema": [],
    }
    for part in sorted(set(parts.tolist())):
        rows = np.flatnonzero(parts == part)
        rows = rows[np.argsort(index[rows], kind="stable")]
        # A batch may hold non-adjacent rows of a fragment (Ray Data bundles blocks): each run
        # of consecutive rows is its own piece, so a piece's name says exactly which rows it has.
        for run in np.split(rows, np.flatnonzero(np.diff(index[rows]) != 1) + 1):
            lo, hi, n = int(index[run[0]]), int(index[run[-1]]) + 1, int(sizes[run[0]])
            piece = None if (lo, hi) == (0, n) else (lo, hi, n)
            chunk = {k: v[run] for k, v in batch.items()}
            runtime: dict[str, list[dict[str, Any]]] = {}
            for name in [k for k in chunk if k.startswith(RUNTIME_PREFIX)]:
                seen = sorted({str(v) for v in chunk.pop(name)})
                runtime[name.removeprefix(RUNTIME_PREFIX)] = [json.loads(v) for v in seen]
            table = to_arrow(chunk, scorer_columns, typed_columns)
            record = {**metadata, "runtime": runtime, "part": part}
            table = table.replace_schema_metadata(
                {METADATA_KEY: json.dumps(record, sort_keys=True)}
            )
            folder = root.rstrip("/")
            final = f"{folder}/{part_name(sig, part, piece, part_suffix(folder))}"
            write_part(fs, final, table, fence)
            _fault_after_commit(final)
            summary["file"].append(final)
            summary["rows"].append(len(table))
            summary["errors"].append(len(table) - table.column(ERROR).null_count)
            summary["duplicates"].append(int(dupes[run].sum()))
            summary["sidecars"].append(int(sidecars[run].sum()))
            summary["runtime"].append(json.dumps(runtime, sort_keys=True))
            summary["schema"].append(encode_schema(table.schema))
    return {k: np.array(v) for k, v in summary.items()}


FAULT_AFTER_COMMIT = "VQPIPE_FAULT_AFTER_COMMIT"
"""Fault injection for tests: a directory; the worker that first writes each part dies right
after committing it, as on a lost node (Ray retries the task, which must rewrite the part, not
add rows)."""


def _fault_after_commit(final: str) -> None:
    marks = os.environ.get(FAULT_AFTER_COMMIT)
    if not marks:
        return
    mark = os.path.join(marks, final.rsplit("/", 1)[-1])
    if not os.path.exists(mark):
        open(mark, "w").close()
        os._exit(1)


def _to_bytes(array: np.ndarray | None) -> bytes:
    """An item's arrays as ``.npy`` bytes (the compare job's pairs travel so)."""
    if array is None:
        return b""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _from_bytes(data: bytes | np.ndarray | None) -> np.ndarray | None:
    """An item's arrays from their ``.npy`` bytes (as they come from another process), or as
    they are (decoded in the same task)."""
    if data is None or isinstance(data, np.ndarray):
        return data
    return np.load(io.BytesIO(data), allow_pickle=False) if data else None


DECODE_CPUS = 0.5
TASK_CPUS = 1.0
READ_CPUS = 0.0
# A decode worker's resident memory is ~530 MiB before any image (Python, numpy, PIL, the
# scorers' preprocessors); Ray Data's memory issue detector warns when a task's peak exceeds
# its request, so the request covers that plus what one block holds: its frames preprocessed
# (twice: the arrays and the tensor column they are copied into), the media bytes it carries,
# and the item being decoded (a full-size image, a video's frames before resizing).
WORKER_MEMORY = 530 * 1024**2
FRAME_BYTES = 448 * 448 * 3
"""One frame preprocessed at Q-Align's 448 px (uint8), the largest input of our scorers."""
DECODING_MEMORY = 128 * 1024**2
DECODE_MEMORY = WORKER_MEMORY + 2 * BLOCK_ROWS * FRAME_BYTES + BLOCK_BYTES + DECODING_MEMORY
DECODE_RETRIES = 3
"""Attempts after the first for a decode task whose worker died (Ray Data's default retries
forever). Native decoders run in a subprocess (:mod:`vqpipe.media.isolated`), so a worker that
still dies this often is a node problem, and the job fails instead of looping."""


@dataclass(frozen=True)
class Stage:
    """A stage of the graph and what it asks Ray for: CPUs, GPUs and memory per task (or per
    actor, for a pool of ``actors`` = (min, max)), and rows per call (``batch_size``; None:
    one block per call)."""

    fn: Any
    batch_size: int | None
    num_cpus: float
    num_gpus: float | None = None
    memory: int | None = None
    actors: tuple[int, int] | None = None
    batch_format: str | None = "numpy"
    max_retries: int | None = None
    calls_per_actor: int = 1

    def apply(self, ds: Any, **kwargs: Any) -> Any:
        """``ds.map_batches`` with this stage's requests; ``kwargs``: ``fn_kwargs`` or
        ``fn_constructor_kwargs``."""
        import ray

        asks: dict[str, Any] = {"batch_size": self.batch_size, "num_cpus": self.num_cpus}
        if self.num_gpus:
            asks["num_gpus"] = self.num_gpus
        if self.memory:
            asks["memory"] = self.memory
        if self.actors:
            low, high = self.actors
            concurrent: dict[str, Any] = {}
            if self.calls_per_actor > 1:  # the actor serialises its device work itself
                concurrent = {
                    "max_concurrent_calls_per_actor": self.calls_per_actor,
                    "enable_true_multi_threading": True,
                }
            asks["compute"] = ray.data.ActorPoolStrategy(min_size=low, max_size=high, **concurrent)
        if self.batch_format:
            asks["batch_format"] = self.batch_format
        if self.max_retries is None:
            return ds.map_batches(self.fn, **asks, **kwargs)
        with warnings.catch_warnings():
            # max_retries has no named parameter in Ray Data 2.60; the generic remote args it
            # goes through are deprecated (for Ray 2.64), and the warning is not the user's.
            warnings.simplefilter("ignore", DeprecationWarning)
            return ds.map_batches(self.fn, **asks, **kwargs, max_retries=self.max_retries)


def read_decode_stage(cpus: float = DECODE_CPUS) -> Stage:
    """Sharded inputs: read and decode in one task per shard (:func:`read_decode`), with
    decode's requests (the reason reading alone reserves no CPU, a read task holding a CPU
    while the decode tasks it feeds wait for one, cannot happen within one task)."""
    stage = decode_stage(1, cpus)
    return Stage(
        read_decode,
        1,
        stage.num_cpus,
        memory=stage.memory,
        batch_format=None,
        max_retries=stage.max_retries,
    )


def read_stage() -> Stage:
    """One shard or listing task per call. Reading waits on I/O: no CPU reserved (its memory
    request bounds how many run at once); a read task blocked by back-pressure while holding
    CPU could starve the decode tasks it waits for on a small machine."""
    return Stage(read_shards_within, 1, READ_CPUS, memory=DECODE_MEMORY, batch_format=None)


def decode_stage(block_rows: int, cpus: float = DECODE_CPUS) -> Stage:
    """One block (a fragment, or a piece of one) per call, half a CPU each so decoding
    overlaps with the actors' idle time (``cpus``: :func:`decode_cpus`); the memory request
    bounds their concurrency for big images and keeps their remote args unlike any actor's,
    so Ray never fuses decoding into a scorer actor (which would serialise it there)."""
    return Stage(decode_score, block_rows, cpus, memory=DECODE_MEMORY, max_retries=DECODE_RETRIES)


def decode_cpus(scorers: list[ScorerOptions]) -> float:
    """CPUs per decode task: half a CPU beside actor pools (decoding overlaps with their idle
    time); a whole one when every pool scores in the decode tasks (:func:`scores_in_tasks`):
    nothing to overlap with, and twice the tasks per CPU would only start twice the worker
    processes (seconds of start-up each, on the CPUs the tasks need)."""
    return TASK_CPUS if all(scores_in_tasks(s) for s in scorers) else DECODE_CPUS


def actor_cpus(spec: ScorerOptions, scorers: list[ScorerOptions]) -> float:
    """CPUs reserved per scorer actor: the option when given; 1 for GPU actors; CPU-only
    actors share half a CPU between all CPU-only pools, so read, decode and write tasks always
    fit beside them (a 1-CPU machine with a 1-CPU actor would deadlock: nothing left to
    decode; three half-CPU pools on 2 CPUs starved the decode stage the same way)."""
    if spec.num_cpus is not None:
        return spec.num_cpus
    if spec.num_gpus:
        return 1.0
    if scores_in_tasks(spec):  # no actor: it scores in the decode tasks
        return 0.0
    cpu_pools = sum(
        1 for s in scorers if not s.num_gpus and s.num_cpus is None and not scores_in_tasks(s)
    )
    return 0.5 / max(1, cpu_pools)


def score_stage(spec: ScorerOptions, scorers: list[ScorerOptions]) -> Stage:
    """One actor pool per scorer: the pool's batch size, GPUs and CPUs per actor, and
    :data:`CALLS_PER_ACTOR` batches in flight per actor."""
    cpus = actor_cpus(spec, scorers)
    return Stage(
        ScoreStage,
        spec.batch_size,
        cpus,
        num_gpus=spec.num_gpus,
        actors=spec.actors,
        calls_per_actor=CALLS_PER_ACTOR,
    )


CALLS_PER_ACTOR = 2
"""Batches in flight per scorer actor: one on the device while the next is stacked into its
pinned buffer and copied (:class:`~vqpipe.scorers.transfer.BatchRunner`); more would only
hold more batches in the actor's memory."""


def write_stage(upstream: Stage | None = None) -> Stage:
    """One block per call (its fragments become parts); I/O. ``upstream``: the task stage
    just before it (decode, when no actor pool comes between), whose requests it then takes
    so that Ray Data fuses writing into those tasks (no operator, task or transfer of its
    own)."""
    return follow_stage(write_batch, upstream)


DEFERRED_DECODE_CPUS = 0.25
"""CPUs per task of :func:`deferred_decode_stage` after an actor pool."""


def deferred_decode_stage(upstream: Stage | None) -> Stage:
    """After a ``when=`` pool's gate, :func:`decode_deferred`: fused into the task stage the
    gate runs in (the decode tasks), else (the gate ran in an actor pool's calls) a task stage
    with decode's memory and retries, spread over the CPUs as the decode tasks are. A quarter
    CPU each: it starts when the decode tasks already hold the CPUs (on 2 CPUs, with half a
    CPU, a cascade sending 93% on took 0.83x the time of scoring every row with both, against
    0.93x with a quarter; one round each of ``benchmarks/cascade.py --contents 40``)."""
    if upstream is not None and not upstream.actors:
        return follow_stage(decode_deferred, upstream)
    return Stage(
        decode_deferred,
        None,
        DEFERRED_DECODE_CPUS,
        memory=DECODE_MEMORY,
        max_retries=DECODE_RETRIES,
    )


def follow_stage(fn: Any, upstream: Stage | None = None) -> Stage:
    """A one-block-per-call task stage: with ``upstream``'s CPUs, memory and retries (Ray
    Data fuses consecutive task stages only when those are the same), else half a CPU."""
    if upstream is None or upstream.actors:
        return Stage(fn, None, DECODE_CPUS)
    return Stage(
        fn, None, upstream.num_cpus, memory=upstream.memory, max_retries=upstream.max_retries
    )
