"""The Scorer protocol: one shape for every quality method, and one path through it.

* :meth:`Scorer.make_preprocessor` — the CPU half: a picklable callable, one image or video
  frame → ``{"pixels": array}``, built without the model. The pipeline runs it in its decode
  tasks, frame by frame, and stacks an item's frames into one ``[T, ...]`` array (T = 1 for
  an image). A built scorer holds the same kind of object as :attr:`Scorer.preprocessor`.
* :meth:`Scorer.predict_stacked` — the accelerator half: the frames of a batch of items in
  one ``[N, ...]`` array (numpy, or a tensor already on the device; item i owns the next
  ``counts[i]`` frames) → per-item outputs (:meth:`Scorer.outputs` names them: ``score``
  [N], ``probs`` [N, K], extras). The pipeline's actors stack the frames into a pinned buffer
  and call it (:mod:`vqpipe.scorers.transfer`); :meth:`Scorer.predict_items` takes the items
  as a list of ``[T, ...]`` arrays, stacks them and calls it (frames of different shapes,
  :attr:`Scorer.stacks_frames` False, go to :meth:`Scorer.predict` as lists instead).

Library users call the scorer (``scorer(x)`` is ``scorer.score(x)``) or
:meth:`Scorer.score_details`: they take one item or a batch of paths, URIs, PIL images, arrays,
tensors or frame lists (:func:`vqpipe.scorers.inputs.as_items`), run the preprocessor on every
frame and hand the items to :meth:`Scorer.predict_items`.

A scorer provides its preprocessor (or overrides :meth:`Scorer.preprocess`, one frame → arrays)
and either :meth:`Scorer.predict` (a batch of frames → per-frame outputs; the default
:meth:`Scorer.predict_stacked` scores every frame as an image and averages over each item's
frames, :func:`average_frames`) or its own :meth:`Scorer.predict_stacked` (video-native
models: Q-Align's video task).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from vqpipe.defaults import DEFAULT_BATCH_SIZE
from vqpipe.models.devices import resolve_device, resolve_dtype
from vqpipe.quality_math.arrays import is_tensor
from vqpipe.scorers.inputs import Item, as_items
from vqpipe.scorers.transfer import device_input

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


class Scorer:
    """Base class of all scorers. Subclasses set the class attributes, a preprocessor (or
    :meth:`preprocess`) and :meth:`predict` or :meth:`predict_items`."""

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
    preprocessor: Any = None  # the CPU half, as make_preprocessor builds it (set by __init__)
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
        """A picklable ``frame -> dict[str, np.ndarray]`` for CPU workers (the pipeline's decode
        stage): one image or video frame in, its ``pixels`` out. The default builds the scorer
        on the CPU and hands back its :meth:`preprocess`; scorers override it to skip loading
        weights."""
        options = {k: v for k, v in options.items() if k not in ("device", "dtype")}
        return cls(device="cpu", **options).preprocess

    @classmethod
    def outputs(cls, **options: Any) -> dict[str, str]:
        """The per-item outputs of :meth:`predict_items` for these scorer options, name →
        ``"float"`` or ``"probs"`` (a row over :attr:`prob_labels`); a pool writes each to the
        column ``<column>_<name>``, in this order. Cheap (no weights). Default:
        :attr:`extra_outputs`, ``score`` and ``probs`` (the column order of every table so
        far)."""
        return {**dict.fromkeys(cls.extra_outputs, "float"), "score": "float", "probs": "probs"}

    def preprocess(self, frame: Any) -> dict[str, np.ndarray]:
        """One image or video frame → its arrays (CPU): the scorer's :attr:`preprocessor`."""
        if self.preprocessor is None:
            raise NotImplementedError(f"{self.name}: set self.preprocessor or override preprocess")
        return self.preprocessor(frame)

    def predict(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Score a batch of frames (``pixels``: [B, ...]) as images; returns per-frame
        ``score`` (B,), ``probs`` (B, K), ... (the default :meth:`predict_items`' model call)."""
        raise NotImplementedError(f"{self.name}: override predict or predict_items")

    def predict_items(
        self, inputs: Sequence[Any], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> dict[str, np.ndarray]:
        """Score preprocessed items, each a [T, ...] array of frames (T = 1 for an image).

        The default scores every frame as an image and averages every output over each item's
        frames (:meth:`frames_averaged`, through :meth:`predict_stacked`: video scored by an
        image model); a scorer overrides it for options per item (Gamma's ``scene``).
        """
        return self.frames_averaged(inputs, batch_size)

    def frames_averaged(
        self,
        inputs: Sequence[Any],
        batch_size: int = DEFAULT_BATCH_SIZE,
        per_frame: dict[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Items' frames ([T, ...] each) through :meth:`predict_stacked` — the path of the
        pipeline's actors — as numpy; ``per_frame``: arrays of one row per frame. Frames of
        different shapes (:attr:`stacks_frames` False: a scorer that resizes inside its model)
        go to :meth:`predict` as lists, ``batch_size`` at a time, averaged the same way."""
        counts = [len(x) for x in inputs]
        frames = [f for x in inputs for f in x]
        if not frames:
            return self.empty_outputs(len(inputs))
        stacked = frames_batch(frames)
        if self.stacks_frames and not isinstance(stacked, list):
            return as_numpy(self.predict_stacked(stacked, counts, batch_size, per_frame))
        outs = []
        for i in range(0, len(frames), batch_size):
            batch = {key: v[i : i + batch_size] for key, v in (per_frame or {}).items()}
            outs.append(self.predict({**batch, "pixels": frames_batch(frames[i : i + batch_size])}))
        merged = {key: np.concatenate([o[key] for o in outs]) for key in outs[0]}
        return average_frames(merged, counts)

    def empty_outputs(self, n: int = 0, **options: Any) -> dict[str, np.ndarray]:
        """``n`` rows of NaN for every output of :meth:`outputs` (``options``) — an empty
        batch when ``n`` is 0."""
        k = max(len(self.prob_labels), 1)
        return {
            key: np.full((n, k) if kind == "probs" else n, np.nan, np.float32)
            for key, kind in self.outputs(**options).items()
        }

    def predict_tensors(self, batch: dict[str, Any]) -> dict[str, Any]:
        """:meth:`predict` without the copy of its outputs to the host: a torch scorer returns
        tensors on its device, its kernels queued (no sync), so the caller can start the next
        batch first. Default: :meth:`predict` (numpy)."""
        return self.predict(batch)

    def predict_stacked(
        self,
        pixels: Any,
        counts: Any,
        batch_size: int = DEFAULT_BATCH_SIZE,
        per_frame: dict[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """:meth:`predict_items` of frames already stacked: ``pixels`` [N, ...] (numpy, or a
        tensor on the scorer's device), item i owning the next ``counts[i]`` frames;
        ``per_frame``: arrays of one row per frame beside ``pixels`` in each batch. Every frame
        scored as an image, ``batch_size`` at a time, outputs averaged over each item's frames
        (:func:`average_frames`); tensors on the device where :meth:`predict_tensors` gives
        them (no sync), else numpy. Imports no torch for a numpy scorer."""
        counts = np.asarray(counts, np.int64)
        outs = []
        for i in range(0, len(pixels), batch_size):
            batch = {key: v[i : i + batch_size] for key, v in (per_frame or {}).items()}
            outs.append(self.predict_tensors({**batch, "pixels": pixels[i : i + batch_size]}))
        if not outs:
            return self.empty_outputs(len(counts))
        merged = {key: concat_outputs([o[key] for o in outs]) for key in outs[0]}
        return average_frames(merged, counts)

    def item_input(self, item: Item) -> np.ndarray:
        """One normalised item (an image, or a video's frames) as :meth:`predict_items` takes
        it: each frame through the preprocessor, stacked [T, ...] — what the decode stage
        hands the scorer actor."""
        frames = item if isinstance(item, list) else [item]
        return np.stack([self.preprocess(f)["pixels"] for f in frames])

    def score_items(self, items: Sequence[Item], **options: Any) -> dict[str, np.ndarray]:
        """Scores plus per-item details of normalised items (PIL images; a list of PIL frames
        is one video): :meth:`item_input` then :meth:`predict_items` (``options`` go to it),
        as the pipeline scores them."""
        return self.predict_items([self.item_input(it) for it in items], **options)

    def score_details(
        self, x: Any, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> dict[str, Any]:
        """Scores plus per-item details (``probs`` over :attr:`prob_labels`, ...) of one item
        or a batch (see :mod:`vqpipe.scorers.inputs`). A batch gives arrays with one row per
        item; one item gives that row (``score`` a float). ``storage_options`` (default: the
        scorer's) are for URIs; ``options`` go to :meth:`predict_items`."""
        out, single = self._score(x, storage_options, options)
        if not single:
            return out
        return {k: float(v[0]) if np.ndim(v) == 1 else np.asarray(v[0]) for k, v in out.items()}

    def score(
        self, x: Any, *, storage_options: dict[str, Any] | None = None, **options: Any
    ) -> float | np.ndarray:
        """One item → its score (a float); a batch → one score per item, shape (N,)."""
        out, single = self._score(x, storage_options, options)
        if "score" not in out:
            raise ValueError(
                f"{self.name} scores several outputs ({', '.join(out)}): use score_details"
            )
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
        draft = getattr(self.preprocessor, "draft", None)  # decoded as the pipeline decodes
        items, single = as_items(x, storage_options, draft=draft)
        return self.score_items(items, **options), single

    @property
    def lower_better(self) -> bool:
        """Whether a lower score is better (pyiqa's name; always ``not higher_better``)."""
        return not self.higher_better

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


def frames_batch(frames: Sequence[Any]) -> Any:
    """Frames as one model batch: one array when they share a shape (every fixed-size
    preprocessor), else the list (a scorer that resizes inside its model, compare2score-lmm)."""
    shapes = {np.shape(f) for f in frames}
    return np.stack([np.asarray(f) for f in frames]) if len(shapes) == 1 else list(frames)


def concat_outputs(parts: Sequence[Any]) -> Any:
    """One output from its batches' pieces (torch tensors stay on their device)."""
    if len(parts) == 1:
        return parts[0]
    if is_tensor(parts[0]):
        import torch

        return torch.cat(list(parts))
    return np.concatenate(parts)


def as_numpy(outputs: dict[str, Any]) -> dict[str, np.ndarray]:
    """Outputs with any tensors copied to the host as numpy (float32 stays float32)."""
    return {k: v.cpu().numpy() if is_tensor(v) else np.asarray(v) for k, v in outputs.items()}


def average_frames(values: dict[str, Any], counts: Sequence[int]) -> dict[str, Any]:
    """Per-frame outputs (rows in item order) → per-item means over each item's ``counts``
    frames, summed in float64, float32 out; the one place frames are averaged (video scored
    by an image model). Images (one frame each) pass through; an item of no frames gives NaN.
    Numpy in, numpy out; tensors stay on their device (no sync)."""
    counts = np.asarray(counts, np.int64)
    if (counts == 1).all():  # images: one frame each, nothing to average
        return {
            k: v.float() if is_tensor(v) else np.asarray(v, np.float32) for k, v in values.items()
        }
    n = len(counts)
    owner = np.repeat(np.arange(n), counts)
    out = {}
    for key, v in values.items():  # per-item sums in one pass (a mask per item was O(n²))
        if is_tensor(v):
            out[key] = _average_tensor(v, owner, counts)
            continue
        v = np.asarray(v)
        sums = np.zeros((n, *v.shape[1:]), np.float64)
        np.add.at(sums, owner, v)
        with np.errstate(invalid="ignore", divide="ignore"):  # no frames: NaN
            out[key] = (sums / counts.reshape((-1,) + (1,) * (v.ndim - 1))).astype(np.float32)
    return out


def _average_tensor(values: torch.Tensor, owner: np.ndarray, counts: np.ndarray) -> torch.Tensor:
    """:func:`average_frames` of one tensor, on its device: the indices go over pinned memory
    without blocking (no stream sync)."""
    import torch

    def put(array: np.ndarray) -> torch.Tensor:
        return device_input(array, values.device)

    with torch.inference_mode():
        sums = values.new_zeros((len(counts), *values.shape[1:]), dtype=torch.float64)
        sums.index_add_(0, put(owner), values.double())
        div = put(counts.astype(np.float64)).reshape((-1,) + (1,) * (values.dim() - 1))
        return (sums / div).float()
