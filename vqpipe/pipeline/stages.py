"""Ray Data stages of a scoring job. Errors are data: a failing item becomes a row with
``error`` (naming the stage), never an exception that kills a block."""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from vqpipe.defaults import READ_TIMEOUT_S
from vqpipe.errors import DemoCheckpointWarning, JobError
from vqpipe.io.fs import is_transient, url_to_fs
from vqpipe.io.reading import ReadError, read_input
from vqpipe.io.records import read_timeout
from vqpipe.io.sources import INVALID_NAME, OUTSIDE_ROOT
from vqpipe.media.decode import ImageInfo, MediaError, MediaLimits, decode_image
from vqpipe.media.device_decode import decode_jpegs, device_header
from vqpipe.media.isolated import video_decoder
from vqpipe.pipeline.cascade import SKIPPED, gate, gate_batch
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.pipeline.pixels import column_items, item_frames, to_block
from vqpipe.pipeline.shards import (
    BLOCK_BYTES,
    BLOCK_ROWS,
    PART,
    ROW,
    ROWS,
    SIDECARS,
    block_bounds,
    read_shards,
)
from vqpipe.quality_math.arrays import is_tensor
from vqpipe.schema import (
    BYTES,
    DATA,
    DUPLICATES,
    DURATION,
    ERROR,
    ERROR_KIND,
    FRAMES,
    HEIGHT,
    INPUT_PREFIX,
    INT_MISSING,
    JPEG_PREFIX,
    METADATA_KEY,
    RUNTIME_PREFIX,
    TRANSIENT,
    WIDTH,
    error_text,
    extra_column,
    to_arrow,
)
from vqpipe.scorers.transfer import BatchRunner
from vqpipe.storage.names import part_suffix
from vqpipe.storage.parts import part_name, write_part
from vqpipe.storage.schemas import encode_schema


@functools.lru_cache(maxsize=16)
def _preprocessor(name: str, kwargs_json: str) -> Any:
    from vqpipe.scorers.registry import get_scorer_spec

    return get_scorer_spec(name).load().make_preprocessor(**json.loads(kwargs_json))


def build_preprocessor(spec: ScorerOptions, storage_options: dict[str, Any]) -> Any:
    """The scorer's CPU preprocessing, from the same constructor arguments as its actor."""
    kwargs = spec.scorer_kwargs(storage_options)
    return _preprocessor(spec.name, json.dumps(kwargs, sort_keys=True, default=str))


def decodes_on_device(spec: ScorerOptions, preprocessor: Any) -> bool:
    """Whether the pool's actors decode its JPEGs on their device (``decode=gpu``; ``auto``:
    when the pool has GPUs), rather than the decode tasks: only for a scorer whose CPU
    preprocessing has a ``device_geometry`` (uint8 [3, H, W] tensor → uint8 [3, S, S] on the
    tensor's device). A CPU actor then decodes with torchvision on the CPU: the same code."""
    if spec.decode == "cpu" or not hasattr(preprocessor, "device_geometry"):
        return False
    return spec.decode == "gpu" or bool(spec.num_gpus)


def decode_batch(
    batch: dict[str, np.ndarray],
    scorers: list[ScorerOptions],
    storage_options: dict[str, Any],
    video_fps: float,
    limits: MediaLimits,
    in_process: frozenset[str] = frozenset(),
) -> dict[str, np.ndarray]:
    """CPU stage: fetch bytes, decode (sample frames), run each scorer's preprocessing.

    Reads are bounded (:func:`~vqpipe.io.reading.read_input`: regular files only, at most
    ``max_bytes``, within ``read_timeout_s``); videos are decoded in a sacrificial subprocess
    (:mod:`vqpipe.media.isolated`), so a decoder that crashes or hangs costs its own row only.
    Adds ``width``, ``height``, ``duration_s``, ``frames``, ``error`` and, per scorer, an
    ``_input_<column>`` column: an object array of the items' preprocessed frames [T, ...] (T = 1
    for an image, the sampled frames for a video), None after an error. :func:`decode_score`
    hands the columns of actor pools on as tensor columns (:mod:`vqpipe.pipeline.pixels`); the
    columns in ``in_process`` (pools that score in this same task) never leave the process.
    For the pools that decode on their device (:func:`decodes_on_device`), a plain JPEG
    (:func:`~vqpipe.media.device_decode.device_header`) is not decoded here: its bytes go on in
    ``_jpeg_<column>`` (its ``_input_<column>`` empty), its width and height from its header.
    """
    n = len(batch["uri"])
    out = {k: v for k, v in batch.items() if k != DATA}
    inline = batch.get(DATA)  # media bytes read from inside a shard (tar member, Parquet cell)
    given = batch.get(ERROR)  # errors of the read stage (a damaged shard, a null uri)
    sizes = batch.get(BYTES)  # listed sizes, when known: over max_bytes is refused unread
    width = np.full(n, INT_MISSING, np.int64)
    height = np.full(n, INT_MISSING, np.int64)
    duration = np.full(n, np.nan)
    frames = np.zeros(n, np.int64)
    errors = np.full(n, None, dtype=object)
    # transient (a store outage: a rerun scores the row again) or None (written: permanent)
    kinds = np.array(batch.get(ERROR_KIND, np.full(n, None, dtype=object)), dtype=object)
    inputs: dict[str, list[np.ndarray | None]] = {s.column: [] for s in scorers}
    preprocessors: dict[str, Any] = {}
    for spec in scorers:  # a preprocessor that cannot be built is every row's error, not a crash
        try:
            preprocessors[spec.column] = build_preprocessor(spec, storage_options)
        except Exception as exc:
            preprocessors[spec.column] = exc
    # Downscale-on-decode (a preprocessor's ``draft``; None: exact): an image is decoded once
    # per distinct draft its scorers ask for, so a scorer's input never depends on which other
    # scorers share the job (a draft decode costs a fraction of the full one).
    drafts = {column: getattr(prep, "draft", None) for column, prep in preprocessors.items()}
    wanted = list(dict.fromkeys(drafts.values())) or [None]
    device = _DeviceJpegs(
        [
            spec.column
            for spec in scorers
            if spec.column not in in_process and decodes_on_device(spec, preprocessors[spec.column])
        ],
        n,
    )
    jpegs = device.columns
    cpu_wanted = list(dict.fromkeys(d for c, d in drafts.items() if c not in jpegs))
    for i in range(n):
        uri, kind = str(batch["uri"][i]), batch["media_type"][i]
        if not isinstance(kind, str):  # None / NaN: a member or cell of no known media type
            kind = "unsupported"
        decoded: dict[Any, list[Any]] = {}  # draft → the item's images or frames
        errors[i] = error_text(given[i]) if given is not None else None
        try:
            if errors[i] is not None:  # the read stage already said why: nothing to decode
                pass
            elif kind == "unsupported":
                raise MediaError(f"unsupported file type {os.path.splitext(uri)[1] or '(none)'!r}")
            elif kind == OUTSIDE_ROOT:
                raise PermissionError("outside the configured input root; not read")
            elif kind == INVALID_NAME:
                raise OSError("file name is not valid UTF-8 (shown with \\x escapes); rename it")
            else:
                has_inline = inline is not None and inline[i] is not None
                if has_inline:
                    data = bytes(inline[i])
                else:
                    size = _int_or_missing(sizes[i]) if sizes is not None else INT_MISSING
                    data = read_input(
                        uri,
                        storage_options,
                        max_bytes=limits.max_bytes,
                        size=size if size > 0 else None,
                        timeout_s=limits.read_timeout_s,
                    )
                if kind == "image":
                    header = device.take(data, limits, i)
                    for draft in wanted if header is None else cpu_wanted:
                        image, info = decode_image(data, limits, draft)
                        decoded[draft] = [image]
                    if header is not None:
                        info = ImageInfo(*header.upright_size)
                    width[i], height[i], frames[i] = info.width, info.height, 1  # full size
                else:
                    items, vinfo = video_decoder().decode(data, video_fps, limits)
                    decoded = dict.fromkeys(wanted, items)
                    width[i], height[i], duration[i], frames[i] = (
                        vinfo.width,
                        vinfo.height,
                        vinfo.duration_s,
                        vinfo.sampled,
                    )
                del data
        except ReadError as exc:
            errors[i] = f"read: {exc}"
            kinds[i] = TRANSIENT if is_transient(exc) else None
        except (FileNotFoundError, PermissionError) as exc:
            if is_transient(exc):  # fsspec's HTTP filesystem: "not found" for a refused connection
                errors[i] = f"read: {_cause_text(exc)}"
                kinds[i] = TRANSIENT
            elif isinstance(exc, FileNotFoundError):
                errors[i] = f"read: not found: {exc}"
            else:
                errors[i] = f"read: access denied: {exc}"
        except MediaError as exc:
            errors[i] = f"decode: {exc}"
        except Exception as exc:  # network, permissions, anything else: keep the row
            errors[i] = f"read: {type(exc).__name__}: {exc}"
            kinds[i] = TRANSIENT if is_transient(exc) else None
        if errors[i] is not None:
            device.drop(i)
        for column, prep in preprocessors.items():
            arrays = []
            if errors[i] is None and not (column in jpegs and jpegs[column][i]):
                try:
                    if isinstance(prep, Exception):
                        raise prep
                    arrays = [prep(item)["pixels"] for item in decoded.get(drafts[column], [])]
                except Exception as exc:
                    errors[i] = f"preprocess[{column}]: {type(exc).__name__}: {exc}"
            inputs[column].append(item_frames(arrays))
    for column, arrays in inputs.items():
        out[INPUT_PREFIX + column] = np.empty(n, dtype=object)
        out[INPUT_PREFIX + column][:] = arrays
    for column, data in jpegs.items():
        out[JPEG_PREFIX + column] = data
    out.update({WIDTH: width, HEIGHT: height, DURATION: duration, FRAMES: frames, ERROR: errors})
    out[ERROR_KIND] = kinds
    if BYTES in out:  # nulls (sizes unknown) arrive as NaN or None: -1 in transit
        out[BYTES] = np.array([_int_or_missing(v) for v in out[BYTES]], np.int64)
    return out


DEVICE_BLOCK_BYTES = 512 * 1024**2
"""JPEG bytes a decode block sends to the pools that decode on their device, at most (an
Arrow binary column holds < 2 GiB; the decode task holds them all): the block's further JPEGs
are decoded in the task."""


class _DeviceJpegs:
    """The JPEG bytes of a block for the pools that decode on their device (``columns``:
    ``_jpeg_<column>`` each, empty where the row is decoded in the task)."""

    def __init__(self, columns: list[str], n: int) -> None:
        self.columns = {column: np.full(n, b"", dtype=object) for column in columns}
        self.left = DEVICE_BLOCK_BYTES

    def take(self, data: bytes, limits: MediaLimits, row: int) -> Any:
        """``data``'s header when it goes to those pools (a plain JPEG within the limits and
        the budget: :func:`~vqpipe.media.device_decode.device_header`), else None."""
        if not self.columns or len(data) > self.left:
            return None
        header = device_header(data, limits)
        if header is not None:
            self.left -= len(data)
            for column in self.columns.values():
                column[row] = data
        return header

    def drop(self, row: int) -> None:
        """An error row: nothing to send."""
        for column in self.columns.values():
            column[row] = b""


def _cause_text(exc: BaseException) -> str:
    """``Type: message`` of ``exc`` and of the transient error under it (what was refused)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__ or exc.__context__
    while cause is not None and not is_transient(cause):
        cause = cause.__cause__ or cause.__context__
    return text if cause is None else f"{text} ({type(cause).__name__}: {cause})"


def decode_score(
    batch: dict[str, np.ndarray],
    scorers: list[ScorerOptions],
    storage_options: dict[str, Any],
    video_fps: float,
    limits: MediaLimits,
    pools: list[tuple[ScorerOptions, str | None]] = (),  # type: ignore[assignment]
    block_frames: int = BLOCK_ROWS,
    arrow: bool = False,
) -> Iterator[Any]:
    """The batch in blocks of at most ``block_frames`` frames (:func:`block_bounds`: a video
    counts as its ``--max-frames``), each through :func:`decode_batch`, then the pools that
    score in the decode tasks (``pools``: each pool's options and checkpoint fingerprint; see
    :func:`scores_in_tasks`), each as its actor would (:class:`ScoreStage`, one per worker
    process). A generator: a block's frames are handed on (Ray Data makes blocks of what it
    yields) before the next block is decoded. ``arrow`` (what a job passes): blocks that carry
    the actor pools' pixels as variable-shaped tensor columns
    (:func:`~vqpipe.pipeline.pixels.to_block`), else dicts with them as object columns."""
    here = frozenset(spec.column for spec, _ in pools)
    sent = [INPUT_PREFIX + spec.column for spec in scorers if spec.column not in here]
    inline = batch.get(DATA)
    sizes = None
    if inline is not None:  # media bytes carried in the rows (None / NaN: none)
        sizes = [len(v) if isinstance(v, (bytes, np.ndarray)) else 0 for v in inline]
    for lo, hi in block_bounds(batch["media_type"], sizes, block_frames, limits.max_frames):
        piece = {k: v[lo:hi] for k, v in batch.items()}
        out = decode_batch(piece, scorers, storage_options, video_fps, limits, here)
        del piece
        for spec, fingerprint in pools:
            out = task_scorer(spec, storage_options, fingerprint)(out)
        yield to_block(out, sent) if arrow else out


def _within_read_timeout(tables: Iterator[Any], timeout_s: float | None) -> Iterator[Any]:
    """``tables``, each pulled with the shard readers' read calls bounded by ``timeout_s`` (the
    job's ``--read-timeout``: :func:`vqpipe.io.records.read_timeout`), set only while they run —
    a generator is suspended between its yields, and other code runs then."""
    while True:
        with read_timeout(timeout_s):
            table = next(tables, None)
        if table is None:
            return
        yield table


def read_shards_within(
    batch: dict[str, np.ndarray], options: dict[str, Any], storage_options: dict[str, Any]
) -> Iterator[Any]:
    """:func:`~vqpipe.pipeline.shards.read_shards` with each read call of the shard readers
    bounded by the job's ``--read-timeout`` (``options["read_timeout_s"]``; when the options
    do not say, :data:`vqpipe.defaults.READ_TIMEOUT_S`)."""
    timeout = options.get("read_timeout_s", READ_TIMEOUT_S)
    yield from _within_read_timeout(read_shards(batch, options, storage_options), timeout)


def read_decode(
    batch: dict[str, np.ndarray],
    options: dict[str, Any],
    storage_options: dict[str, Any],
    decode: dict[str, Any],
    block_rows: int,
) -> Iterator[dict[str, np.ndarray]]:
    """Read and decode in one task (a generator; one shard per call): each table of
    :func:`~vqpipe.pipeline.shards.read_shards`, cut into blocks of at most ``block_rows``
    frames (:func:`~vqpipe.pipeline.shards.block_bounds`: a video counts as its frame budget),
    through :func:`decode_score` (``decode``: its arguments). One Ray Data operator instead of
    two: a shard's media bytes never travel between processes, and a job starts no worker
    processes for a separate read stage."""
    import pyarrow.compute as pc
    from ray.data.block import BlockAccessor

    decode = {**decode, "block_frames": block_rows}
    limits: MediaLimits = decode["limits"]
    tables = read_shards(batch, options, storage_options)
    for table in _within_read_timeout(tables, limits.read_timeout_s):
        kinds = table.column("media_type").to_pylist()
        sizes = None
        if DATA in table.column_names:
            sizes = pc.fill_null(pc.binary_length(table.column(DATA)), 0).to_pylist()
        for lo, hi in block_bounds(kinds, sizes, block_rows, limits.max_frames):
            chunk = BlockAccessor.for_block(table.slice(lo, hi - lo))
            yield from decode_score(
                chunk.to_batch_format("numpy"), storage_options=storage_options, **decode
            )


class DeviceUnavailableError(JobError, RuntimeError):
    """A scorer actor was given a GPU by Ray but cannot use CUDA on its node."""


def actor_device(spec: ScorerOptions) -> str:
    """The device of a scorer actor, from what Ray assigned: the actor's CUDA device when its
    pool asked for GPUs (Ray sets ``CUDA_VISIBLE_DEVICES`` to the assigned ones), else the CPU.
    An actor with a GPU but no usable CUDA fails loudly instead of quietly running on the CPU."""
    if not spec.num_gpus:
        return "cpu"
    import ray
    import torch

    if not torch.cuda.is_available():
        context = ray.get_runtime_context()
        raise DeviceUnavailableError(
            f"scorer pool {spec.column!r} asked for num_gpus={spec.num_gpus:g} per actor and Ray "
            f"assigned GPU(s) {context.get_accelerator_ids().get('GPU', [])} on node "
            f"{ray.util.get_node_ip_address()}, but CUDA is not usable there "
            f"(torch.cuda.is_available() is False; torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); install a CUDA "
            "build of torch on the GPU nodes, or pass device=cpu to score on the CPU"
        )
    return "cuda"


class ScoreStage:
    """Actor stage: load one scorer once, score the rows without an error, pass every row
    through (a pool with ``when=`` scores only the rows its predicate sends on, and adds
    ``<column>_skipped``: :mod:`vqpipe.pipeline.cascade`). The rows' frames are stacked into a
    reused pinned buffer, copied to the device on a stream of their own and scored
    (:class:`~vqpipe.scorers.transfer.BatchRunner`); the pool runs :data:`CALLS_PER_ACTOR`
    calls at once, so one batch is stacked and copied while another runs (a scorer whose
    frames do not stack goes through :meth:`Scorer.predict_items`).

    The device is decided here, from what Ray assigned (:func:`actor_device`), unless the
    pool's options name one. ``fingerprint``: the checkpoint identity the driver recorded in
    the job signature; an actor that loads anything else refuses to score. ``arrow`` (an
    actor of a job): the batch goes on as an Arrow block, the pixel columns of the pools after
    this one as variable-shaped tensor columns (:func:`~vqpipe.pipeline.pixels.to_block`).
    ``gate_for``: the ``when=`` pool after this one, whose gate
    (:func:`~vqpipe.pipeline.cascade.gate_batch`) then runs at the end of each call.
    """

    def __init__(
        self,
        spec: ScorerOptions,
        storage_options: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        limits: MediaLimits | None = None,
        arrow: bool = False,
        gate_for: ScorerOptions | None = None,
    ) -> None:
        import ray

        from vqpipe.scorers.registry import create_scorer

        self.spec = spec
        self.limits = limits or MediaLimits()  # for the JPEGs it decodes (decode=gpu)
        self.device_preprocessor = None
        if spec.decode != "cpu":
            # one the decode tasks cannot build either sends no JPEG here
            with contextlib.suppress(Exception):
                self.device_preprocessor = build_preprocessor(spec, storage_options or {})
        kwargs = spec.scorer_kwargs(storage_options)
        kwargs.setdefault("device", actor_device(spec))
        with warnings.catch_warnings():  # the job's driver says so once, on its console
            warnings.simplefilter("ignore", DemoCheckpointWarning)
            self.scorer = create_scorer(spec.name, **kwargs)
        loaded = self.scorer.checkpoint_fingerprint
        if fingerprint is not None and loaded is not None and loaded != fingerprint:
            raise RuntimeError(
                f"scorer pool {spec.column!r}: the checkpoint changed since the job started "
                f"(recorded {fingerprint}, loaded {loaded}); rerun the job"
            )
        self.runtime = json.dumps(
            {
                "device": str(self.scorer.device),
                "dtype": str(self.scorer.dtype).removeprefix("torch."),
                "node": ray.util.get_node_ip_address(),
            },
            sort_keys=True,
        )
        self.arrow = arrow
        self.gate_for = gate_for  # the when= pool next in the graph: its gate runs here
        self.runner: BatchRunner | None = None
        if getattr(self.scorer, "stacks_frames", False):
            self.runner = BatchRunner(self.scorer, self.spec.batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        column = self.spec.column
        inputs = column_items(batch.pop(INPUT_PREFIX + column))
        n = len(inputs)
        # each output of the pool → <column>_<output>; NaN in transit, null once written
        outputs = self.scorer.empty_outputs(n, **self.spec.options)
        errors = np.array([error_text(e) for e in batch[ERROR]], dtype=object)
        jpegs = batch.pop(JPEG_PREFIX + column, None)
        skipped = gate(self.spec, batch)  # when=: rows held back (a block's carrier row)
        if skipped is not None:
            batch[extra_column(column, SKIPPED)] = skipped
            for i in np.flatnonzero(skipped):
                inputs[i] = None
            if jpegs is not None:
                jpegs = np.array(jpegs, dtype=object)
                jpegs[skipped] = b""
        if jpegs is not None:
            self._decode_jpegs(jpegs, inputs, errors)
        todo = [i for i in range(n) if errors[i] is None and inputs[i] is not None]
        if todo:
            try:
                out = self._predict([inputs[i] for i in todo])
                scored = {key: out[key] for key in outputs}
                for key, values in scored.items():
                    outputs[key][todo] = values
            except Exception as exc:
                for i in todo:
                    errors[i] = f"score[{column}]: {type(exc).__name__}: {exc}"
        for key, values in outputs.items():
            batch[extra_column(column, key)] = values
        batch[RUNTIME_PREFIX + column] = np.full(n, self.runtime, dtype=object)
        batch[ERROR] = errors
        if self.gate_for is not None:  # no task of its own between the two pools
            return gate_batch(batch, self.gate_for)
        if self.arrow:
            return to_block(batch, [c for c in batch if c.startswith(INPUT_PREFIX)])
        return batch

    def _decode_jpegs(self, jpegs: np.ndarray, inputs: list[Any], errors: np.ndarray) -> None:
        """The rows whose JPEG bytes came with the batch (``decode=gpu``) into ``inputs``
        (uint8 [1, 3, S, S] tensors on the scorer's device): decoded there in batches and
        resized by the preprocessing's ``device_geometry``. A row the device cannot take goes
        through Pillow and the CPU preprocessing as in the decode tasks, so that its pixels, or
        its error (``decode: ...``), are the CPU path's."""
        rows = [i for i, data in enumerate(jpegs) if data is not None and len(data)]
        rows = [i for i in rows if errors[i] is None]
        if not rows:
            return
        prep = self.device_preprocessor
        geometry = getattr(prep, "device_geometry", None)
        images: list[Any] = [None] * len(rows)
        if geometry is not None:
            datas = [bytes(jpegs[i]) for i in rows]
            images, _ = decode_jpegs(datas, getattr(self.scorer, "device", "cpu"), geometry)
        for k, image in enumerate(images):  # stays on the device: the runner stacks it there
            if image is not None:
                inputs[rows[k]] = image[None]
        for i, image in zip(rows, images, strict=True):
            if image is not None:
                continue
            try:
                item, _ = decode_image(bytes(jpegs[i]), self.limits, getattr(prep, "draft", None))
                inputs[i] = np.stack([prep(item)["pixels"]])  # type: ignore[misc]
            except MediaError as exc:
                errors[i] = f"decode: {exc}"
            except Exception as exc:
                errors[i] = f"preprocess[{self.spec.column}]: {type(exc).__name__}: {exc}"

    def _predict(self, items: list[Any]) -> dict[str, np.ndarray]:
        """Per-item outputs of ``items`` (frames [T, ...] each: host arrays, or tensors on the
        scorer's device from :meth:`_decode_jpegs`): stacked and overlapped
        (:attr:`runner`) when the scorer takes stacked frames and the items' frames have one
        shape, else :meth:`Scorer.predict_items`."""
        shapes = {(tuple(x.shape[1:]), str(x.dtype).removeprefix("torch.")) for x in items}
        if self.runner is None or len(shapes) != 1:
            host = [x.cpu().numpy() if is_tensor(x) else x for x in items]
            return self.scorer.predict_items(host, self.spec.batch_size)
        return self.runner(items)


_TASK_SCORERS: dict[str, ScoreStage] = {}


def task_scorer(
    spec: ScorerOptions, storage_options: dict[str, Any], fingerprint: str | None
) -> ScoreStage:
    """The :class:`ScoreStage` of a pool that scores in the decode tasks: built once per
    worker process (and pool options), as an actor would be."""
    kwargs = spec.scorer_kwargs(storage_options)
    key = json.dumps(
        [spec.name, spec.column, spec.batch_size, kwargs, fingerprint], sort_keys=True, default=str
    )
    stage = _TASK_SCORERS.get(key)
    if stage is None:
        if len(_TASK_SCORERS) >= 16:  # a long-lived worker of many jobs: keep a few
            _TASK_SCORERS.clear()
        stage = _TASK_SCORERS[key] = ScoreStage(spec, storage_options, fingerprint)
    return stage


def scores_in_tasks(spec: ScorerOptions) -> bool:
    """Whether a pool scores inside the decode tasks rather than in an actor pool: its scorer
    has nothing to load (:meth:`Scorer.scores_in_tasks`: numpy on the CPU, built in
    microseconds) and the pool asks for no GPUs, CPUs or actors of its own. An actor is a new
    worker process per job (seconds of start-up: Python, Ray Data, vqpipe, on every job), a
    decode task runs in a worker Ray already has."""
    if spec.num_gpus or spec.num_cpus is not None or tuple(spec.actors) != (1, 1):
        return False
    if spec.when:  # its predicate reads the columns of earlier pools: after their actors
        return False
    return bool(spec.scorer_class().scores_in_tasks(**spec.options))


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


def _int_or_missing(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return INT_MISSING
    return int(number) if np.isfinite(number) else INT_MISSING


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


def follow_stage(fn: Any, upstream: Stage | None = None) -> Stage:
    """A one-block-per-call task stage: with ``upstream``'s CPUs, memory and retries (Ray
    Data fuses consecutive task stages only when those are the same), else half a CPU."""
    if upstream is None or upstream.actors:
        return Stage(fn, None, DECODE_CPUS)
    return Stage(
        fn, None, upstream.num_cpus, memory=upstream.memory, max_retries=upstream.max_retries
    )
