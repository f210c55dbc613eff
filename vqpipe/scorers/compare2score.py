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

import hashlib
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.io.checkpoints import default_cache_dir
from vqpipe.quality_math.comparison import COMPARISON_LEVELS, soft_comparison
from vqpipe.quality_math.thurstone import thurstone_map
from vqpipe.scorers._owl2 import Owl2Scorer
from vqpipe.scorers.anchor_sets import AnchorSet, check_anchor_matrix, load_anchor_set
from vqpipe.scorers.base import inference_mode

if TYPE_CHECKING:  # torch and the model load where the model is built or run
    import torch

    from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM
    from vqpipe.models.mplug_owl2.llama import KVCache

DEFAULT_CHECKPOINT = "q-future/Compare2Score"
COMPARE_PROMPT = (
    "USER: <|image|> <|image|> Compared with the first image, what is your quality rating for "
    "second image? \nASSISTANT: The quality of the second image is"
)
"""The official prompt: anchor image first, test image second, BOS once at the front."""


def add_test_rows(anchor_matrix: np.ndarray, p: np.ndarray) -> np.ndarray:
    """(m+1)×(m+1) matrices, one per row of ``p`` [B, m]: ``C[m, j] = p_j``,
    ``C[j, m] = 1 − p_j``, ``C[m, m] = 0.5`` around the anchor matrix."""
    b, m = p.shape
    c = np.empty((b, m + 1, m + 1), dtype=np.float64)
    c[:, :m, :m] = anchor_matrix
    c[:, m, :m] = p
    c[:, :m, m] = 1.0 - p
    c[:, m, m] = 0.5
    return c


def map_scores(anchor_matrix: np.ndarray, p: np.ndarray) -> dict[str, np.ndarray]:
    """Exact MAP scores of test images from their anchor probabilities ``p`` [B, m]:
    ``thurstone`` (raw, the test item's q) and ``score_100`` (official min-max to 0..100)."""
    q = np.asarray(thurstone_map(add_test_rows(anchor_matrix, p)))
    low, high = q.min(axis=1), q.max(axis=1)
    span = np.where(high > low, high - low, 1.0)
    return {"thurstone": q[:, -1], "score_100": 100.0 * (q[:, -1] - low) / span}


class AnchorComparison:
    """Anchor-set scoring shared by the Compare2Score scorers: the anchor matrix (given,
    carried by the anchor set, or computed once with the model and cached on disk), the
    (m+1)×(m+1) MAP per test image, the outputs. Subclasses provide
    :meth:`comparison_logits` (inputs → [B, m, 5]) and :meth:`anchor_inputs`."""

    version = "1"
    media = frozenset({"image"})
    score_range = (-10.0, 10.0)  # the raw Thurstone value; score_100 is on 0..100
    extra_outputs = ("thurstone", "score_100")  # quality-table columns besides score/probs

    def init_anchors(
        self,
        anchors: str | os.PathLike | AnchorSet | None,
        anchor_matrix: Sequence[Sequence[float]] | np.ndarray | None,
        output: str,
        temperature: float,
        cache_dir: str | os.PathLike | None,
    ) -> None:
        if output not in ("thurstone", "official"):
            raise ValueError(f"output must be 'thurstone' or 'official', got {output!r}")
        self.output = output
        self.temperature = float(temperature)
        self.anchors = anchors if isinstance(anchors, AnchorSet) else load_anchor_set(anchors)
        self.prob_labels = tuple(f"anchor{j}" for j in range(len(self.anchors)))
        self._cache_dir = cache_dir
        self._anchor_matrix_given = anchor_matrix is not None or self.anchors.matrix is not None
        self._anchor_matrix = anchor_matrix if anchor_matrix is not None else self.anchors.matrix

    @property
    def anchor_matrix(self) -> np.ndarray:
        """``P_a``; computed with the model (and cached on disk) on first use when not given."""
        if self._anchor_matrix is None:
            self._anchor_matrix = self._cached_anchor_matrix()
        matrix = np.asarray(self._anchor_matrix, dtype=np.float64)
        check_anchor_matrix(matrix, len(self.anchors))
        self._anchor_matrix = matrix
        return matrix

    def comparison_logits(self, inputs: Any) -> torch.Tensor:
        raise NotImplementedError

    def anchor_inputs(self) -> Any:
        """The anchors in the form :meth:`comparison_logits` takes test images."""
        raise NotImplementedError

    def comparison_probs(self, inputs: Any) -> np.ndarray:
        """``P(test ≻ anchor_j)`` for every test image and anchor, [B, m]."""
        logits = self.comparison_logits(inputs)
        return soft_comparison(logits, temperature=self.temperature).cpu().numpy()

    def compute_anchor_matrix(self) -> np.ndarray:
        """``P_a[i, j] = P(anchor_i ≻ anchor_j)`` from the model: both orders of every pair,
        averaged so that ``P[i, j] = 1 − P[j, i]``; diagonal 0.5."""
        raw = self.comparison_probs(self.anchor_inputs()).astype(np.float64)  # [i (2nd), j]
        matrix = (raw + (1.0 - raw.T)) / 2.0
        np.fill_diagonal(matrix, 0.5)
        return matrix

    def cache_key(self) -> list[Any] | None:
        """What identifies a computed anchor matrix (None: do not cache on disk)."""
        fp = getattr(self, "checkpoint_fingerprint", None)
        if fp is None:
            return None
        return [
            fp,
            self.anchors.fingerprint,
            self.temperature,
            type(self).__name__,
            str(getattr(self, "dtype", "")),
        ]

    def _cached_anchor_matrix(self) -> np.ndarray:
        key = self.cache_key()
        if key is None:  # a model object: no stable key, no disk cache
            return self.compute_anchor_matrix()
        name = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
        root = default_cache_dir() if self._cache_dir is None else self._cache_dir
        path = os.path.join(os.fspath(root), "compare2score", f"{name}.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                return np.asarray(json.load(fh)["matrix"], dtype=np.float64)
        matrix = self.compute_anchor_matrix()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump({"key": key, "matrix": matrix.tolist()}, fh)
        os.replace(tmp, path)
        return matrix

    def scores_from_probs(self, p: np.ndarray) -> dict[str, np.ndarray]:
        scores = map_scores(self.anchor_matrix, p)
        main = scores["thurstone"] if self.output == "thurstone" else scores["score_100"]
        return {
            "score": main.astype(np.float32),
            "probs": p.astype(np.float32),
            "thurstone": scores["thurstone"].astype(np.float32),
            "score_100": scores["score_100"].astype(np.float32),
        }

    def predict(self, batch: dict[str, Any]) -> dict[str, np.ndarray]:
        """Test images → ``score``, ``thurstone``, ``score_100`` [B], ``probs`` [B, m]."""
        return self.scores_from_probs(self.comparison_probs(batch["pixels"]))

    def anchor_metadata(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "anchors": str(self.anchors.root),
            "anchor_fingerprint": self.anchors.fingerprint,
            "anchor_mos": self.anchors.table["mos"].tolist(),
            "temperature": self.temperature,
        }


class Compare2ScoreScorer(AnchorComparison, Owl2Scorer):
    """Compare2Score on the native mPLUG-Owl2. ``anchors``: an anchor-set directory (default:
    the bundled synthetic set); ``anchor_matrix``: a precomputed ``P_a`` (else computed once
    per checkpoint and anchor set, cached under ``$VQPIPE_CACHE/compare2score``);
    ``exact_preprocessing`` (default True; False: downscale-on-decode for the test images, see
    :class:`~vqpipe.scorers._owl2.Owl2Preprocessor`; the anchors are always exact)."""

    name = "compare2score"
    default_hub_id = DEFAULT_CHECKPOINT

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
        self.init_anchors(anchors, anchor_matrix, output, temperature, cache_dir)
        self.prefix_cache = prefix_cache
        ids = self.tokenizer.encode_prompt(COMPARE_PROMPT)
        first, second = (i for i, t in enumerate(ids) if t == IMAGE_TOKEN_INDEX)
        self.prompt_ids = ids
        self.head_ids = torch.tensor(ids[:first], device=self.device)
        self.mid_ids = torch.tensor(ids[first + 1 : second], device=self.device)
        self.tail_ids = torch.tensor(ids[second + 1 :], device=self.device)
        self.word_ids_ = self.word_ids(COMPARISON_LEVELS, single=True)
        self.anchor_pixels = np.stack([self.processor.to_uint8(im) for im in self.anchors.images()])
        self._cache: KVCache | None = None
        self.anchor_matrix  # noqa: B018 — computed (or read from the cache) up front

    def anchor_inputs(self) -> np.ndarray:
        return self.anchor_pixels

    def cache_key(self) -> list[Any] | None:
        key = super().cache_key()
        return None if key is None else [*key, COMPARE_PROMPT]

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
        embed = model.model.embed_tokens
        f, t, _ = first.shape
        head, mid = embed(self.head_ids), embed(self.mid_ids)
        seq = torch.cat([head[None].expand(f, -1, -1), first, mid[None].expand(f, -1, -1)], dim=1)
        modality = torch.zeros(f, seq.shape[1], dtype=torch.long, device=device)
        modality[:, len(head) : len(head) + t] = 1
        _, cache = model.model.decode(seq, modality, use_cache=True, last_only=True)
        return cache

    def _logits_after_prefix(self, past: KVCache, second: torch.Tensor) -> torch.Tensor:
        """Word logits [R, 5] of ``<second image> tail`` after the prefix caches ``past`` (one
        per row of ``second`` [R, T, D], or P < R caches tiled over the rows: row r continues
        cache r mod P, see :func:`~vqpipe.models.mplug_owl2.llama.after_prefix`)."""
        import torch

        rows, t, _ = second.shape
        tail = self.model.model.embed_tokens(self.tail_ids)
        new = torch.cat([second, tail[None].expand(rows, -1, -1)], 1)
        start = past[0][0].shape[2]
        positions = torch.arange(start, start + new.shape[1], device=self.device)
        hidden, _ = self.model.model.decode(
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
        embed = model.model.embed_tokens
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
        hidden, _ = model.model.decode(seq, modality, last_only=True)
        return self._word_logits(hidden)

    def _word_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The last position's logits of the five comparison words only, float32 [R, 5]."""
        return (hidden[:, -1] @ self.model.lm_head.weight[self.word_ids_].T).float()

    def _anchor_cache(self) -> KVCache:
        """KV cache of ``[BOS] USER: <anchor_j> ␣`` for every anchor (batch m), made once."""
        if self._cache is None:
            anchors = self.encode_images(self.anchor_pixels)  # [m, T, D]
            self._cache = self._prefix_cache(anchors)
        return self._cache

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), **self.anchor_metadata()}
