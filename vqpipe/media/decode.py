"""Decoding inputs from bytes: images with Pillow, video frames with decord (PyAV fallback).

Everything raises :class:`MediaError` with a message that says what went wrong, so that the
pipeline can put it in the row's ``error`` column; limits (bytes, pixels, frames, duration) are
checked before the expensive work.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

from vqpipe.defaults import (
    DECODE_TIMEOUT_S,
    MAX_BYTES,
    MAX_DURATION_S,
    MAX_FRAMES,
    MAX_PIXELS,
    READ_TIMEOUT_S,
)
from vqpipe.media.image import Draft, to_rgb, upright_size


class MediaError(ValueError):
    """An input that cannot be decoded or breaks a configured limit."""


@dataclass(frozen=True)
class MediaLimits:
    """Input limits; ``None`` disables one."""

    max_bytes: int | None = MAX_BYTES
    max_pixels: int | None = MAX_PIXELS
    max_frames: int = MAX_FRAMES  # frames sampled per video (evenly spread when longer)
    max_duration_s: float | None = MAX_DURATION_S
    read_timeout_s: float | None = READ_TIMEOUT_S  # wall clock to fetch one input's bytes
    decode_timeout_s: float | None = DECODE_TIMEOUT_S  # per video decoder try (subprocess)


@dataclass(frozen=True)
class ImageInfo:
    width: int
    height: int


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    duration_s: float
    fps: float
    frames: int  # frames in the video (container count)
    sampled: int  # frames returned


def _check_bytes(data: bytes, limits: MediaLimits) -> None:
    if not data:
        raise MediaError("empty file (0 bytes)")
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise MediaError(f"file has {len(data)} bytes, over the limit of {limits.max_bytes}")


def decode_image(
    data: bytes, limits: MediaLimits = MediaLimits(), draft: Draft | None = None
) -> tuple[Image.Image, ImageInfo]:
    """Bytes → upright 8-bit RGB image (first frame of animations) and its size.

    ``draft``: downscale-on-decode (JPEG only; see :class:`~vqpipe.media.image.Draft`): the
    image comes back smaller, but the :class:`ImageInfo` is always the full upright size.
    """
    _check_bytes(data, limits)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if limits.max_pixels is not None and width * height > limits.max_pixels:
                raise MediaError(
                    f"image is {width}x{height} = {width * height} pixels, over the limit of "
                    f"{limits.max_pixels} (decompression bomb guard)"
                )
            if getattr(image, "is_animated", False):
                image = next(ImageSequence.Iterator(image))
            info = ImageInfo(*upright_size(image))  # before the draft shrinks image.size
            if draft is not None and image.format == "JPEG":  # must come before load()
                image.draft("RGB", draft.request(width, height))
            image.load()
            rgb = to_rgb(image)
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise MediaError(f"decompression bomb: {exc}") from None
    except Exception as exc:
        raise MediaError(f"cannot decode image: {type(exc).__name__}: {exc}") from None
    if draft is None:
        info = ImageInfo(width=rgb.width, height=rgb.height)  # the exact path, as it always was
    return rgb, info


def frame_indices(n_frames: int, fps: float, sample_fps: float, max_frames: int) -> list[int]:
    """Indices of frames to score: ``sample_fps`` frames per second as Q-Align samples them
    (``int(fps / sample_fps · i)``), evenly thinned to ``max_frames`` for long videos."""
    if n_frames <= 0:
        return []
    if fps <= 0 or sample_fps <= 0:
        return [0]
    step = fps / sample_fps
    count = max(1, int(n_frames / step))
    indices = [min(int(step * i), n_frames - 1) for i in range(count)]
    return [indices[k] for k in even_subset(len(indices), max_frames)]


def even_subset(count: int, limit: int) -> list[int]:
    """Positions of at most ``limit`` of ``count`` items, evenly spread, first and last kept."""
    if count <= limit:
        return list(range(count))
    return [int(k) for k in np.linspace(0, count - 1, max(1, limit)).round().astype(int)]


VIDEO_BACKENDS = ("decord", "pyav")


def decode_video(
    data: bytes,
    sample_fps: float = 1.0,
    limits: MediaLimits = MediaLimits(),
    backends: tuple[str, ...] = VIDEO_BACKENDS,
    on_backend: Any = None,
) -> tuple[list[Image.Image], VideoInfo]:
    """Bytes → sampled RGB frames and the video's metadata (decord, PyAV when it fails).

    In-process: a native decoder that crashes takes the process with it. The pipeline runs
    this in a sacrificial subprocess (:mod:`vqpipe.media.isolated`); ``on_backend(name)`` is
    called before each backend starts, so that the parent knows which one crashed.
    """
    _check_bytes(data, limits)
    errors = []
    known = {"decord": _decode_with_decord, "pyav": _decode_with_pyav}
    for name in backends:
        if on_backend is not None:
            on_backend(name)
        try:
            frames, info = known[name](data, sample_fps, limits)
        except MediaError:
            raise
        except ImportError as exc:
            errors.append(f"{name} not installed ({exc})")
            continue
        except Exception as exc:
            errors.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if not frames:
            errors.append(f"{name}: no decodable frames")
            continue
        return frames, info
    raise MediaError("cannot decode video: " + "; ".join(errors))


def _check_duration(duration: float, limits: MediaLimits) -> None:
    if limits.max_duration_s is not None and duration > limits.max_duration_s:
        raise MediaError(
            f"video lasts {duration:.1f} s, over the limit of {limits.max_duration_s} s"
        )


def _check_frame_size(width: int, height: int, limits: MediaLimits) -> None:
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise MediaError(
            f"video frames are {width}x{height} = {width * height} pixels, over the limit of "
            f"{limits.max_pixels}"
        )


def _decode_with_decord(
    data: bytes, sample_fps: float, limits: MediaLimits
) -> tuple[list[Image.Image], VideoInfo]:
    import decord

    reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
    n, fps = len(reader), float(reader.get_avg_fps() or 0.0)
    duration = n / fps if fps > 0 else 0.0
    _check_duration(duration, limits)
    indices = frame_indices(n, fps, sample_fps, limits.max_frames)
    if not indices:
        return [], VideoInfo(0, 0, duration, fps, n, 0)
    first = reader.get_batch(indices[:1]).asnumpy()  # [1, H, W, 3]: size checked before the rest
    _check_frame_size(first.shape[2], first.shape[1], limits)
    rest = reader.get_batch(indices[1:]).asnumpy() if len(indices) > 1 else first[:0]
    array = np.concatenate([first, rest])  # [T, H, W, 3] uint8
    frames = [Image.fromarray(frame) for frame in array]
    h, w = array.shape[1:3]
    return frames, VideoInfo(int(w), int(h), duration, fps, n, len(frames))


def _decode_with_pyav(
    data: bytes, sample_fps: float, limits: MediaLimits
) -> tuple[list[Image.Image], VideoInfo]:
    import av

    with av.open(io.BytesIO(data)) as container:
        if not container.streams.video:
            raise MediaError("no video stream (audio-only or not a video)")
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 0.0)
        n = int(stream.frames or 0)
        duration = float(stream.duration * stream.time_base) if stream.duration else 0.0
        if not duration and container.duration:
            duration = container.duration / 1_000_000
        _check_duration(duration, limits)
        _check_frame_size(stream.codec_context.width or 0, stream.codec_context.height or 0, limits)
        if not n and fps and duration:
            n = round(duration * fps)
        wanted = set(frame_indices(n, fps, sample_fps, limits.max_frames)) if n else None
        frames = []
        for i, frame in enumerate(container.decode(stream)):
            if wanted is None or i in wanted:
                _check_frame_size(frame.width, frame.height, limits)
                frames.append(frame.to_image())
                if wanted is None and len(frames) >= limits.max_frames:
                    break
            if wanted is not None and i >= max(wanted):
                break
    if not frames:
        return [], VideoInfo(0, 0, duration, fps, n, 0)
    width, height = frames[0].size
    return [to_rgb(f) for f in frames], VideoInfo(width, height, duration, fps, n, len(frames))
