"""What the mPLUG-Owl2 scorers (Q-Align, Compare2Score) share: checkpoint loading, the
tokenizer and image processor of the checkpoint, CPU preprocessing without the model."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vqpipe.io.checkpoints import checkpoint_identity
from vqpipe.io.fs import url_to_fs
from vqpipe.media.image import REDUCING_GAP, check_exact, draft_for
from vqpipe.scorers.base import Scorer
from vqpipe.scorers.chunked import ChunkedCall, compile_model
from vqpipe.scorers.transfer import device_input

if TYPE_CHECKING:  # torch and the model load where the model is built or run
    import torch

    from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM, MPLUGOwl2ImageProcessor


def _read_checkpoint_json(
    checkpoint: str | os.PathLike, name: str, storage_options: dict[str, Any] | None
) -> dict[str, Any] | None:
    """One small JSON file of a checkpoint (local dir, fsspec URI or hub id) without fetching
    the weights; ``None`` when it is not there."""
    text = os.fspath(checkpoint)
    if "://" in text or Path(text).expanduser().exists():
        fs, root = url_to_fs(text, storage_options)
        path = f"{root.rstrip('/')}/{name}"
        if not fs.exists(path):
            return None
        with fs.open(path, "rb") as fh:
            return json.load(fh)
    try:
        from huggingface_hub import hf_hub_download

        with open(hf_hub_download(text, name), encoding="utf-8") as fh:
            return json.load(fh)
    except Exception:
        return None


def checkpoint_processor(
    checkpoint: str | os.PathLike, storage_options: dict[str, Any] | None = None
) -> MPLUGOwl2ImageProcessor:
    """The image processor of a checkpoint, reading only its JSON files."""
    from vqpipe.models.mplug_owl2 import MPLUGOwl2Config, MPLUGOwl2ImageProcessor

    config = _read_checkpoint_json(checkpoint, "config.json", storage_options) or {}
    size = MPLUGOwl2Config.from_dict(config).vision.image_size
    data = _read_checkpoint_json(checkpoint, "preprocessor_config.json", storage_options)
    if data is None:
        return MPLUGOwl2ImageProcessor(size=size)
    return MPLUGOwl2ImageProcessor.from_config(data, default_size=size)


class Owl2Preprocessor:
    """CPU half: one PIL image (or video frame) → ``{"pixels": uint8 [3, S, S]}``.

    ``exact_preprocessing=False`` (opt-in for Q-Align and Compare2Score): JPEGs decode at ≥ 2S
    on the long side (the side that the pad-to-square resize scales by) and the resize uses
    Pillow's ``reducing_gap``. Opt-in, not the default as for Gamma: it could be the default
    only if scores move by ≤ 0.005 on 1–5, and the only checkpoints the tests can run
    are tiny random ones with a 28 px input (measured: ≤ 0.0025, a 2× margin at a size unlike
    448; ``tests/test_downscale_decode.py``), which cannot vouch for the 7B models."""

    def __init__(self, processor: MPLUGOwl2ImageProcessor, exact_preprocessing: bool = True):
        self.processor = processor
        self.exact = check_exact(exact_preprocessing)
        self.reducing_gap = None if self.exact else REDUCING_GAP
        self.draft = draft_for(self.exact, processor.size, "long")

    def __call__(self, image: Any) -> dict[str, np.ndarray]:
        return {"pixels": self.processor.to_uint8(image, self.reducing_gap)}

    def device_geometry(self, image: torch.Tensor) -> torch.Tensor:
        """:meth:`~MPLUGOwl2ImageProcessor.to_uint8`'s geometry for a decoded uint8 [3, H, W]
        tensor, on its device (``decode=gpu``; within 1-2 levels of 255 of the exact path)."""
        from PIL import Image

        from vqpipe.media.device_decode import pad_resize_crop

        p = self.processor
        if p.resample != Image.Resampling.BICUBIC:  # the device path has bicubic only
            raise ValueError(f"device decoding resizes bicubic only, not resample={p.resample}")
        return pad_resize_crop(image, p.size, p.crop_size, p.background)


VISION_CHUNK = 64
"""Frames (or images) per vision-tower call by default. ViT-L/14 at 448 px is 1,025 tokens a
frame; its MLP's [1025, 4096] activations and the QuickGELU temporaries peak near 28 MB a
frame in bf16, so 64 frames need ~1.8 GB, while a batch of 64 videos × 31 frames in one call
needed ~54 GiB (more than an H100 has). 64 frames × 1,025 tokens keeps the GEMMs large."""


class Owl2Scorer(Scorer):
    """Base of the scorers that run the native mPLUG-Owl2.

    ``vision_chunk``: frames per vision-tower call (default :data:`VISION_CHUNK`);
    ``compile``: ``torch.compile`` the vision tower + abstractor (a mode name such as
    ``"reduce-overhead"`` picks that mode), called at one fixed batch shape (see
    :class:`~vqpipe.scorers.chunked.ChunkedCall`)."""

    default_hub_id: str = ""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        storage_options: dict[str, Any] | None = None,
        model: MPLUGOwl2ForCausalLM | None = None,
        exact_preprocessing: bool = True,
        vision_chunk: int | None = None,
        compile: bool | str = False,
    ) -> None:
        from vqpipe.models.mplug_owl2 import (
            MPLUGOwl2ForCausalLM,
            MPLUGOwl2ImageProcessor,
            PromptTokenizer,
            resolve_model_dir,
        )

        source = os.fspath(checkpoint) if checkpoint is not None else self.default_hub_id
        super().__init__(source, device, dtype)
        self.storage_options = storage_options
        self.directory = resolve_model_dir(source, storage_options)
        if model is None:
            model = MPLUGOwl2ForCausalLM.from_pretrained(
                self.directory, dtype=self.dtype, device=self.device
            )
            self.checkpoint_fingerprint = checkpoint_identity(source, storage_options)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        config = self.model.config
        self.tokenizer = PromptTokenizer.from_pretrained(self.directory, config.bos_token_id)
        self.processor = MPLUGOwl2ImageProcessor.from_pretrained(
            self.directory, default_size=config.vision.image_size
        )
        self.preprocessor = Owl2Preprocessor(self.processor, exact_preprocessing)
        self.vision_chunk = int(vision_chunk) if vision_chunk else VISION_CHUNK
        self.compile = compile
        # compiled once here; uncompiled, the model's method is looked up at each call
        self._compiled = compile_model(self.model.encode_images, compile) if compile else None
        self._vision = ChunkedCall(self._encode_chunk, self.vision_chunk, fixed=bool(compile))

    @classmethod
    def default_checkpoint(cls) -> str:
        return cls.default_hub_id

    @classmethod
    def check_options(cls, exact_preprocessing: bool = True, **_: Any) -> None:
        check_exact(exact_preprocessing)

    @classmethod
    def make_preprocessor(
        cls,
        checkpoint: str | os.PathLike | None = None,
        storage_options: dict[str, Any] | None = None,
        exact_preprocessing: bool = True,
        **_: Any,
    ) -> Owl2Preprocessor:
        """Per-frame CPU preprocessing for ``checkpoint``, reading only its JSON files."""
        source = checkpoint if checkpoint is not None else cls.default_hub_id
        processor = checkpoint_processor(source, storage_options)
        return Owl2Preprocessor(processor, exact_preprocessing)

    def word_ids(self, words: tuple[str, ...], single: bool = False) -> torch.Tensor:
        """The official ids of ``words``: each word's first piece (``single``: assert the word
        is one piece)."""
        import torch

        ids = []
        for word in words:
            pieces = self.tokenizer.encode(word)
            if single and len(pieces) != 1:
                raise ValueError(f"{word!r} is {len(pieces)} pieces in this tokenizer, not one")
            ids.append(self.tokenizer.first_piece(word))
        return torch.tensor(ids, device=self.device)

    def encode_images(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 pixels [N, 3, S, S] → visual tokens [N, 65, D], ``vision_chunk`` frames per
        vision-tower call (each chunk normalised on the device only when its turn comes)."""
        return self._vision(pixels)

    def _encode_chunk(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        encode = self._compiled or self.model.encode_images
        return encode(self.to_input(pixels))

    def to_input(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [N, 3, S, S] → normalised pixels on the device, in the model's dtype."""
        pixels = device_input(pixels, self.device)
        return self.processor.normalize(pixels).to(self.model.dtype)
