"""Image helpers shared by the scorers' CPU preprocessing."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps


def to_rgb(image: Image.Image) -> Image.Image:
    """An 8-bit RGB view of any Pillow image, upright by its EXIF orientation.

    16-bit and 32-bit greyscale are rescaled to 8 bits (Pillow's plain ``convert`` would clip
    them); palette, CMYK, L/LA/RGBA convert with Pillow's rules (alpha is dropped, as CLIP's
    own preprocessing does); animated images use their current frame.
    """
    image = ImageOps.exif_transpose(image) or image
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or arr.max() > 255 else 255.0
        grey = np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    return image.convert("RGB")
