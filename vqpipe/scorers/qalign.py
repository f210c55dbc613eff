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
from vqpipe.prompts import QALIGN_TASKS
from vqpipe.scorers._owl2 import Owl2Scorer
from vqpipe.scoring.base import average_frames, inference_mode
from vqpipe.scoring.levels import LEVELS, level_probs, level_score

if TYPE_CHECKING:  # torch and the model load where the model is built or run
    import torch

    from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM
    from vqpipe.models.mplug_owl2.llama import KVCache

DEFAULT_CHECKPOINT = "q-future/one-align"
TASKS = QALIGN_TASKS  # task → (what is rated, what the input is called) in the official prompt


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
            raise ValueError(f"tasks={tasks!r}: name one or more of {', '.join(TASKS)}")
        if len(set(names)) != len(names):
            raise ValueError(f"tasks={tasks!r}: a task is named twice")
    for name in names:
        qalign_prompt(name)
    return names


def qalign_prompt(task: str) -> str:
    """The official OneAlign prompt for ``task`` (quality | aesthetics | video)."""
    try:
        what, medium = TASKS[task]
    except KeyError:
        raise ValueError(f"unknown Q-Align task {task!r}; use one of {sorted(TASKS)}") from None
    return (
        f"USER: How would you rate the {what} of this {medium}?\n<|image|>\n"
        f"ASSISTANT: The {what} of the {medium} is"
    )


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
    def predict_items(
        self, inputs: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> dict[str, np.ndarray]:
        """Every task from one visual encoding per frame. Image tasks: each frame is a
        sequence, its outputs averaged per item (:func:`average_frames`); video: each item's
        frames, evenly thinned to ``max_frames`` (here only), are one sequence.

        Chunks: ``batch_size`` frames for image tasks alone; with the video task, up to
        ``batch_size`` items of one thinned frame count (:func:`equal_length_batches`: no
        sequence is padded, so no mask tensor is built and SDPA may use its flash kernels; a
        sequence is never split), outputs back in input order."""
        import torch

        inputs = [np.asarray(x) for x in inputs]
        order = np.arange(len(inputs))
        if "video" in self.tasks:  # whole items, grouped by their thinned frame count
            kept = [min(len(x), self.max_frames) for x in inputs]
            groups = equal_length_batches(kept, batch_size)
            order = np.array([i for g in groups for i in g], np.int64)
            chunks = [[inputs[i] for i in g] for g in groups]
        else:  # frames, each an item of its own: averaged per item at the end
            frames = [x[t : t + 1] for x in inputs for t in range(len(x))]
            chunks = [frames[i : i + batch_size] for i in range(0, len(frames), batch_size)]
        logits: dict[str, list[torch.Tensor]] = {t: [] for t in self.tasks}
        for chunk in chunks:
            for task, part in self._chunk_logits(chunk).items():
                logits[task].append(part)
        restore = np.empty_like(order)  # rows computed in ``order`` → input order
        restore[order] = np.arange(len(order))
        out: dict[str, np.ndarray] = {}
        for task in self.tasks:
            if not logits[task]:
                rows = {"score": np.zeros(0, np.float32), "probs": np.zeros((0, 5), np.float32)}
            else:
                rows = self._level_outputs(torch.cat(logits[task]))
            if task != "video":
                rows = average_frames(rows, [len(inputs[i]) for i in order])
            out.update({self.output_name(task, k): v[restore] for k, v in rows.items()})
        return out

    def _chunk_logits(self, chunk: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Each task's level logits of a chunk of items ([T, ...] frames each), every frame
        through the vision tower once: image tasks per frame, video per item."""
        import torch

        image_tasks = [t for t in self.tasks if t != "video"]
        out = {}
        if image_tasks:
            feats = self.encode(np.concatenate(chunk))
            for task in image_tasks:
                out[task] = self.logits_from_features(feats, [1] * len(feats), task)
        if "video" in self.tasks:
            keep = [np.asarray(even_subset(len(x), self.max_frames), np.int64) for x in chunk]
            if image_tasks:  # the kept frames' features, already encoded
                starts = np.cumsum([0] + [len(x) for x in chunk[:-1]])
                rows = np.concatenate([s + k for s, k in zip(starts, keep, strict=True)])
                video = feats[torch.as_tensor(rows, device=feats.device)]
            else:  # only the kept frames go through the vision tower
                video = self.encode(
                    np.concatenate([x[k] for x, k in zip(chunk, keep, strict=True)])
                )
            out["video"] = self.logits_from_features(video, [len(k) for k in keep], "video")
        return out

    @staticmethod
    def _level_outputs(logits: torch.Tensor) -> dict[str, np.ndarray]:
        logits = logits.float()
        return {
            "score": level_score(logits).cpu().numpy(),
            "probs": level_probs(logits).cpu().numpy(),
        }

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
        embed = model.model.embed_tokens
        suffix = embed(prompt.suffix_ids)
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
            hidden, _ = model.model.decode(
                embeds,
                visual_len,  # the first visual_len positions are visual (padding is masked)
                attention_mask=key_mask,
                position_ids=positions,
                past_key_values=self._prefix_cache(prompt),
                last_only=True,
            )
        else:  # the same math without the shared cache
            prefix = embed(prompt.prefix_ids)[None].expand(b, -1, -1)
            modality = torch.zeros(b, n_prefix + embeds.shape[1], dtype=torch.long, device=device)
            modality[:, n_prefix : n_prefix + visual_len] = 1
            full_positions = torch.cat(
                [torch.arange(n_prefix, device=device)[None].expand(b, -1), positions], dim=1
            )
            key_mask = torch.cat([valid.new_ones(b, n_prefix), valid], dim=1) if padded else None
            hidden, _ = model.model.decode(
                torch.cat([prefix, embeds], dim=1),
                modality,
                attention_mask=key_mask,
                position_ids=full_positions,
                last_only=True,
            )
        rows = model.lm_head.weight[self.level_ids]  # only the five level rows of the head
        return hidden[:, -1] @ rows.T

    def _prefix_cache(self, prompt: TaskPrompt) -> KVCache | None:
        if not len(prompt.prefix_ids):
            return None
        if prompt.cache is None:
            prefix = self.model.model.embed_tokens(prompt.prefix_ids)[None]
            _, prompt.cache = self.model.model.decode(prefix, 0, use_cache=True, last_only=True)
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
