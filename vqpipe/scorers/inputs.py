"""What the Python API accepts: one item or a batch, normalised to PIL images and frame lists.

:func:`as_items` turns what a user has into what :meth:`Scorer.score_items` takes — a list of
items, each an RGB-able PIL image or, for a video, a list of PIL frames — and says whether a
single item was given (then the scorer returns one score, not an array).

One item is any of:

* a path or fsspec URI (``str`` / ``os.PathLike``; ``s3://...`` with ``storage_options``),
  read with :func:`vqpipe.io.fs.read_bytes` and decoded by :mod:`vqpipe.media.decode` as the
  pipeline does: images by extension (else by their first bytes), videos sampled at the
  pipeline's default ``video_fps`` (1 frame/s) within the default :class:`MediaLimits`;
* a PIL image (any mode; converted with the scorer's own RGB rules);
* a numpy array ``H×W`` (greyscale) or ``H×W×C`` (C = 1, 3 or 4), ``uint8`` (0..255) or float
  in [0, 1];
* a torch tensor ``C×H×W`` (C = 1, 3 or 4) or ``H×W``, ``uint8`` or float in [0, 1].

A batch is a list or tuple of items, a numpy ``N×H×W×C`` array or a torch ``N×C×H×W`` tensor
(pyiqa's layout). Inside a batch, a list or tuple of image items — or a 4-D array / tensor —
is one video's frames. Float pixels are rounded to the nearest 8-bit level, so a tensor made
with ``torchvision``'s ``to_tensor`` scores exactly as the image it came from.
"""

from __future__ import annotations

import os
from typing import Any, Union

import numpy as np
from PIL import Image

from vqpipe.defaults import VIDEO_FPS
from vqpipe.io.fs import read_bytes
from vqpipe.io.media_types import media_type_from_name, sniff_media_type
from vqpipe.media.decode import MediaError, MediaLimits, decode_image, decode_video
from vqpipe.media.image import Draft
from vqpipe.quality_math.arrays import is_tensor

Item = Union[Image.Image, list[Image.Image]]  # noqa: UP007 — an image, or a video's frames
"""One normalised item: a PIL image, or the frames of one video."""

ACCEPTED = (
    "a path or fsspec URI, a PIL image, a numpy HxW / HxWxC array (uint8, or float in [0, 1]), "
    "a torch CxHxW tensor (uint8, or float in [0, 1]), or a list of these "
    "(a list inside the list is one video's frames)"
)
"""What :func:`as_items` accepts, as the TypeError states it."""


def as_items(
    x: Any,
    storage_options: dict[str, Any] | None = None,
    video_fps: float = VIDEO_FPS,
    limits: MediaLimits | None = None,
    draft: Draft | None = None,
) -> tuple[list[Item], bool]:
    """``(items, single)``: ``x`` as a list of PIL images / frame lists, and whether ``x`` was
    one item. Wrong types raise one :class:`TypeError` naming what is accepted; paths that
    cannot be decoded raise :class:`~vqpipe.media.decode.MediaError` naming the path.
    ``draft``: images read from paths are decoded downscaled, as the pipeline decodes them
    for a scorer with ``exact_preprocessing=False``."""
    load = _Loader(storage_options, video_fps, limits or MediaLimits(), draft)
    if _is_path(x) or isinstance(x, Image.Image) or _is_array(x, (2, 3)):
        return [load.item(x)], True
    if _is_array(x, (4,)):  # N×H×W×C array / N×C×H×W tensor: a batch of images
        return [_image(frame) for frame in x], False
    if isinstance(x, (list, tuple)):
        return [load.item(it, where=f"item {i}") for i, it in enumerate(x)], False
    raise TypeError(f"cannot score {_describe(x)}; pass {ACCEPTED}")


class _Loader:
    def __init__(
        self,
        storage_options: dict[str, Any] | None,
        fps: float,
        limits: MediaLimits,
        draft: Draft | None = None,
    ):
        self.storage_options = storage_options
        self.fps = float(fps)
        self.limits = limits
        self.draft = draft

    def item(self, x: Any, where: str = "input") -> Item:
        if _is_path(x):
            return self.read(x)
        if isinstance(x, (list, tuple)) or _is_array(x, (4,)):
            frames = [self.frame(f, f"{where}, frame {k}") for k, f in enumerate(x)]
            if not frames:
                raise ValueError(f"{where}: a video needs at least one frame")
            return frames
        if isinstance(x, Image.Image) or _is_array(x, (2, 3)):
            return _image(x)
        raise TypeError(f"{where}: cannot score {_describe(x)}; pass {ACCEPTED}")

    def frame(self, x: Any, where: str) -> Image.Image:
        image = self.read(x) if _is_path(x) else None
        if isinstance(image, list):
            raise TypeError(f"{where}: a video frame cannot be a video ({os.fspath(x)})")
        if image is not None:
            return image
        if isinstance(x, Image.Image) or _is_array(x, (2, 3)):
            return _image(x)
        raise TypeError(f"{where}: a video frame must be an image, got {_describe(x)}")

    def read(self, path: str | os.PathLike) -> Item:
        """An image, or a video's sampled frames, from a path or URI."""
        uri = os.fspath(path)
        if "://" not in uri:
            uri = os.path.expanduser(uri)
        data = read_bytes(uri, self.storage_options)
        kind = media_type_from_name(uri)
        if kind == "unsupported":
            kind = sniff_media_type(data[:64]) or "image"
        try:
            if kind == "video":
                frames, _ = decode_video(data, self.fps, self.limits)
                return frames
            image, _ = decode_image(data, self.limits, self.draft)
        except MediaError as exc:
            raise MediaError(f"{uri}: {exc}") from None
        return image


def _is_path(x: Any) -> bool:
    return isinstance(x, (str, os.PathLike))


def _is_array(x: Any, ndims: tuple[int, ...]) -> bool:
    return (isinstance(x, np.ndarray) or is_tensor(x)) and x.ndim in ndims


def _describe(x: Any) -> str:
    if isinstance(x, np.ndarray) or is_tensor(x):
        return f"a {x.ndim}-d {type(x).__name__} of shape {tuple(x.shape)}"
    name = f"{type(x).__module__}.{type(x).__qualname__}".removeprefix("builtins.")
    return f"a value of type {name}"


def _image(x: Any) -> Image.Image:
    """A PIL image from a PIL image, an HW / HWC numpy array or a HW / CHW tensor."""
    if isinstance(x, Image.Image):
        return x
    if is_tensor(x):
        t = x.detach().cpu()
        if t.ndim == 3:
            if t.shape[0] not in (1, 3, 4):
                hint = "; it looks like HxWxC: use .permute(2, 0, 1)" if t.shape[-1] <= 4 else ""
                raise ValueError(f"a tensor image is CxHxW, got shape {tuple(t.shape)}{hint}")
            t = t.permute(1, 2, 0)
        if t.is_floating_point():
            t = t.float()
        array = t.numpy()
    else:
        array = np.asarray(x)
        if array.ndim == 3 and array.shape[-1] not in (1, 3, 4):
            hint = "; it looks like CxHxW: use .transpose(1, 2, 0)" if array.shape[0] <= 4 else ""
            raise ValueError(f"a numpy image is HxWxC, got shape {array.shape}{hint}")
    if array.dtype.kind == "f":
        if array.size and not (np.isfinite(array).all() and array.min() >= 0 and array.max() <= 1):
            raise ValueError(
                "float pixels must be finite and in [0, 1] "
                f"(got {np.nanmin(array):.3g}..{np.nanmax(array):.3g}); pass uint8 for 0..255"
            )
        array = np.rint(array * 255.0).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise TypeError(f"pixels must be uint8 or float in [0, 1], got dtype {array.dtype}")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))
