"""The Scorer protocol: one shape for every quality method.

A scorer splits its work so the pipeline can run each half where it belongs:

* :meth:`Scorer.preprocess` — CPU side, one item (a PIL image, or a list of frames for video)
  → a dict of numpy arrays. Runs in the decode stage of the pipeline.
* :meth:`Scorer.collate` — stack per-item dicts into one batch dict.
* :meth:`Scorer.predict` — accelerator side, one batch dict → ``{"score": (B,), "probs":
  (B, K), ...}``. Runs in a GPU actor pool.

Library users call the scorer (``scorer(x)`` is ``scorer.score(x)``) or
:meth:`Scorer.score_details`: they take one item or a batch of paths, URIs, PIL images, arrays,
tensors or frame lists (:func:`vqpipe.scoring.inputs.as_items`), and chain the three steps in
:meth:`Scorer.score_items`, the one method a scorer overrides to score differently.
"""

from __future__ import annotations

import abc
import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from vqpipe.defaults import DEFAULT_BATCH_SIZE
from vqpipe.scoring.inputs import Item, as_items

if TYPE_CHECKING:
    import torch

F = TypeVar("F", bound=Callable[..., Any])


def inference_mode(fn: F) -> F:
    """``@torch.inference_mode()`` for a method, with torch imported on the first call (so
    importing a scorer class imports no torch)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import torch

        with torch.inference_mode():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` → the first CUDA device when there is one, else the CPU."""
    import torch

    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """``None`` → bfloat16 on CUDA, float32 elsewhere; strings like ``"bf16"`` are accepted."""
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    aliases = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "half": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
        "float": torch.float32,
    }
    try:
        return aliases[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(aliases)}") from None


class Scorer(abc.ABC):
    """Base class of all scorers. Subclasses set the class attributes and the three steps."""

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    media: ClassVar[frozenset[str]] = frozenset({"image"})
    higher_better: ClassVar[bool] = True
    score_range: ClassVar[tuple[float, float]] = (0.0, 1.0)
    prob_labels: ClassVar[tuple[str, ...]] = ()
    extra_outputs: ClassVar[tuple[str, ...]] = ()  # further per-item outputs of predict_items
    stacks_frames: ClassVar[bool] = True
    """Whether :meth:`predict` takes ``pixels`` as one array of same-shaped frames (numpy or a
    tensor on the scorer's device): the pipeline then stacks them in a reused pinned buffer
    and calls :meth:`predict_stacked`. False: frames of their own sizes (a list)."""
    storage_options: dict[str, Any] | None = None  # fsspec options for inputs given as URIs
    uses_torch: ClassVar[bool] = True
    """False for a scorer that runs on the CPU with numpy only: its ``device`` and ``dtype``
    are then the strings ``"cpu"`` and ``"float32"`` (what a torch scorer's record as text),
    and building it imports no torch (a scorer actor's start-up is then its imports only)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.device: torch.device | str
        self.dtype: torch.dtype | str
        if self.uses_torch:
            self.device = resolve_device(device)
            self.dtype = resolve_dtype(dtype, self.device)
        else:  # numpy on the CPU, whatever was asked for
            self.device, self.dtype = "cpu", "float32"
        self.checkpoint_fingerprint: str | None = None

    @classmethod
    def default_checkpoint(cls) -> Any:
        """The checkpoint used when none is given (None: the scorer has no default)."""
        return None

    @classmethod
    def bundled_checkpoint(cls) -> Any:
        """The demo checkpoint shipped inside the package when the default is one, else None
        (jobs that score with it say so loudly and record ``checkpoint: bundled-demo``)."""
        return None

    @classmethod
    def scores_in_tasks(cls, **options: Any) -> bool:
        """Whether a job may score with this scorer inside its CPU decode tasks (one copy per
        worker process) instead of an actor pool of its own: by default, when it has nothing
        to load (``uses_torch`` False). Cheap; ``options``: the pool's scorer options."""
        return not cls.uses_torch

    @classmethod
    def check_options(cls, **options: Any) -> None:
        """Raise ``ValueError`` for option values this scorer cannot take; cheap (no weights),
        so a job can refuse them before it starts."""
        return None

    @classmethod
    def make_preprocessor(cls, **options: Any) -> Any:
        """A picklable ``item -> dict[str, np.ndarray]`` for CPU workers (the pipeline's decode
        stage). The default builds the scorer on the CPU; scorers override it to skip loading
        weights."""
        options = {k: v for k, v in options.items() if k not in ("device", "dtype")}
        return cls(device="cpu", **options).preprocess

    @abc.abstractmethod
    def preprocess(self, item: Item) -> dict[str, np.ndarray]:
        """Turn one input (image or frame list) into model-ready arrays (CPU)."""

    @abc.abstractmethod
    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Score one collated batch; returns at least ``score`` (B,) and ``probs`` (B, K)."""

    def collate(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Stack per-item arrays along a new batch axis (override for ragged inputs)."""
        if not items:
            raise ValueError(f"{self.name}: cannot collate an empty batch")
        return {key: np.stack([it[key] for it in items]) for key in items[0]}

    def predict_items(
        self, inputs: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> dict[str, np.ndarray]:
        """Score preprocessed items, each a [T, ...] array of frames (T = 1 for an image).

        The default scores every frame as an image and averages every output over each item's
        frames (video scored by an image model); video-native scorers override it.
        """
        n = len(inputs)
        k = max(len(self.prob_labels), 1)
        if n == 0:
            return {"score": np.zeros(0, np.float32), "probs": np.zeros((0, k), np.float32)}
        frames = [f for x in inputs for f in x]
        outs = [
            self.predict({"pixels": self.stack_frames(frames[i : i + batch_size])})
            for i in range(0, len(frames), batch_size)
        ]
        merged = {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}
        counts = np.array([len(x) for x in inputs])
        if (counts == 1).all():  # images: one frame each, nothing to average
            return {key: v.astype(np.float32) for key, v in merged.items()}
        owner = np.repeat(np.arange(n), counts)
        out = {}
        for key, v in merged.items():  # per-item sums in one pass (a mask per item was O(n²))
            sums = np.zeros((n, *v.shape[1:]), np.float64)
            np.add.at(sums, owner, v)
            with np.errstate(invalid="ignore", divide="ignore"):  # no frames: NaN, as before
                out[key] = (sums / counts.reshape((-1,) + (1,) * (v.ndim - 1))).astype(np.float32)
        return out

    def predict_tensors(self, batch: dict[str, Any]) -> dict[str, Any]:
        """:meth:`predict` without the copy of its outputs to the host: a torch scorer returns
        tensors on its device, its kernels queued (no sync), so the caller can start the next
        batch first. Default: :meth:`predict` (numpy)."""
        return self.predict(batch)

    def predict_stacked(self, pixels: Any, counts: Any, batch_size: int) -> dict[str, Any]:
        """:meth:`predict_items` of frames already stacked: ``pixels`` [N, ...] (numpy, or a
        tensor on the scorer's device), item i owning the next ``counts[i]`` frames. Outputs
        per item, as tensors on the device where :meth:`predict_tensors` gives them (else
        numpy): every frame scored as an image, outputs averaged over each item's frames.
        Imports no torch for a numpy scorer."""
        counts = np.asarray(counts, np.int64)
        total = len(pixels)
        outs = [
            self.predict_tensors({"pixels": pixels[i : i + batch_size]})
            for i in range(0, total, batch_size)
        ]
        if not outs:
            k = max(len(self.prob_labels), 1)
            return {"score": np.zeros(0, np.float32), "probs": np.zeros((0, k), np.float32)}
        merged = {key: concat_outputs([o[key] for o in outs]) for key in outs[0]}
        if (counts == 1).all():
            return merged
        return {key: mean_per_item(v, counts) for key, v in merged.items()}

    def stack_frames(self, frames: Sequence[Any]) -> Any:
        """One ``pixels`` batch from single frames (scorers with ragged inputs override it)."""
        return np.stack([np.asarray(f) for f in frames])

    def score_items(self, items: Sequence[Item]) -> dict[str, np.ndarray]:
        """Scores plus per-item details of normalised items (PIL images; a list of PIL frames
        is one video, scored as the pipeline scores it: :meth:`predict_items` over its
        frames)."""
        items = list(items)
        if not items:
            k = max(len(self.prob_labels), 1)
            return {"score": np.zeros(0, np.float32), "probs": np.zeros((0, k), np.float32)}
        if any(isinstance(it, list) for it in items):
            return self.predict_items([self.frames_input(it) for it in items])
        return self.predict(self.collate([self.preprocess(it) for it in items]))

    def frames_input(self, item: Item) -> np.ndarray:
        """One item as :meth:`predict_items` takes it: its frames' ``pixels``, [T, ...]."""
        frames = item if isinstance(item, list) else [item]
        return np.stack([self.preprocess(f)["pixels"] for f in frames])

    def score_details(
        self, x: Any, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        """Scores plus per-item details (``probs`` over :attr:`prob_labels`, ...) of one item
        or a batch (see :mod:`vqpipe.scoring.inputs`). A batch gives arrays with one row per
        item; one item gives that row (``score`` a float). ``storage_options`` (default: the
        scorer's) are for URIs; ``options`` go to :meth:`score_items`."""
        out, single = self._score(x, storage_options, options)
        if not single:
            return out
        return {k: float(v[0]) if np.ndim(v) == 1 else np.asarray(v[0]) for k, v in out.items()}

    def score(
        self, x: Any, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> float | np.ndarray:
        """One item → its score (a float); a batch → one score per item, shape (N,)."""
        out, single = self._score(x, storage_options, options)
        return float(out["score"][0]) if single else np.asarray(out["score"])

    def __call__(
        self, x: Any, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> float | np.ndarray:
        """``scorer(x)`` is ``scorer.score(x)`` (pyiqa's ``metric(x)``)."""
        return self.score(x, storage_options=storage_options, **options)

    def _score(
        self, x: Any, storage_options: dict[str, Any] | None, options: dict[str, Any]
    ) -> tuple[dict[str, np.ndarray], bool]:
        if storage_options is None:
            storage_options = self.storage_options
        draft = getattr(getattr(self, "preprocessor", None), "draft", None)  # as the pipeline
        items, single = as_items(x, storage_options, draft=draft)
        return self.score_items(items, **options), single

    def metadata(self) -> dict[str, Any]:
        """What the quality table records about this scorer."""
        return {
            "name": self.name,
            "version": self.version,
            "checkpoint": self.checkpoint,
            "checkpoint_fingerprint": self.checkpoint_fingerprint,
            "media": sorted(self.media),
            "higher_better": self.higher_better,
            "score_range": list(self.score_range),
            "prob_labels": list(self.prob_labels),
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}(checkpoint={self.checkpoint!r}, device={self.device})"


def concat_outputs(parts: Sequence[Any]) -> Any:
    """One output from its batches' pieces (torch tensors stay on their device)."""
    if len(parts) == 1:
        return parts[0]
    if hasattr(parts[0], "is_cuda"):
        import torch

        return torch.cat(list(parts))
    return np.concatenate(parts)


def mean_per_item(values: Any, counts: np.ndarray) -> Any:
    """Per-item means of per-frame ``values`` [N, ...] (item i: the next ``counts[i]`` rows),
    summed in float64 as :meth:`Scorer.predict_items` does, returned as float32; an item of no
    frames gets NaN. Tensors stay on their device (no sync)."""
    n = len(counts)
    if hasattr(values, "is_cuda"):
        import torch

        def put(array: np.ndarray) -> torch.Tensor:  # pinned + non_blocking: no stream sync
            host = torch.from_numpy(array)
            if values.is_cuda:
                host = host.pin_memory()
            return host.to(values.device, non_blocking=True)

        with torch.inference_mode():
            owner = put(np.repeat(np.arange(n), counts))
            sums = values.new_zeros((n, *values.shape[1:]), dtype=torch.float64)
            sums.index_add_(0, owner, values.double())
            div = put(counts.astype(np.float64)).reshape((-1,) + (1,) * (values.dim() - 1))
            return (sums / div).float()
    owner = np.repeat(np.arange(n), counts)
    sums = np.zeros((n, *np.shape(values)[1:]), np.float64)
    np.add.at(sums, owner, values)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts.reshape((-1,) + (1,) * (np.ndim(values) - 1))).astype(np.float32)
