"""The scoring job: list → read/decode (CPU tasks) → score (one actor pool per scorer) → write.

Output: Parquet parts (``part-*.parquet``, each written atomically) plus ``_job.json``. Resume
reads the ``uri`` column of the parts already there, after checking that they were written
by the same scorers and checkpoints, and scores only the rest: a killed job loses nothing
and duplicates nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import fsspec
import pandas as pd
import pyarrow.parquet as pq

import vqpipe
from vqpipe.errors import UserError
from vqpipe.io.checkpoints import checkpoint_identity
from vqpipe.io.fs import url_to_fs
from vqpipe.io.sources import list_inputs
from vqpipe.pipeline.config import JobConfig, ScorerOptions
from vqpipe.pipeline.schema import METADATA_KEY, URI
from vqpipe.pipeline.stages import DeviceUnavailableError, ScoreStage, decode_batch, write_batch
from vqpipe.pipeline.validate import check_cluster_resources, validate_job

log = logging.getLogger(__name__)
BUNDLED_DEMO = "bundled-demo"


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


def _output_fs(
    output: str, storage_options: dict[str, Any] | None
) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = url_to_fs(output, storage_options)
    return fs, root.rstrip("/")


def check_output_writable(config: JobConfig) -> None:
    """Fail fast, before any scoring, when the output store cannot be written."""
    fs, root = _output_fs(config.output, config.storage_options)
    probe = f"{root}/.vqpipe-write-probe"
    try:
        fs.makedirs(root, exist_ok=True)
        fs.pipe(probe, b"ok")
        fs.rm(probe)
    except Exception as exc:
        raise RuntimeError(
            f"output {config.output} is not writable: {type(exc).__name__}: {exc}"
        ) from exc


def existing_parts(output: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """The committed ``part-*.parquet`` files under ``output`` (temporary files excluded)."""
    fs, root = _output_fs(output, storage_options)
    if not fs.exists(root):
        return []
    return sorted(
        p
        for p in fs.ls(root, detail=False)
        if p.rsplit("/", 1)[-1].startswith("part-") and p.endswith(".parquet")
    )


def done_uris(config: JobConfig, signature: dict[str, Any]) -> set[str]:
    """URIs already in the output, from parts written with the same scorer signature."""
    fs, _ = _output_fs(config.output, config.storage_options)
    done: set[str] = set()
    for part in existing_parts(config.output, config.storage_options):
        with fs.open(part, "rb") as fh:
            parquet = pq.ParquetFile(fh)
            stored = json.loads((parquet.schema_arrow.metadata or {}).get(METADATA_KEY, b"{}"))
            if stored.get("scorers") != signature["scorers"]:
                raise UserError(
                    f"{config.output} holds results of other scorers, versions, options or "
                    f"checkpoints ({part}); write to a new --out, or pass --no-resume to "
                    "replace them"
                )
            done.update(parquet.read(columns=[URI]).column(URI).to_pylist())
    return done


def _progress(written: list[dict[str, Any]], total: int, elapsed: float) -> dict[str, Any]:
    """Counts, the overall rate, and the scoring rate and ETA after warm-up: measured from the
    first committed part (its time is noted on it at the first call, which comes as soon as
    that part is in), so Ray's and the actors' start-up do not count."""
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
        "eta_s": round((total - done) / steady, 1) if steady else (0.0 if done >= total else None),
    }


def format_progress(p: dict[str, Any]) -> str:
    """One summary line: ``scored 1200/5000, 3 errors, 85.2 items/s, ETA 45 s``; before a
    second part is in, the rate is not known yet (``ETA after warm-up``)."""
    from vqpipe.console import format_eta

    head = f"scored {p['done']}/{p['total']}, {p['errors']} errors"
    rate = p.get("scoring_items_per_s")
    if p["done"] >= p["total"]:
        return f"{head}, {p['items_per_s']} items/s overall"
    if rate is None:
        return f"{head}, ETA after warm-up"
    return f"{head}, {rate} items/s, ETA {format_eta(p['eta_s'])}"


DECODE_CPUS = 0.5
# A decode worker's resident memory is ~530 MiB before any image (Python, numpy, PIL, the
# scorers' preprocessors); Ray Data's memory issue detector warns when a task's peak exceeds
# its request, so the request covers that plus a few decoded full-size images.
DECODE_MEMORY = 1024 * 1024**2


def actor_cpus(spec: ScorerOptions, scorers: list[ScorerOptions]) -> float:
    """CPUs reserved per scorer actor: the option when given; 1 for GPU actors; half a CPU for
    CPU-only actors, so decode and write tasks always fit beside them (a 1-CPU machine with a
    1-CPU actor would deadlock: nothing left to decode)."""
    if spec.num_cpus is not None:
        return spec.num_cpus
    return 1.0 if spec.num_gpus else 0.5


def _device_error(exc: BaseException) -> DeviceUnavailableError | None:
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


def build_dataset(config: JobConfig, todo: pd.DataFrame, signature: dict[str, Any]) -> Any:
    """The graph, top to bottom: rows → read/decode (CPU tasks) → one actor pool per scorer
    → write (one row per committed part)."""
    import ray

    # One block per output file. (Split here: from_pandas(override_num_blocks=) relies on
    # np.array_split of a DataFrame, which pandas 3 turns into plain ndarrays.)
    step = config.rows_per_file
    ds = ray.data.from_pandas([todo.iloc[i : i + step] for i in range(0, len(todo), step)])
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={
            "scorers": config.scorers,
            "storage_options": config.storage_options,
            "video_fps": config.video_fps,
            "limits": config.limits,
        },
        batch_size=config.rows_per_file,
        batch_format="numpy",
        # Half a CPU each, so decode tasks overlap with the actors' idle time;
        # the memory request bounds their concurrency for big images and keeps their
        # remote args unlike any actor's, so Ray never fuses decoding into a scorer actor
        # (which would serialise it there).
        num_cpus=DECODE_CPUS,
        memory=DECODE_MEMORY,
    )
    for spec, scorer in zip(config.scorers, signature["scorers"], strict=True):
        ds = ds.map_batches(
            ScoreStage,
            fn_constructor_kwargs={
                "spec": spec,
                "storage_options": config.storage_options,
                "fingerprint": scorer["checkpoint_fingerprint"],
            },
            compute=ray.data.ActorPoolStrategy(min_size=spec.actors[0], max_size=spec.actors[1]),
            num_gpus=spec.num_gpus or None,
            num_cpus=actor_cpus(spec, config.scorers),
            batch_size=spec.batch_size,
            batch_format="numpy",
        )
    outputs = {s.column: scorer_facts(s) for s in config.scorers}
    return ds.map_batches(
        write_batch,
        fn_kwargs={
            "output": config.output,
            "storage_options": config.storage_options,
            "metadata": {**signature, "outputs": outputs},
            "scorer_columns": [s.column for s in config.scorers],
        },
        batch_size=config.rows_per_file,
        batch_format="numpy",
        num_cpus=DECODE_CPUS,  # I/O
    )


def run_job(
    config: JobConfig,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_every_s: float = 10.0,
    notice: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run a scoring job (on ``config.address``, RAY_ADDRESS's cluster, or local Ray); returns
    the summary. Every check that needs no Ray runs first (:func:`validate_job`); user mistakes
    raise :class:`UserError` before Ray starts or anything is written.

    ``progress`` receives ``{done, total, errors, items_per_s, eta_s}`` as parts are committed
    (at most every ``progress_every_s`` seconds, and once at the end); ``notice`` gets
    one-line messages for the console (default: the log).
    """
    import ray

    notice = notice or log.warning
    started = time.perf_counter()
    validate_job(config)
    signature = {
        "vqpipe": vqpipe.__version__,
        "scorers": [scorer_signature(s, config.storage_options) for s in config.scorers],
    }
    for line in demo_notice(config):
        notice(line)
    inputs = list_inputs(
        config.input,
        include=config.include,
        exclude=config.exclude,
        storage_options=config.storage_options,
        limit=config.limit,
        root=config.root,
    )
    done = done_uris(config, signature) if config.resume else set()
    todo = inputs[~inputs[URI].isin(done)].reset_index(drop=True)
    todo["bytes"] = pd.to_numeric(todo["bytes"], errors="coerce").fillna(-1).astype("int64")
    log.info("%d inputs, %d already done, %d to score", len(inputs), len(done), len(todo))

    written: list[dict[str, Any]] = []
    if len(todo):
        if not ray.is_initialized():
            ray.init(address=config.address, include_dashboard=False, log_to_driver=False)
        check_cluster_resources(
            config.scorers, {s.column: actor_cpus(s, config.scorers) for s in config.scorers}
        )
    check_output_writable(config)  # creates the output: only once every check has passed
    if not config.resume:
        fs, _ = _output_fs(config.output, config.storage_options)
        for part in existing_parts(config.output, config.storage_options):
            fs.rm(part)
    if len(todo):
        ds = build_dataset(config, todo, signature)
        last, reported = 0.0, -1
        try:
            for row in ds.iter_rows():  # one row per written part, as parts are committed
                written.append(row)
                now = time.perf_counter()
                if progress is not None and (now - last >= progress_every_s or len(written) == 1):
                    last, reported = now, len(written)
                    progress(_progress(written, len(todo), now - started))
        except Exception as exc:
            device_error = _device_error(exc)
            if device_error is not None:
                raise device_error from None
            raise
        if progress is not None and reported != len(written):
            progress(_progress(written, len(todo), time.perf_counter() - started))
    seconds = time.perf_counter() - started
    final = _progress(written, len(todo), seconds)
    summary = {
        "inputs": len(inputs),
        "already_done": len(done),
        "scored_rows": final["done"],
        "errors": final["errors"],
        "files_written": len(written),
        "seconds": round(seconds, 2),
        "items_per_s": final["items_per_s"] if seconds > 0 else None,
    }
    fs, root = _output_fs(config.output, config.storage_options)
    job = {
        "signature": signature,
        "scorers": {
            s.column: {**scorer_facts(s), "runtime": _runtime(written, s.column)}
            for s in config.scorers
        },
        "config": config.to_metadata(),
        "summary": summary,
    }
    fs.pipe(f"{root}/_job.json", json.dumps(job, indent=2, default=str).encode())
    return summary


def _runtime(written: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """The distinct (device, dtype, node) a pool's actors ran with, over the written parts."""
    seen = {
        json.dumps(r, sort_keys=True)
        for w in written
        for r in json.loads(str(w.get("runtime") or "{}")).get(column, [])
    }
    return [json.loads(r) for r in sorted(seen)]


def read_quality_table(output: str, storage_options: dict[str, Any] | None = None) -> pd.DataFrame:
    """All committed parts of a job's output as one DataFrame (temporary files ignored)."""
    fs, _ = _output_fs(output, storage_options)
    parts = existing_parts(output, storage_options)
    if not parts:
        return pd.DataFrame()
    frames = []
    for part in parts:
        with fs.open(part, "rb") as fh:
            frames.append(pq.read_table(fh).to_pandas())
    return pd.concat(frames, ignore_index=True)
