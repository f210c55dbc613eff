"""Image helpers shared by the scorers' CPU preprocessing."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import ExifTags, Image, ImageOps

_ORIENTATION = ExifTags.Base.Orientation
_TRANSPOSING = (5, 6, 7, 8)  # EXIF orientations that swap width and height

REDUCING_GAP = 2.0
"""Pillow's ``reducing_gap`` of the approximate path (``exact_preprocessing=False``): an input
more than 2× the target is first box-reduced by an integer factor, keeping at least 2× for the
final filter (Pillow's own "fair" setting; results within a level or two of 255)."""

DRAFT_FACTOR = 2
"""Downscale-on-decode keeps at least this many decoded pixels per output pixel."""


@dataclass(frozen=True)
class Draft:
    """Downscale-on-decode for JPEGs: decode at the smallest DCT scale (1/2, 1/4 or 1/8,
    libjpeg's scaled IDCT through Pillow's ``Image.draft``) that keeps the side the scorer
    resizes by — ``"short"`` (resize-then-crop, Gamma) or ``"long"`` (pad-to-square, mPLUG-Owl2)
    — at least ``size`` pixels. Decoding 12 MP at 1/4 scale is ~5× faster per core."""

    size: int
    side: str = "short"

    def request(self, width: int, height: int) -> tuple[int, int]:
        """The ``size`` argument of ``Image.draft`` for a stored ``width``×``height`` image.

        Pillow picks scale ``min(width // w, height // h)`` rounded down to 8, 4, 2 or 1, so
        the decoded image is at least (w, h); a square request bounds the short side (whatever
        the EXIF orientation), a proportional one the long side."""
        if self.side == "short":
            return (self.size, self.size)
        long = max(width, height, 1)
        return (
            max(1, math.ceil(self.size * width / long)),
            max(1, math.ceil(self.size * height / long)),
        )


def draft_for(exact: bool, size: int, side: str) -> Draft | None:
    """The :class:`Draft` of a preprocessor resizing to ``size`` by ``side``; None when exact."""
    return None if exact else Draft(DRAFT_FACTOR * int(size), side)


def check_exact(value: object) -> bool:
    """``exact_preprocessing`` must be a bool (``--scorer gamma:exact_preprocessing=true``)."""
    if not isinstance(value, bool):
        raise ValueError(f"exact_preprocessing must be true or false, got {value!r}")
    return value


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of ``image`` once turned upright by its EXIF orientation."""
    width, height = image.size
    if image.getexif().get(_ORIENTATION, 1) in _TRANSPOSING:
        return height, width
    return width, height


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB view of any Pillow image, upright by its EXIF orientation.

    16-bit and 32-bit greyscale are rescaled to 8 bits (Pillow's plain ``convert`` would clip
    them); palette, CMYK, L/LA/RGBA convert with Pillow's rules (alpha is dropped, as CLIP's
    own preprocessing does); animated images use their current frame.
    """
    if image.getexif().get(_ORIENTATION, 1) != 1:  # exif_transpose copies even when upright
        image = ImageOps.exif_transpose(image) or image
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")


EXTREME_ASPECT = 8
"""Above this aspect ratio, preprocessing takes the bounded path (:func:`resize_crop_bounded`,
:func:`shrink_before_padding`); ordinary images keep the reference pipelines bit for bit."""


def resized_size(width: int, height: int, size: int) -> tuple[int, int]:
    """(w, h) after resizing the shorter side to ``size``, as torchvision's ``Resize(size)``
    computes it (the longer side truncated)."""
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)
    return (size, new_long) if width <= height else (new_long, size)


def resize_crop_bounded(image: Image.Image, size: int, resample: int) -> Image.Image:
    """``CenterCrop(size)(Resize(size)(image))`` without the resized intermediate: a 1×40000
    image would be resized to 224×8960000 (6 GB) only to keep its centre.

    Pillow resizes in two passes, horizontal then vertical, rounding to 8 bits in between; we
    run the same two passes, each with ``box=`` so that only the crop's output pixels are
    computed (same scale, same source pixels under each filter tap), on just the source rows
    the crop's taps reach. Equal to the full path up to float rounding of the tap positions
    (at most 2 levels of 255 on the tested strips; ``tests/test_hostile_decode.py``).
    """
    width, height = image.size
    new_w, new_h = resized_size(width, height, size)
    left, top = round((new_w - size) / 2.0), round((new_h - size) / 2.0)  # as CenterCrop
    sx, sy = width / new_w, height / new_h
    x0, x1, y0, y1 = left * sx, (left + size) * sx, top * sy, (top + size) * sy
    margin = 3 * max(sy, 1.0) + 2  # > any Pillow filter's support (≤ 3) times the scale
    r0, r1 = max(0, int(y0 - margin)), min(height, math.ceil(y1 + margin))
    rows = image.crop((0, r0, width, r1))
    horizontal = rows.resize((size, r1 - r0), resample=resample, box=(x0, 0, x1, r1 - r0))
    return horizontal.resize((size, size), resample=resample, box=(0, y0 - r0, size, y1 - r0))


def is_extreme(width: int, height: int) -> bool:
    return max(width, height) > EXTREME_ASPECT * max(1, min(width, height))


def shrink_before_padding(image: Image.Image, max_side: int, resample: int) -> Image.Image:
    """An image whose padded square (``expand2square``) would have a side over ``max_side``
    and is mostly padding, shrunk first so that the square is ``max_side`` wide: a 1×40000
    strip would otherwise be padded to 40000² pixels (4.8 GB) before its resize to 448.
    Approximate (two resamplings instead of one); only extreme aspect ratios take this path."""
    width, height = image.size
    side = max(width, height)
    if side <= max_side or not is_extreme(width, height):
        return image
    scale = max_side / side
    return image.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), resample=resample
    )
