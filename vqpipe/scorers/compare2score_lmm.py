"""Zero-shot Compare2Score for general LMMs: any transformers image-text-to-text model whose
processor takes two images (LLaVA-style) compares each test image with the anchors; the five
comparison words' logits at the answer position give the soft comparisons, and the anchor
matrix + Thurstone MAP turn them into a score — the probability-matrix inference that the
Compare2Score paper shows lifts zero-shot LMMs.

``create_scorer("compare2score-lmm", checkpoint="llava-hf/llava-1.5-7b-hf")`` (a local dir,
fsspec URI or hub id). The question follows the official Compare2Score wording; the model's
chat template is used when its processor has one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from vqpipe.io.checkpoints import checkpoint_identity, resolve_checkpoint
from vqpipe.media.image import to_rgb
from vqpipe.prompts import COMPARE_ANSWER as ANSWER_PREFIX
from vqpipe.prompts import COMPARE_QUESTION as QUESTION
from vqpipe.quality_math.comparison import COMPARISON_LEVELS
from vqpipe.scorers.anchor_comparison import (
    EXTRA_OUTPUTS,
    SCORE_RANGE,
    AnchorComparison,
    AnchorOptions,
)
from vqpipe.scorers.anchor_sets import AnchorSet
from vqpipe.scorers.base import Scorer, inference_mode

if TYPE_CHECKING:
    import torch


class RGBArray:
    """CPU half: a PIL image → uint8 [H, W, 3] (RGB, EXIF-upright), long side ≤ ``max_side``."""

    def __init__(self, max_side: int = 1024) -> None:
        self.max_side = int(max_side)

    def __call__(self, image: Image.Image) -> dict[str, np.ndarray]:
        image = to_rgb(image)
        if max(image.size) > self.max_side:
            image = image.copy()
            image.thumbnail((self.max_side, self.max_side), Image.Resampling.BICUBIC)
        return {"pixels": np.asarray(image, dtype=np.uint8)}


def _pil(image: Any) -> Image.Image:
    """A PIL image, or a uint8 [H, W, 3] array (the CPU half's output) as one."""
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


class LMMCompare2ScoreScorer(Scorer):
    """Compare2Score's anchor-matrix inference on a transformers image-text-to-text model.
    ``anchors``, ``anchor_matrix``, ``output``, ``temperature`` and ``cache_dir``: see
    :class:`~vqpipe.scorers.anchor_comparison.AnchorOptions`; ``pairs_per_forward``: image
    pairs per model call."""

    name = "compare2score-lmm"
    version = "1"
    score_range = SCORE_RANGE
    extra_outputs = EXTRA_OUTPUTS
    stacks_frames = False  # images of their own sizes, as PIL images to the processor

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        anchors: str | os.PathLike | AnchorSet | None = None,
        anchor_matrix: Sequence[Sequence[float]] | np.ndarray | None = None,
        output: str = "thurstone",
        temperature: float = 1.0,
        pairs_per_forward: int = 16,
        cache_dir: str | os.PathLike | None = None,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if checkpoint is None:
            raise ValueError("compare2score-lmm needs checkpoint= (a transformers LMM)")
        options = AnchorOptions(anchors, anchor_matrix, output, temperature, cache_dir)
        super().__init__(os.fspath(checkpoint), device, dtype)
        self.storage_options = storage_options
        directory = resolve_checkpoint(checkpoint, storage_options=storage_options)
        self.checkpoint_fingerprint = checkpoint_identity(checkpoint, storage_options)
        self.processor = AutoProcessor.from_pretrained(directory)
        self.model = AutoModelForImageTextToText.from_pretrained(directory, dtype=self.dtype)
        self.model = self.model.to(self.device).eval()
        tokenizer = self.processor.tokenizer
        tokenizer.padding_side = "left"  # the answer position is the last one of every row
        ids = []
        for word in COMPARISON_LEVELS:
            pieces = tokenizer(word, add_special_tokens=False).input_ids
            if len(pieces) != 1:  # try the word with a leading space (SentencePiece / BPE)
                pieces = tokenizer(" " + word, add_special_tokens=False).input_ids[-1:]
            ids.append(pieces[0])
        self.word_ids_ = torch.tensor(ids, device=self.device)
        self.text = self._prompt()
        self.pairs_per_forward = int(pairs_per_forward)
        self.temperature = options.temperature
        self.anchors = options.anchor_set()
        self._anchor_images = self.anchors.images()
        self.preprocessor = RGBArray()
        self.comparison = AnchorComparison(
            options,
            self.anchors,
            lambda inputs: self.comparison_logits(inputs),  # looked up per call
            self._anchor_images,
            self.checkpoint_fingerprint,
            (type(self).__name__, str(self.dtype)),
        )
        self.anchor_matrix = self.comparison.matrix
        self.prob_labels = self.comparison.labels

    def _prompt(self) -> str:
        image = getattr(self.processor, "image_token", "<image>")
        if getattr(self.processor, "chat_template", None):
            messages = [
                {
                    "role": "user",
                    "content": [
                        {"type": "image"},
                        {"type": "image"},
                        {"type": "text", "text": QUESTION},
                    ],
                }
            ]
            head = self.processor.apply_chat_template(messages, add_generation_prompt=True)
            return f"{head}{ANSWER_PREFIX}"
        return f"USER: {image} {image} {QUESTION}\nASSISTANT: {ANSWER_PREFIX}"

    @classmethod
    def make_preprocessor(cls, **_: Any) -> RGBArray:
        return RGBArray()

    def predict(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Test images → ``score``, ``thurstone``, ``score_100`` [B], ``probs`` [B, m]."""
        return self.comparison.predict(batch["pixels"])

    @inference_mode
    def comparison_logits(self, inputs: Sequence[Any]) -> torch.Tensor:
        """[B, m, 5] logits of the comparison words; anchor first, test image second."""
        tests = [_pil(im) for im in inputs]
        pairs = [(a, t) for t in tests for a in self._anchor_images]
        return self._logits_of_pairs(pairs).view(len(tests), len(self._anchor_images), -1)

    @inference_mode
    def pair_logits(
        self, images: Sequence[Any], first: Sequence[int], second: Sequence[int]
    ) -> torch.Tensor:
        """[N, 5] logits of the comparison words for given pairs: ``images[first[n]]`` first,
        ``images[second[n]]`` second. Every pair is one full forward: the transformers model
        takes pixel values per sequence, so images and prefixes are not shared here."""
        pil = [_pil(im) for im in images]
        return self._logits_of_pairs([(pil[f], pil[s]) for f, s in zip(first, second, strict=True)])

    def _logits_of_pairs(self, pairs: Sequence[tuple[Image.Image, Image.Image]]) -> torch.Tensor:
        """[N, 5]: the answer position's word logits of (first, second) image pairs, in
        forwards of ``pairs_per_forward``."""
        import torch

        rows = []
        for start in range(0, len(pairs), self.pairs_per_forward):
            chunk = pairs[start : start + self.pairs_per_forward]
            batch = self.processor(
                text=[self.text] * len(chunk),
                images=[[a, t] for a, t in chunk],
                return_tensors="pt",
                padding=True,
            ).to(self.device)
            if "pixel_values" in batch:
                batch["pixel_values"] = batch["pixel_values"].to(self.dtype)
            logits = self.model(**batch, logits_to_keep=1).logits[:, -1]
            rows.append(logits[:, self.word_ids_].float())
        if not rows:
            return torch.zeros(0, len(COMPARISON_LEVELS), device=self.device)
        return torch.cat(rows)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), **self.comparison.metadata(), "prompt": self.text}
