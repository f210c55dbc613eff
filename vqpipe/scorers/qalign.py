"""The Q-Align scorer: fused, batched level scoring on the native mPLUG-Owl2.

One forward per batch, no ``generate``: the text before the image placeholder is encoded once
and its KV cache shared by every sequence of every batch; a batch holds the visual tokens of
all its images (or all frames of each video, spliced at one placeholder) followed by the text
after the placeholder; only the last position goes through the final norm, and only the five
level rows of the LM head are computed. Sequences of different length (videos) are padded
between the cached prefix and the visual tokens, with the mask and positions skipping the
padding, so a batched result equals the one-by-one result.

``score`` is on Q-Align's 1..5 scale (Σ p_i · i over bad..excellent); the older GitHub scorer's
0..1 scale is ``(score − 1) / 4``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.defaults import DEFAULT_BATCH_SIZE
from vqpipe.media.decode import even_subset
from vqpipe.prompts import QALIGN_TASKS
from vqpipe.scorers._owl2 import Owl2Scorer
from vqpipe.scoring.base import concat_outputs, inference_mode
from vqpipe.scoring.levels import LEVELS, level_probs, level_score

if TYPE_CHECKING:  # torch and the model load where the model is built or run
    import torch

    from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM
    from vqpipe.models.mplug_owl2.llama import KVCache

DEFAULT_CHECKPOINT = "q-future/one-align"
TASKS = QALIGN_TASKS  # task → (what is rated, what the input is called) in the official prompt


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


class QAlignScorer(Owl2Scorer):
    """Q-Align / OneAlign: ``task`` = quality | aesthetics (images) | video.

    Options: ``max_frames`` (frames per video sequence; default what fits in the context,
    ~31 for 2048 positions, evenly thinned beyond it), ``prefix_cache`` (share the prompt
    prefix's KV cache; off = the same math without it), ``storage_options`` for fsspec URIs,
    ``exact_preprocessing`` (default True, the official path; False: downscale-on-decode, see
    :class:`~vqpipe.scorers._owl2.Owl2Preprocessor`). ``checkpoint=None`` uses
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
        task: str = "quality",
        max_frames: int | None = None,
        prefix_cache: bool = True,
        storage_options: dict[str, Any] | None = None,
        model: MPLUGOwl2ForCausalLM | None = None,
        exact_preprocessing: bool = True,
    ) -> None:
        import torch

        from vqpipe.models.mplug_owl2 import IMAGE_TOKEN_INDEX

        super().__init__(checkpoint, device, dtype, storage_options, model, exact_preprocessing)
        self.task = task
        self.prompt = qalign_prompt(task)
        config = self.model.config
        ids = self.tokenizer.encode_prompt(self.prompt)
        if ids.count(IMAGE_TOKEN_INDEX) != 1:
            raise ValueError(f"the prompt must hold one image placeholder: {self.prompt!r}")
        cut = ids.index(IMAGE_TOKEN_INDEX)
        self.prompt_ids = ids
        self.prefix_ids = torch.tensor(ids[:cut], device=self.device)
        self.suffix_ids = torch.tensor(ids[cut + 1 :], device=self.device)
        # Official preferential ids: the first piece of each word (bad..excellent here).
        self.level_ids = self.word_ids(LEVELS)
        text_tokens = len(ids) - 1
        fit = (config.max_position_embeddings - text_tokens) // config.tokens_per_image
        self.max_frames = int(max_frames) if max_frames else max(1, fit)
        self.prefix_cache = prefix_cache
        self._cache: KVCache | None = None

    @classmethod
    def check_options(cls, task: str = "quality", **options: Any) -> None:
        qalign_prompt(task)
        super().check_options(**options)

    # ------------------------------------------------------------------ CPU side
    def preprocess(self, item: Any) -> dict[str, np.ndarray]:
        """An image → uint8 [1, 3, S, S]; a frame list → [T, 3, S, S] (T ≤ ``max_frames``)."""
        frames = list(item) if isinstance(item, (list, tuple)) else [item]
        if not frames:
            raise ValueError("a video item needs at least one frame")
        frames = [frames[i] for i in even_subset(len(frames), self.max_frames)]
        return {"pixels": np.stack([self.preprocessor(f)["pixels"] for f in frames])}

    def collate(self, items: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """Frames of all items in one array + ``frames`` per item (ragged videos)."""
        if not items:
            raise ValueError("qalign: cannot collate an empty batch")
        pixels = [np.asarray(it["pixels"]) for it in items]
        pixels = [p[None] if p.ndim == 3 else p for p in pixels]
        return {
            "pixels": np.concatenate(pixels),
            "frames": np.array([len(p) for p in pixels], np.int64),
        }

    # ------------------------------------------------------------------ accelerator side
    def predict(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``pixels`` uint8 [N, 3, S, S] and optional ``frames`` [B] (Σ = N; default one frame
        per sequence) → ``score`` [B] on 1..5 and ``probs`` [B, 5] (bad..excellent)."""
        return {key: v.cpu().numpy() for key, v in self.predict_tensors(batch).items()}

    def predict_tensors(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """:meth:`predict`'s outputs on the device, not yet copied to the host."""
        pixels = batch["pixels"]
        frames = batch.get("frames")
        counts = [1] * len(pixels) if frames is None else [int(f) for f in frames]
        logits = self.level_logits(pixels, counts).float()
        return {"score": level_score(logits), "probs": level_probs(logits)}

    def predict_stacked(self, pixels: Any, counts: Any, batch_size: int) -> dict[str, Any]:
        """Video task: each item's frames (evenly thinned to ``max_frames``) are one sequence,
        ``batch_size`` items per forward; image tasks: as :meth:`Scorer.predict_stacked`."""
        if self.task != "video":
            return super().predict_stacked(pixels, counts, batch_size)
        counts = np.asarray(counts, np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)])
        outs = []
        for lo in range(0, len(counts), batch_size):
            hi = min(lo + batch_size, len(counts))
            keep = [
                starts[i] + np.array(even_subset(int(counts[i]), self.max_frames), np.int64)
                for i in range(lo, hi)
            ]
            kept = np.array([len(k) for k in keep], np.int64)
            if kept.sum() == starts[hi] - starts[lo]:  # nothing thinned: a view, no gather
                chunk = pixels[starts[lo] : starts[hi]]
            else:
                chunk = pixels[_index_like(np.concatenate(keep), pixels)]
            outs.append(self.predict_tensors({"pixels": chunk, "frames": kept}))
        if not outs:
            return {"score": np.zeros(0, np.float32), "probs": np.zeros((0, 5), np.float32)}
        return {key: concat_outputs([o[key] for o in outs]) for key in ("score", "probs")}

    def predict_items(
        self, inputs: Sequence[np.ndarray], batch_size: int = DEFAULT_BATCH_SIZE
    ) -> dict[str, np.ndarray]:
        """Video task: each item's frames are one sequence; image tasks: frames are scored as
        images and averaged per item."""
        if self.task != "video":
            return super().predict_items(inputs, batch_size)
        outs = []
        for start in range(0, len(inputs), batch_size):
            chunk = [self._cap(np.asarray(x)) for x in inputs[start : start + batch_size]]
            outs.append(
                self.predict(
                    {"pixels": np.concatenate(chunk), "frames": np.array([len(x) for x in chunk])}
                )
            )
        if not outs:
            return {"score": np.zeros(0, np.float32), "probs": np.zeros((0, 5), np.float32)}
        return {key: np.concatenate([o[key] for o in outs]) for key in ("score", "probs")}

    def score_items(self, items: Sequence[Any]) -> dict[str, np.ndarray]:
        """Scores and level probabilities; a frame list is one video item."""
        return self.predict_items([self.preprocess(it)["pixels"] for it in items])

    def _cap(self, frames: np.ndarray) -> np.ndarray:
        return frames[even_subset(len(frames), self.max_frames)]

    @inference_mode
    def level_logits(
        self, pixels: np.ndarray | torch.Tensor, frames: Sequence[int]
    ) -> torch.Tensor:
        """Logits of the five level words (bad..excellent) at the last position, [B, 5]."""
        import torch

        model, device = self.model, self.device
        feats = model.encode_images(self.to_input(pixels))  # [N, tokens, D]
        per_item = [f.flatten(0, 1) for f in feats.split(list(frames), dim=0)]
        lengths = [len(f) for f in per_item]
        b, visual_len, d = len(per_item), max(lengths), feats.shape[-1]
        embed = model.model.embed_tokens
        suffix = embed(self.suffix_ids)
        embeds = feats.new_zeros(b, visual_len + len(suffix), d)
        valid = torch.ones(b, visual_len + len(suffix), dtype=torch.bool, device=device)
        for i, f in enumerate(per_item):
            embeds[i, visual_len - len(f) : visual_len] = f
            valid[i, : visual_len - len(f)] = False
        embeds[:, visual_len:] = suffix
        n_prefix = len(self.prefix_ids)
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
                past_key_values=self._prefix_cache(),
                last_only=True,
            )
        else:  # the same math without the shared cache
            prefix = embed(self.prefix_ids)[None].expand(b, -1, -1)
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

    def _prefix_cache(self) -> KVCache | None:
        if not len(self.prefix_ids):
            return None
        if self._cache is None:
            prefix = self.model.model.embed_tokens(self.prefix_ids)[None]
            _, self._cache = self.model.model.decode(prefix, 0, use_cache=True, last_only=True)
        return self._cache

    def metadata(self) -> dict[str, Any]:
        return {
            **super().metadata(),
            "task": self.task,
            "prompt": self.prompt,
            "max_frames": self.max_frames,
            "score_scale": "1..5 (sum of p_i * i over bad..excellent)",
        }


def _index_like(index: np.ndarray, pixels: Any) -> Any:
    """``index`` for indexing ``pixels``: a tensor on its device (a tensor), else as is."""
    if getattr(pixels, "is_cuda", False):
        import torch

        return torch.from_numpy(index).pin_memory().to(pixels.device, non_blocking=True)
    return index
