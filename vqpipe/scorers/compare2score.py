"""The Compare2Score scorer: soft comparisons with anchor images → Thurstone Case V MAP score.

Per test image: m comparisons "how is the second image compared with the first (anchor)?",
each a soft probability ``p_j = Σ_k w_k · softmax(logits_k / 100)`` over the five comparison
words; the row ``p`` and column ``1 − p`` join the anchor matrix ``P_a``, and the exact MAP
of the (m+1)×(m+1) matrix (:func:`~vqpipe.scoring.thurstone_map`, batched over the batch) gives
the test image's score.

Speed by design (the official code runs m full two-image forwards per image): each test image
goes through the vision tower and abstractor once; the token prefix up to and including each
anchor image (``USER: <anchor> ``) is the same for every test image, so its KV cache is computed
once per anchor and every (test image, anchor) pair of a batch runs in one forward that starts
after it; only the last position and the five word rows of the LM head are computed.

Outputs: ``thurstone`` (the raw MAP value, does not saturate), ``score_100`` (the official
convention: min-max of the m+1 MAP scores to 0..100, so it saturates outside the anchors'
range) and ``probs`` (the m comparison probabilities). ``score`` is ``thurstone`` unless
``output="official"``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.prompts import COMPARE_PROMPT
from vqpipe.quality_math.comparison import COMPARISON_LEVELS
from vqpipe.scorers._owl2 import Owl2Scorer
from vqpipe.scorers.anchor_comparison import (
    EXTRA_OUTPUTS,
    SCORE_RANGE,
    AnchorComparison,
    AnchorOptions,
    add_test_rows,
    map_scores,
)
from vqpipe.scorers.anchor_sets import AnchorSet
from vqpipe.scorers.base import inference_mode

if TYPE_CHECKING:  # torch and the model load where the model is built or run
    import torch

    from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM
    from vqpipe.models.mplug_owl2.llama import KVCache

__all__ = [
    "COMPARE_PROMPT",
    "DEFAULT_CHECKPOINT",
    "Compare2ScoreScorer",
    "add_test_rows",  # the MAP's math, where it lived before the anchor comparison moved
    "map_scores",
]

DEFAULT_CHECKPOINT = "q-future/Compare2Score"


class Compare2ScoreScorer(Owl2Scorer):
    """Compare2Score on the native mPLUG-Owl2. ``anchors``, ``anchor_matrix``, ``output``,
    ``temperature`` and ``cache_dir``: see :class:`~vqpipe.scorers.anchor_comparison.AnchorOptions`
    (``P_a`` is computed once per checkpoint and anchor set when not given, and cached);
    ``exact_preprocessing`` (default True; False: downscale-on-decode for the test images, see
    :class:`~vqpipe.scorers._owl2.Owl2Preprocessor`; the anchors are always exact)."""

    name = "compare2score"
    version = "1"
    default_hub_id = DEFAULT_CHECKPOINT
    score_range = SCORE_RANGE
    extra_outputs = EXTRA_OUTPUTS

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        anchors: str | os.PathLike | AnchorSet | None = None,
        anchor_matrix: Sequence[Sequence[float]] | np.ndarray | None = None,
        output: str = "thurstone",
        temperature: float = 100.0,
        prefix_cache: bool = True,
        cache_dir: str | os.PathLike | None = None,
        storage_options: dict[str, Any] | None = None,
        model: MPLUGOwl2ForCausalLM | None = None,
        exact_preprocessing: bool = True,
        vision_chunk: int | None = None,
        compile: bool | str = False,
    ) -> None:
        import torch

        from vqpipe.models.mplug_owl2 import IMAGE_TOKEN_INDEX

        options = AnchorOptions(anchors, anchor_matrix, output, temperature, cache_dir)
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
        self.temperature = options.temperature
        self._cache_dir = options.cache_dir  # where a computed P_a is kept (tests read it)
        self.prefix_cache = prefix_cache
        ids = self.tokenizer.encode_prompt(COMPARE_PROMPT)
        first, second = (i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX)
        self.prompt_ids = ids
        self.head_ids = torch.tensor(ids[:first], device=self.device)
        self.mid_ids = torch.tensor(ids[first + 1 : second], device=self.device)
        self.tail_ids = torch.tensor(ids[second + 1 :], device=self.device)
        self.word_ids_ = self.word_ids(COMPARISON_LEVELS, single=True)
        self.anchors = options.anchor_set()
        self.anchor_pixels = np.stack([self.processor.to_uint8(im) for im in self.anchors.images()])
        self._cache: KVCache | None = None
        self.comparison = AnchorComparison(
            options,
            self.anchors,
            lambda inputs: self.comparison_logits(inputs),  # looked up per call
            self.anchor_pixels,
            self.checkpoint_fingerprint,
            (type(self).__name__, str(self.dtype), COMPARE_PROMPT),
        )
        self.anchor_matrix = self.comparison.matrix
        self.prob_labels = self.comparison.labels

    def predict(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Test images → ``score``, ``thurstone``, ``score_100`` [B], ``probs`` [B, m]."""
        return self.comparison.predict(batch["pixels"])

    # ------------------------------------------------------------------ comparisons
    @inference_mode
    def comparison_logits(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Logits of the five comparison words for every (test image, anchor) pair, [B, m, 5]
        (test image second, anchor first, as the official prompt)."""
        m = len(self.anchor_pixels)
        test = self.encode_images(pixels)  # [B, T, D] — once per test image
        b = test.shape[0]
        second = test.repeat_interleave(m, 0)  # [B·m, T, D]: pair (b, j) at row b·m + j
        if self.prefix_cache:  # the m anchor caches, shared (tiled) by the B·m rows, no copy
            logits = self._logits_after_prefix(self._anchor_cache(), second)
        else:  # full two-image sequences, nothing shared (the official path, batched)
            anchors = self.encode_images(self.anchor_pixels)
            logits = self._logits_of_pairs(anchors.repeat(b, 1, 1), second)
        return logits.view(b, m, -1)

    @inference_mode
    def pair_logits(
        self, images: Sequence[np.ndarray] | np.ndarray, first: Sequence[int], second: Sequence[int]
    ) -> torch.Tensor:
        """Logits of the five comparison words for given pairs, [N, 5]: pair n puts
        ``images[first[n]]`` first and ``images[second[n]]`` second (the word says how the
        second compares with the first). Each image goes through the vision tower once; the
        prefix KV cache (``[BOS] USER: <first> ␣``) is computed once per distinct first image."""
        import torch

        feats = self.encode_images(np.stack(images))  # [U, T, D]
        idx_first = torch.as_tensor(np.asarray(first, np.int64), device=self.device)
        idx_second = torch.as_tensor(np.asarray(second, np.int64), device=self.device)
        if not self.prefix_cache:
            return self._logits_of_pairs(feats[idx_first], feats[idx_second])
        firsts, inverse = torch.unique(idx_first, return_inverse=True)
        cache = self._prefix_cache(feats[firsts])  # one prefix per distinct first image
        past = [(k[inverse], v[inverse]) for k, v in cache]
        return self._logits_after_prefix(past, feats[idx_second])

    def _prefix_cache(self, first: torch.Tensor) -> KVCache:
        """KV cache of ``[BOS] USER: <first image> ␣`` for each row of ``first`` [F, T, D]."""
        import torch

        model, device = self.model, self.device
        f, t, _ = first.shape
        head, mid = model.embed(self.head_ids), model.embed(self.mid_ids)
        seq = torch.cat([head[None].expand(f, -1, -1), first, mid[None].expand(f, -1, -1)], dim=1)
        modality = torch.zeros(f, seq.shape[1], dtype=torch.long, device=device)
        modality[:, len(head) : len(head) + t] = 1
        return model.decode_prefix(seq, modality)

    def _logits_after_prefix(self, past: KVCache, second: torch.Tensor) -> torch.Tensor:
        """Word logits [R, 5] of ``<second image> tail`` after the prefix caches ``past`` (one
        per row of ``second`` [R, T, D], or P < R caches tiled over the rows: row r continues
        cache r mod P, see :func:`~vqpipe.models.mplug_owl2.llama.after_prefix`)."""
        import torch

        rows, t, _ = second.shape
        tail = self.model.embed(self.tail_ids)
        new = torch.cat([second, tail[None].expand(rows, -1, -1)], 1)
        start = past[0][0].shape[2]
        positions = torch.arange(start, start + new.shape[1], device=self.device)
        hidden = self.model.decode(
            new,
            t,
            position_ids=positions[None].expand(rows, -1),
            past_key_values=past,
            last_only=True,
        )
        return self._word_logits(hidden)

    def _logits_of_pairs(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Word logits [R, 5] of full two-image sequences (``first``, ``second``: [R, T, D])."""
        import torch

        model, device = self.model, self.device
        embed = model.embed
        rows, t, _ = second.shape
        seq = torch.cat(
            [
                embed(self.head_ids)[None].expand(rows, -1, -1),
                first,
                embed(self.mid_ids)[None].expand(rows, -1, -1),
                second,
                embed(self.tail_ids)[None].expand(rows, -1, -1),
            ],
            dim=1,
        )
        modality = torch.zeros(rows, seq.shape[1], dtype=torch.long, device=device)
        h, a = len(self.head_ids), first.shape[1]
        modality[:, h : h + a] = 1
        s = h + a + len(self.mid_ids)
        modality[:, s : s + t] = 1
        hidden = model.decode(seq, modality, last_only=True)
        return self._word_logits(hidden)

    def _word_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last position's logits of the five comparison words only, float32 [R, 5]."""
        return self.model.token_logits(hidden, self.word_ids_).float()

    def _anchor_cache(self) -> KVCache:
        """KV cache of ``[BOS] USER: <anchor_j> ␣`` for every anchor (batch m), made once."""
        if self._cache is None:
            anchors = self.encode_images(self.anchor_pixels)  # [m, T, D]
            self._cache = self._prefix_cache(anchors)
        return self._cache

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), **self.comparison.metadata()}
