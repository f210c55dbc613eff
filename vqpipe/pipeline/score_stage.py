"""The scoring half of a job's Ray Data graph: a pool's actor (:class:`ScoreStage`: the
model loaded once, its device decided from what Ray assigned) or, for a scorer with nothing
to load, the same stage inside the decode tasks (:func:`task_scorer`)."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import warnings
from typing import Any

import numpy as np

from vqpipe.errors import DemoCheckpointWarning, JobError
from vqpipe.media.decode import MediaError, MediaLimits, decode_image
from vqpipe.media.device_decode import decode_jpegs
from vqpipe.pipeline.cascade import SKIPPED, gate, gate_batch
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.pipeline.pixels import column_items, to_block
from vqpipe.quality_math.arrays import is_tensor
from vqpipe.schema import (
    ERROR,
    INPUT_PREFIX,
    JPEG_PREFIX,
    RUNTIME_PREFIX,
    error_text,
    extra_column,
)
from vqpipe.scorers.transfer import BatchRunner


@functools.lru_cache(maxsize=16)
def _preprocessor(name: str, kwargs_json: str) -> Any:
    from vqpipe.scorers.registry import get_scorer_spec

    return get_scorer_spec(name).load().make_preprocessor(**json.loads(kwargs_json))


def build_preprocessor(spec: ScorerOptions, storage_options: dict[str, Any]) -> Any:
    """The scorer's CPU preprocessing, from the same constructor arguments as its actor."""
    kwargs = spec.scorer_kwargs(storage_options)
    return _preprocessor(spec.name, json.dumps(kwargs, sort_keys=True, default=str))


def cpu_pixels(
    prep: Any, data: bytes, limits: MediaLimits, column: str
) -> tuple[np.ndarray | None, str | None]:
    """One image's bytes decoded with Pillow and run through the pool ``column``'s CPU
    preprocessing ``prep`` (an exception: the one building it raised): its frames [1, ...], or
    the row's error (``decode: …`` for bytes that do not decode, else ``preprocess[…]: …``)."""
    try:
        if isinstance(prep, Exception):
            raise prep
        image, _ = decode_image(data, limits, getattr(prep, "draft", None))
        return np.stack([prep(image)["pixels"]]), None
    except MediaError as exc:
        return None, f"decode: {exc}"
    except Exception as exc:
        return None, f"preprocess[{column}]: {type(exc).__name__}: {exc}"


def decodes_on_device(spec: ScorerOptions, preprocessor: Any) -> bool:
    """Whether the pool's actors decode its JPEGs on their device (``decode=gpu``; ``auto``:
    when the pool has GPUs), rather than the decode tasks: only for a scorer whose CPU
    preprocessing has a ``device_geometry`` (uint8 [3, H, W] tensor → uint8 [3, S, S] on the
    tensor's device). A CPU actor then decodes with torchvision on the CPU: the same code."""
    if spec.decode == "cpu" or not hasattr(preprocessor, "device_geometry"):
        return False
    return spec.decode == "gpu" or bool(spec.num_gpus)


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
            if image is None:
                inputs[i], errors[i] = cpu_pixels(
                    prep, bytes(jpegs[i]), self.limits, self.spec.column
                )

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
