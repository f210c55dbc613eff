"""The decode half of a scoring job's Ray Data graph: read each input's bytes within its
deadline, decode it within the media limits and run every pool's CPU preprocessing (or
keep a JPEG's bytes for a pool that decodes on its device). Errors are data: a failing item
becomes a row whose ``error`` names the stage."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import numpy as np

from vqpipe.defaults import READ_TIMEOUT_S
from vqpipe.io.fs import is_transient
from vqpipe.io.reading import ReadError, read_input
from vqpipe.io.records import read_timeout
from vqpipe.io.sources import INVALID_NAME, OUTSIDE_ROOT
from vqpipe.media.decode import ImageInfo, MediaError, MediaLimits, decode_image
from vqpipe.media.device_decode import device_header
from vqpipe.media.isolated import video_decoder
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.pipeline.pixels import item_frames, to_block
from vqpipe.pipeline.score_stage import (
    build_preprocessor,
    cpu_pixels,
    decodes_on_device,
    task_scorer,
)
from vqpipe.pipeline.shards import (
    BLOCK_ROWS,
    block_bounds,
    read_shards,
)
from vqpipe.schema import (
    BYTES,
    DATA,
    DEFER_PREFIX,
    DURATION,
    ERROR,
    ERROR_KIND,
    FRAMES,
    HEIGHT,
    INPUT_PREFIX,
    INT_MISSING,
    JPEG_PREFIX,
    TRANSIENT,
    WIDTH,
    error_text,
)


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
    sent = _SentBytes(
        [
            spec.column
            for spec in scorers
            if spec.column not in in_process and decodes_on_device(spec, preprocessors[spec.column])
        ],
        [spec.column for spec in scorers if spec.when and spec.column not in in_process],
        n,
    )
    went: set[str] = set()  # the columns the row's bytes went to undecoded
    for i in range(n):
        uri, kind = str(batch["uri"][i]), batch["media_type"][i]
        if not isinstance(kind, str):  # None / NaN: a member or cell of no known media type
            kind = "unsupported"
        decoded: dict[Any, list[Any]] = {}  # draft → the item's images or frames
        went = set()
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
                    header, went = sent.take(data, limits, i)
                    here = [d for c, d in drafts.items() if c not in went]
                    if header is None and not here:  # decoded here for its size alone
                        here = wanted[:1]
                    for draft in dict.fromkeys(here):
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
            sent.drop(i)
            went = set()
        for column, prep in preprocessors.items():
            arrays = []
            if errors[i] is None and column not in went:
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
    out.update(sent.columns())
    out.update({WIDTH: width, HEIGHT: height, DURATION: duration, FRAMES: frames, ERROR: errors})
    out[ERROR_KIND] = kinds
    if BYTES in out:  # nulls (sizes unknown) arrive as NaN or None: -1 in transit
        out[BYTES] = np.array([_int_or_missing(v) for v in out[BYTES]], np.int64)
    return out


def decode_deferred(
    batch: dict[str, np.ndarray],
    spec: ScorerOptions,
    storage_options: dict[str, Any],
    limits: MediaLimits,
) -> Any:
    """After a ``when=`` pool's gate (:func:`~vqpipe.pipeline.cascade.gate_batch`): the rows
    sent on whose image bytes came undecoded (``_defer_<column>``) decoded and preprocessed
    for the pool (:func:`~vqpipe.pipeline.score_stage.cpu_pixels`: the decode tasks' draft
    and preprocessing); the rows the gate held back are never decoded for it."""
    from vqpipe.pipeline.pixels import column_items

    column = spec.column
    data = batch.pop(DEFER_PREFIX + column, None)
    errors = np.array([error_text(e) for e in batch[ERROR]], dtype=object)
    rows = [] if data is None else [i for i, d in enumerate(data) if d is not None and len(d)]
    rows = [i for i in rows if errors[i] is None]
    if rows:
        items = column_items(batch[INPUT_PREFIX + column])
        try:
            prep: Any = build_preprocessor(spec, storage_options)
        except Exception as exc:  # as in the decode tasks: every row's error, not a crash
            prep = exc
        for i in rows:
            items[i], errors[i] = cpu_pixels(prep, bytes(data[i]), limits, column)
        pixels = np.empty(len(items), dtype=object)
        pixels[:] = items
        batch[INPUT_PREFIX + column] = pixels
        batch[ERROR] = errors
    return to_block(batch, [c for c in batch if c.startswith(INPUT_PREFIX)])


DEVICE_BLOCK_BYTES = 512 * 1024**2
"""Image bytes a decode block sends on undecoded, at most (to the pools that decode on their
device, and to the ``when=`` pools that decode after their gate; an Arrow binary column holds
< 2 GiB, and the decode task holds them all): the block's further images are decoded in the
task."""


class _SentBytes:
    """The image bytes of a block that go on undecoded, within one budget: a plain JPEG's to
    the pools that decode on their device (``jpegs``: ``_jpeg_<column>``), any image's to the
    ``when=`` pools (``deferred``: ``_defer_<column>``; a plain JPEG of one that decodes on
    its device goes there instead), decoded after their gate (:func:`decode_deferred`), so
    that a row the gate holds back is never decoded for them. Empty where the row is decoded
    in the task."""

    def __init__(self, device: list[str], deferred: list[str], n: int) -> None:
        self.jpegs = {column: np.full(n, b"", dtype=object) for column in device}
        self.deferred = {column: np.full(n, b"", dtype=object) for column in deferred}
        self.left = DEVICE_BLOCK_BYTES

    def take(self, data: bytes, limits: MediaLimits, row: int) -> tuple[Any, set[str]]:
        """``data``'s JPEG header when it goes to the device pools (a plain JPEG within the
        limits: :func:`~vqpipe.media.device_decode.device_header`), else None; and the columns
        it went to (none when the budget is spent)."""
        if len(data) > self.left:
            return None, set()
        header = device_header(data, limits) if self.jpegs else None
        went: set[str] = set()
        if header is not None:
            for column, values in self.jpegs.items():
                values[row] = data
                went.add(column)
        for column, values in self.deferred.items():
            if column not in went:  # a when= pool decoding on its device takes the JPEG there
                values[row] = data
                went.add(column)
        if went:
            self.left -= len(data)
        return header, went

    def drop(self, row: int) -> None:
        """An error row: nothing to send."""
        for columns in (self.jpegs, self.deferred):
            for column in columns.values():
                column[row] = b""

    def columns(self) -> dict[str, np.ndarray]:
        """The block's columns of bytes in transit."""
        return {
            **{JPEG_PREFIX + c: v for c, v in self.jpegs.items()},
            **{DEFER_PREFIX + c: v for c, v in self.deferred.items()},
        }


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


def _int_or_missing(value: Any) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return INT_MISSING
    return int(number) if np.isfinite(number) else INT_MISSING
