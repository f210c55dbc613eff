"""Thumbnails of a quality table's rows through vqpipe's own reader and decoders: any fsspec
URI (local, ``s3://``, ``gs://`` …), images and the first frame of videos."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from PIL import Image

from vqpipe.io.fs import read_bytes
from vqpipe.io.media_types import media_type_from_name, sniff_media_type
from vqpipe.media.decode import MediaError, MediaLimits, decode_image, decode_video


def media_kind(uri: str, data: bytes | None = None) -> str:
    """``"image"`` or ``"video"``: from the file's first bytes when given, else its name."""
    sniffed = sniff_media_type(data[:16]) if data else None
    if sniffed is not None:
        return sniffed
    return "video" if media_type_from_name(uri) == "video" else "image"


def first_frame(data: bytes, kind: str, limits: MediaLimits | None = None) -> Image.Image:
    """The decoded image, or the first frame of a video (``vqpipe.media`` decoders)."""
    limits = limits or MediaLimits()
    if kind == "video":
        frames, _ = decode_video(data, sample_fps=1.0, limits=replace(limits, max_frames=1))
        return frames[0]
    return decode_image(data, limits)[0]


def thumbnail(
    uri: str, storage_options: dict[str, Any] | None = None, size: int = 256
) -> Image.Image:
    """An RGB thumbnail (longest side ``size``) of the image or video at ``uri``; raises
    :class:`~vqpipe.media.decode.MediaError` (or the store's error) when it cannot be read."""
    data = read_bytes(uri, storage_options)
    image = first_frame(data, media_kind(uri, data))
    image = image.copy()
    image.thumbnail((size, size))
    return image


__all__ = ["MediaError", "first_frame", "media_kind", "thumbnail"]
