"""mPLUG-Owl2 image preprocessing, equal to the official pipeline bit for bit in float32.

Official: expand to a square on the CLIP-mean background (122, 116, 104), image centred;
resize the shortest edge to 448 (Pillow bicubic on uint8); centre-crop 448; ``x · (1/255)`` in
float64 cast to float32; ``(x − mean) / std`` in float32. We split it at the uint8 stage: the
CPU half (:meth:`MPLUGOwl2ImageProcessor.to_uint8`) runs in the pipeline's decode workers and
ships 4× fewer bytes; :meth:`~MPLUGOwl2ImageProcessor.normalize` runs on the accelerator.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from vqpipe.media.image import shrink_before_padding, to_rgb

# open_clip's OPENAI_DATASET_MEAN / _STD (tests/test_shared_facts.py checks they are equal),
# written out because the CPU decode workers run this module and importing open_clip there
# would add that whole package (and torchvision) to every worker's start-up.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PAD_MAX_SIDE = 4096  # extreme strips are shrunk to this side before padding (50 MB, not GB)


def expand2square(image: Image.Image, background: tuple[int, ...]) -> Image.Image:
    """Pad to a square with ``background``, the image centred (official ``expand2square``)."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    result = Image.new(image.mode, (side, side), background)
    result.paste(image, ((side - width) // 2, (side - height) // 2))
    return result


def _size(value: Any, default: int) -> int:
    if value is None:
        return default
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value:
                return int(value[key])
        raise ValueError(f"unsupported size spec {value!r}")
    return int(value)


class MPLUGOwl2ImageProcessor:
    """CLIP-style processor for mPLUG-Owl2 (picklable; no model needed)."""

    def __init__(
        self,
        size: int = 448,
        crop_size: int | None = None,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        resample: int = Image.Resampling.BICUBIC,
    ) -> None:
        self.size = int(size)
        self.crop_size = int(crop_size or size)
        self.image_mean = tuple(float(x) for x in image_mean)
        self.image_std = tuple(float(x) for x in image_std)
        self.resample = int(resample)
        self.background = tuple(int(x * 255) for x in self.image_mean)

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, default_size: int = 448
    ) -> MPLUGOwl2ImageProcessor:
        """Read ``preprocessor_config.json`` (CLIPImageProcessor fields) when there is one."""
        file = Path(directory) / "preprocessor_config.json"
        if not file.exists():
            return cls(size=default_size)
        with open(file, encoding="utf-8") as fh:
            return cls.from_config(json.load(fh), default_size)

    @classmethod
    def from_config(cls, cfg: dict[str, Any], default_size: int = 448) -> MPLUGOwl2ImageProcessor:
        """From the fields of a ``preprocessor_config.json``."""
        size = _size(cfg.get("size"), default_size)
        return cls(
            size=size,
            crop_size=_size(cfg.get("crop_size"), size)
            if cfg.get("do_center_crop", True)
            else None,
            image_mean=cfg.get("image_mean", CLIP_MEAN),
            image_std=cfg.get("image_std", CLIP_STD),
            resample=cfg.get("resample", Image.Resampling.BICUBIC),
        )

    def to_uint8(self, image: Image.Image, reducing_gap: float | None = None) -> np.ndarray:
        """RGB, expand to square, resize, centre crop → uint8 [3, S, S]. ``reducing_gap``:
        Pillow's (None, the official path: one resampling from the full image)."""
        image = shrink_before_padding(to_rgb(image), PAD_MAX_SIDE, self.resample)
        image = expand2square(image, self.background)
        width, height = image.size
        short, long = min(width, height), max(width, height)
        new_short, new_long = self.size, int(self.size * long / short)
        new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        image = image.resize((new_w, new_h), resample=self.resample, reducing_gap=reducing_gap)
        pixels = np.asarray(image, dtype=np.uint8)
        crop = self.crop_size
        if crop > new_h or crop > new_w:
            raise ValueError(f"crop {crop} larger than the resized image {new_w}x{new_h}")
        top, left = (new_h - crop) // 2, (new_w - crop) // 2
        pixels = pixels[top : top + crop, left : left + crop]
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))

    def normalize(self, pixels: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 [..., 3, S, S] → float32 CLIP-normalised, on the input's device."""
        x = torch.as_tensor(pixels)
        x = (x.to(torch.float64) * (1 / 255)).to(torch.float32)
        mean, std = self._mean_std(x.device)
        return (x - mean) / std

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """mean and std [3, 1, 1] on ``device``, made once per device: a tensor made from a
        list on a GPU is a synchronous copy, which would wait for every queued batch."""
        cache = self.__dict__.setdefault("_mean_std_cache", {})
        if device not in cache:
            shape = (3, 1, 1)
            mean = torch.tensor(self.image_mean, dtype=torch.float32).view(shape).to(device)
            std = torch.tensor(self.image_std, dtype=torch.float32).view(shape).to(device)
            cache[device] = (mean, std)
        return cache[device]

    def __call__(self, images: Image.Image | Sequence[Image.Image]) -> torch.Tensor:
        """PIL image(s) → float32 [B, 3, S, S], the official ``pixel_values``."""
        if isinstance(images, Image.Image):
            images = [images]
        return self.normalize(np.stack([self.to_uint8(im) for im in images]))

    def preprocess(
        self, images: Image.Image | Sequence[Image.Image], return_tensors: str = "pt"
    ) -> dict[str, torch.Tensor | np.ndarray]:
        """``{"pixel_values": ...}`` like a transformers image processor (``"pt"`` or ``"np"``)."""
        pixels = self(images)
        return {"pixel_values": pixels.numpy() if return_tensors == "np" else pixels}
