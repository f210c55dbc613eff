"""The Q-Align scorer: fused, batched level scoring on the native mPLUG-Owl2.

One forward per batch, no ``generate``: the text before the image placeholder is encoded once
and its KV cache shared by every sequence of every batch; a batch holds the visual tokens of
all its images (or all frames of each video, spliced at one placeholder) followed by the text
after the placeholder; only the last position goes through the final norm, and only the five
level rows of the LM head are computed. The vision tower runs ``vision_chunk`` frames per call.
Videos are batched by frame count, so a forward holds sequences of one length and passes no
mask tensor (flash-eligible); sequences of different length given to :meth:`level_logits`
are padded between the cached prefix and the visual tokens, with the mask and positions
skipping the padding, so a batched result equals the one-by-one result.

Several tasks (``tasks=("quality", "aesthetics")``) share one visual encoding: each frame goes
through the vision tower and abstractor once (:meth:`QAlignScorer.encode`, about 44% of an
image's FLOPs at 448 px), and only the text decode runs per task
(:meth:`QAlignScorer.logits_from_features`).

``score`` is on Q-Align's 1..5 scale (Σ p_i · i over bad..excellent); the older GitHub scorer's
0..1 scale is ``(score − 1) / 4``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.defaults import DEFAULT_BATCH_SIZE
from vqpipe.media.decode import even_subset
from vqpipe.prompts import QALIGN_TASKS, qalign_prompt
from vqpipe.quality_math.levels import LEVELS, level_probs, level_score
from vqpipe.scorers._owl2 import Owl2Scorer
from vqpipe.scorers.base import average_frames, inference_mode
from vqpipe.scorers.transfer import device_input

if TYPE_CHECKING:  # torch and the model load where the model is built or run
    import torch

    from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM
    from vqpipe.models.mplug_owl2.llama import KVCache

DEFAULT_CHECKPOINT = "q-future/one-align"


def check_tasks(
    task: str | None = None, tasks: str | Sequence[str] | None = None
) -> tuple[str, ...]:
    """The scorer's tasks: ``task`` (default quality) or ``tasks`` (a list, or one string with
    commas: ``"quality,aesthetics"``), never both; each known, none twice. ``video`` may join
    image tasks: every frame is encoded once and serves both."""
    if tasks is None:
        names: tuple[str, ...] = ("quality" if task is None else task,)
    elif task is not None:
        raise ValueError("give task= or tasks=, not both")
    else:
        parts = tasks.split(",") if isinstance(tasks, str) else list(tasks)
        names = tuple(str(t).strip() for t in parts)
        if not names or not all(names):
            raise ValueError(f"tasks={tasks!r}: name one or more of {', '.join(QALIGN_TASKS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks={tasks!r}: a task is named twice")
    for name in names:
        qalign_prompt(name)
    return names


def equal_length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by length, each group cut into batches of at most ``batch_size``
    (groups in order of length, indices in input order within a group)."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        groups.setdefault(int(n), []).append(i)
    step = max(1, int(batch_size))
    return [
        group[start : start + step]
        for _, group in sorted(groups.items())
        for start in range(0, len(group), step)
    ]


@dataclass
class TaskPrompt:
    """One task's prompt, cut at its image placeholder, and its prefix's KV cache."""

    text: str
    ids: list[int]  # the full prompt, the placeholder as IMAGE_TOKEN_INDEX
    prefix_ids: torch.Tensor  # before the placeholder
    suffix_ids: torch.Tensor  # after it
    cache: KVCache | None = None


class QAlignScorer(Owl2Scorer):
    """Q-Align / OneAlign: ``task`` = quality | aesthetics (images) | video.

    ``tasks`` (instead of ``task``): several prompts from one visual encoding per frame, e.g.
    ``tasks=("quality", "aesthetics")`` (``"quality,aesthetics"`` on the CLI); the outputs are
    then named per task, ``<task>_score`` and ``<task>_probs`` (a pool's columns
    ``<column>_<task>_score``), also for one task. ``video`` may join image tasks (each frame
    is encoded once; the video task reads its thinned frames' features).

    Image tasks score every frame of a video as an image and average per item; the video task
    makes each item's frames one sequence. Options: ``max_frames`` (frames per video-task
    sequence; default what fits in the context, ~31 for 2048 positions, evenly thinned beyond
    it), ``prefix_cache`` (share the prompt prefix's KV cache; off = the same math without
    it), ``storage_options`` for fsspec URIs, ``exact_preprocessing`` (default True, the
    official path; False: downscale-on-decode, see
    :class:`~vqpipe.scorers._owl2.Owl2Preprocessor`), ``vision_chunk`` and ``compile`` (see
    :class:`~vqpipe.scorers._owl2.Owl2Scorer`). ``checkpoint=None`` uses
    ``q-future/one-align`` (needs the hub, or a local copy).
    """

    name = "qalign"
    version = "1"
    default_hub_id = DEFAULT_CHECKPOINT
    media = frozenset({"image", "video"})
    score_range = (1.0, 5.0)
    prob_labels = LEVELS

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        task: str | None = None,
        max_frames: int | None = None,
        prefix_cache: bool = True,
        storage_options: dict[str, Any] | None = None,
        model: MPLUGOwl2ForCausalLM | None = None,
        exact_preprocessing: bool = True,
        tasks: str | Sequence[str] | None = None,
        vision_chunk: int | None = None,
        compile: bool | str = False,
    ) -> None:
        self.tasks = check_tasks(task, tasks)
        self.per_task = tasks is not None  # outputs named <task>_score, <task>_probs
        super().__init__(
            checkpoint,
            device,
            dtype,
            storage_options,
            model,
            exact_preprocessing,
            vision_chunk=vision_chunk,
            compile=compile,
        )
        self.prompts = {t: self._task_prompt(t) for t in self.tasks}
        self.task = "video" if "video" in self.tasks else self.tasks[0]
        first = self.prompts[self.task]  # the (video) task's prompt: the attributes of old
        self.prompt, self.prompt_ids = first.text, first.ids
        self.prefix_ids, self.suffix_ids = first.prefix_ids, first.suffix_ids
        # Official preferential ids: the first piece of each word (bad..excellent here).
        self.level_ids = self.word_ids(LEVELS)
        config = self.model.config
        fit = (config.max_position_embeddings - (len(first.ids) - 1)) // config.tokens_per_image
        self.max_frames = int(max_frames) if max_frames else max(1, fit)
        self.prefix_cache = prefix_cache

    def _task_prompt(self, task: str) -> TaskPrompt:
        import torch

        from vqpipe.models.mplug_owl2 import IMAGE_TOKEN_INDEX

        text = qalign_prompt(task)
        ids = self.tokenizer.encode_prompt(text)
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise ValueError(f"the prompt must hold one image placeholder: {text!r}")
        cut = ids.index(IMAGE_TOKEN_INDEX)
        prefix = torch.tensor(ids[:cut], device=self.device)
        return TaskPrompt(text, ids, prefix, torch.tensor(ids[cut + 1 :], device=self.device))

    @classmethod
    def check_options(
        cls, task: str | None = None, tasks: str | Sequence[str] | None = None, **options: Any
    ) -> None:
        check_tasks(task, tasks)
        super().check_options(**options)

    @classmethod
    def outputs(
        cls, task: str | None = None, tasks: str | Sequence[str] | None = None, **_: Any
    ) -> dict[str, str]:
        """``score`` and ``probs``; with ``tasks``, ``<task>_score`` and ``<task>_probs`` of
        each task."""
        if tasks is None:
            return super().outputs()
        kinds = {"score": "float", "probs": "probs"}
        return {f"{t}_{k}": kind for t in check_tasks(task, tasks) for k, kind in kinds.items()}

    # ------------------------------------------------------------------ accelerator side
    def predict_stacked(
        self,
        pixels: Any,
        counts: Any,
        batch_size: int = DEFAULT_BATCH_SIZE,
        per_frame: dict[str, np.ndarray] | None = None,
    ) -> dict[str, Any]:
        """Every task from one visual encoding per frame; ``pixels`` [N, 3, S, S] (numpy, or a
        tensor on the device), item i owning the next ``counts[i]`` frames. Image tasks: each
        frame is a sequence, its outputs averaged per item (:func:`average_frames`); video:
        each item's frames, evenly thinned to ``max_frames`` (here only), are one sequence.
        Outputs are tensors on the device (no sync; :meth:`predict_items` gives numpy).

        Chunks: ``batch_size`` frames for image tasks alone; with the video task, up to
        ``batch_size`` items of one thinned frame count (:func:`equal_length_batches`: no
        sequence is padded, so no mask tensor is built and SDPA may use its flash kernels; a
        sequence is never split), outputs back in input order."""
        import torch

        counts = np.asarray(counts, np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        order = np.arange(len(counts))
        if "video" in self.tasks:  # whole items, grouped by their thinned frame count
            groups = equal_length_batches(np.minimum(counts, self.max_frames), batch_size)
            order = np.array([i for g in groups for i in g], np.int64)
            chunks = [
                (g, np.concatenate([np.arange(starts[i], starts[i + 1]) for i in g]))
                for g in groups
            ]
        else:  # frames, each an item of its own: averaged per item at the end
            chunks = [
                (None, np.arange(i, min(i + batch_size, len(pixels))))
                for i in range(0, len(pixels), batch_size)
            ]
        logits: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for items, rows in chunks:
            for task, part in self._chunk_logits(pixels, rows, counts, items).items():
                logits[task].append(part)
        out: dict[str, Any] = {}
        for task in self.tasks:
            if not logits[task]:
                rows_out = {"score": np.zeros(0, np.float32), "probs": np.zeros((0, 5), np.float32)}
            else:
                rows_out = self._level_outputs(torch.cat(logits[task]))
            if task != "video":
                rows_out = average_frames(rows_out, counts[order])
            if not (order == np.arange(len(order))).all():  # computed in ``order`` → input order
                restore = np.empty_like(order)
                restore[order] = np.arange(len(order))
                rows_out = {k: v[_index_like(restore, v)] for k, v in rows_out.items()}
            out.update({self.output_name(task, k): v for k, v in rows_out.items()})
        return out

    def _chunk_logits(
        self, pixels: Any, rows: np.ndarray, counts: np.ndarray, items: list[int] | None
    ) -> dict[str, torch.Tensor]:
        """Each task's level logits of a chunk: ``rows`` of ``pixels`` (every frame through the
        vision tower once); image tasks per frame, video per item of ``items``."""
        image_tasks = [t for t in self.tasks if t != "video"]
        out = {}
        chunk = _rows_of(pixels, rows)
        if image_tasks:
            feats = self.encode(chunk)
            for task in image_tasks:
                out[task] = self.logits_from_features(feats, [1] * len(feats), task)
        if "video" in self.tasks:
            assert items is not None
            keep = [
                np.asarray(even_subset(int(counts[i]), self.max_frames), np.int64) for i in items
            ]
            offsets = np.concatenate([[0], np.cumsum([counts[i] for i in items])[:-1]])
            local = np.concatenate([o + k for o, k in zip(offsets, keep, strict=True)])
            if image_tasks:  # the kept frames' features, already encoded
                video = feats[_index_like(local, feats)]
            else:  # only the kept frames go through the vision tower
                video = self.encode(_rows_of(chunk, local))
            out["video"] = self.logits_from_features(video, [len(k) for k in keep], "video")
        return out

    @staticmethod
    def _level_outputs(logits: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = logits.float()
        return {"score": level_score(logits), "probs": level_probs(logits)}

    def output_name(self, task: str, key: str) -> str:
        """``score`` / ``probs`` of ``task`` as :meth:`predict_items` names it."""
        return f"{task}_{key}" if self.per_task else key

    @inference_mode
    def encode(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Visual tokens of each frame, [N, tokens, D] (vision tower + abstractor): what every
        task's decode reads."""
        return self.encode_images(pixels)

    @inference_mode
    def level_logits(
        self, pixels: np.ndarray | torch.Tensor, frames: Sequence[int]
    ) -> torch.Tensor:
        """Logits of the five level words (bad..excellent) at the last position, [B, 5], of
        :attr:`task`: ``frames`` frames of ``pixels`` per sequence."""
        return self.logits_from_features(self.encode(pixels), frames, self.task)

    @inference_mode
    def logits_from_features(
        self, feats: torch.Tensor, frames: Sequence[int], task: str | None = None
    ) -> torch.Tensor:
        """:meth:`level_logits` of ``task`` (default :attr:`task`) from the frames' visual
        tokens ``feats`` [N, tokens, D] (:meth:`encode`)."""
        import torch

        model, device = self.model, self.device
        prompt = self.prompts[task or self.task]
        per_item = [f.flatten(0, 1) for f in feats.split(list(frames), dim=0)]
        lengths = [len(f) for f in per_item]
        b, visual_len, d = len(per_item), max(lengths), feats.shape[-1]
        suffix = model.embed(prompt.suffix_ids)
        embeds = feats.new_zeros(b, visual_len + len(suffix), d)
        valid = torch.ones(b, visual_len + len(suffix), dtype=torch.bool, device=device)
        for i, f in enumerate(per_item):
            embeds[i, visual_len - len(f) : visual_len] = f
            valid[i, : visual_len - len(f)] = False
        embeds[:, visual_len:] = suffix
        n_prefix = len(prompt.prefix_ids)
        positions = n_prefix + (valid.long().cumsum(1) - 1).clamp(min=0)
        padded = min(lengths) != visual_len
        if self.prefix_cache or n_prefix == 0:
            key_mask = None
            if padded:
                key_mask = torch.cat([valid.new_ones(b, n_prefix), valid], dim=1)
            hidden = model.decode(
                embeds,
                visual_len,  # the first visual_len positions are visual (padding is masked)
                attention_mask=key_mask,
                position_ids=positions,
                past_key_values=self._prefix_cache(prompt),
                last_only=True,
            )
        else:  # the same math without the shared cache
            prefix = model.embed(prompt.prefix_ids)[None].expand(b, -1, -1)
            modality = torch.zeros(b, n_prefix + embeds.shape[1], dtype=torch.long, device=device)
            modality[:, n_prefix : n_prefix + visual_len] = 1
            full_positions = torch.cat(
                [torch.arange(n_prefix, device=device)[None].expand(b, -1), positions], dim=1
            )
            key_mask = torch.cat([valid.new_ones(b, n_prefix), valid], dim=1) if padded else None
            hidden = model.decode(
                torch.cat([prefix, embeds], dim=1),
                modality,
                attention_mask=key_mask,
                position_ids=full_positions,
                last_only=True,
            )
        return model.token_logits(hidden, self.level_ids)  # the five level rows of the head

    def _prefix_cache(self, prompt: TaskPrompt) -> KVCache | None:
        if not len(prompt.prefix_ids):
            return None
        if prompt.cache is None:
            prompt.cache = self.model.decode_prefix(self.model.embed(prompt.prefix_ids)[None])
        return prompt.cache

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "task": self.task,
            "prompt": self.prompt,
            **({"tasks": {t: p.text for t, p in self.prompts.items()}} if self.per_task else {}),
            "max_frames": self.max_frames,
            "score_scale": "1..5 (sum of p_i * i over bad..excellent)",
        }


def _index_like(index: np.ndarray, pixels: Any) -> Any:
    """``index`` for indexing ``pixels``: a tensor on its device (a tensor), else as is."""
    if getattr(pixels, "is_cuda", False):
        return device_input(index, pixels.device)
    return index


def _rows_of(pixels: Any, rows: np.ndarray) -> Any:
    """``pixels[rows]``: a view when the rows are one consecutive run, else a gather."""
    if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and (np.diff(rows) == 1).all():
        return pixels[int(rows[0]) : int(rows[-1]) + 1]
    return pixels[_index_like(rows, pixels)]
