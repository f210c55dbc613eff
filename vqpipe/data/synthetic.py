"""Deterministic synthetic visual-quality data (images and short videos).

The generators here build small, fully reproducible quality-assessment corpora used by the
tests, demos and fine-tuning sanity checks of ``vqpipe``:

* :func:`make_content_image` renders a procedural RGB scene (gradients, geometric shapes,
  gratings / checkerboards / smooth noise and text) from ``(seed, content_id)``.
* :func:`distort` applies one of :data:`DISTORTIONS` at one of :data:`SEVERITIES`.
* :func:`make_image_dataset` / :func:`make_video_dataset` write media plus a MOS table
  (``mos.parquet`` and ``mos.csv``) and return it as a :class:`pandas.DataFrame`.
* :func:`make_corpus` builds both and writes a combined table.

MOS model
---------
Scores are on a 1..5 scale (higher is better).  A reference scores 4.3..4.8, set by the
RMS contrast of the content (a property visible in the pixels).  Each distortion lowers
the score along a distortion-specific power curve in severity that reaches ~1.2..2.0 at
severity 5; blur hurts detailed content a little more and noise a little less (texture
masking), both driven by a measured detail statistic of the reference.  A small
deterministic per-item perturbation (sd 0.05, truncated) is added; the score is then forced
to be strictly decreasing in severity within a (content, distortion) and below the
reference.  The rating ``std`` follows the inverted-U seen in real studies: ~0.3 at the
ends of the scale and ~0.85 in the middle.

Randomness always comes from :func:`numpy.random.default_rng` seeded with integer tuples
(never Python's ``hash()``), so equal arguments give equal tables and byte-identical images.

Why one module of ~1,000 lines: the contents, distortions, videos and their MOS are one
reproducible stream that shares seeds and calibration constants (``_SALT``, the severity
tables, the MOS curve); split, a change in one file could shift another's corpus silently.
"""

from __future__ import annotations

import functools
import io
import math
import os
import zlib
from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont

__all__ = [
    "DISTORTIONS",
    "MOS_COLUMNS",
    "SEVERITIES",
    "SPLITS",
    "VIDEO_COLUMNS",
    "VIDEO_DISTORTIONS",
    "distort",
    "make_content_image",
    "make_corpus",
    "make_image_dataset",
    "make_video_dataset",
]

DISTORTIONS: tuple[str, ...] = (
    "gaussian_blur",
    "gaussian_noise",
    "jpeg",
    "contrast",
    "color_shift",
)
"""Image distortion kinds understood by :func:`distort`."""

SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
"""Valid distortion severities (1 = mild, 5 = severe)."""

VIDEO_DISTORTIONS: tuple[str, ...] = ("gaussian_blur", "gaussian_noise", "compression", "stutter")
"""Per-video degradations used by :func:`make_video_dataset` (plus ``"reference"``)."""

SPLITS: tuple[str, ...] = ("train", "val", "test")

MOS_COLUMNS: tuple[str, ...] = (
    "path",
    "mos",
    "std",
    "dataset",
    "split",
    "content_id",
    "distortion",
    "severity",
    "scale_low",
    "scale_high",
    "lower_better",
)
"""Columns of every MOS table written by this module (in order)."""

VIDEO_COLUMNS: tuple[str, ...] = (*MOS_COLUMNS, "fps", "frames", "duration_s")
"""Columns of video MOS tables (image columns plus timing)."""

REFERENCE = "reference"
TABLE_NAME = "mos"
VIDEO_CONTENT_OFFSET = 1000
"""Video content ids start here so that they never collide with image content ids."""

_IMAGE_FORMATS = {"png": "png", "jpg": "jpg", "jpeg": "jpg", "bmp": "bmp"}
_SALT = 0x5EED_0F_0A  # mixed into every seed so our streams differ from user rngs

# ----------------------------------------------------------------------------------------
# distortion parameters (index = severity - 1); every sequence is monotone in severity
_BLUR_RADII = (0.8, 1.5, 2.4, 3.6, 5.2)
_NOISE_SIGMAS = (7.0, 13.0, 21.0, 31.0, 45.0)
_JPEG_QUALITIES = (40, 24, 14, 8, 3)
_CONTRAST_KEEP = (0.74, 0.54, 0.38, 0.25, 0.13)
_COLOR_STRENGTH = (0.14, 0.28, 0.44, 0.62, 0.82)
_COLOR_GAINS = np.array([0.35, -0.05, -0.55], dtype=np.float32)
_COLOR_OFFSETS = np.array([0.12, 0.04, -0.08], dtype=np.float32) * 255.0

# video-only parameters
_VIDEO_BASE_CRF = 18
_VIDEO_CRF = (32, 38, 43, 47, 51)
_STUTTER_HOLD = (2, 3, 4, 6, 10)

# MOS model: score at severity 5 (before content modulation) and curve exponent
_MOS_TARGET5 = {
    "gaussian_blur": 1.65,
    "gaussian_noise": 1.60,
    "jpeg": 1.35,
    "contrast": 1.90,
    "color_shift": 1.80,
    "compression": 1.35,
    "stutter": 1.85,
}
_MOS_GAMMA = {
    "gaussian_blur": 0.85,
    "gaussian_noise": 0.95,
    "jpeg": 1.25,
    "contrast": 1.10,
    "color_shift": 1.00,
    "compression": 1.20,
    "stutter": 0.90,
}
_MOS_NOISE_SD = 0.05
_MOS_NOISE_CLIP = 0.10
_MOS_MIN_GAP = 0.05
_REF_MOS_RANGE = (4.3, 4.8)

_WORDS = (
    "QUALITY",
    "vqpipe",
    "Sharp edges",
    "MOS 4.5",
    "0123456789",
    "Lorem ipsum",
    "synthetic",
    "TEXTURE",
    "blur/noise",
    "JPEG q=3",
    "ABCDEFGHIJ",
    "klmnopqrst",
    "#42 @ 10fps",
    "Zebra grid",
)


# ----------------------------------------------------------------------------------------
# helpers: validation and seeding


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_size(size: Sequence[int], *, even: bool = False) -> tuple[int, int]:
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ValueError(f"size must be a (width, height) pair, got {size!r}") from None
    width = _check_int("size[0] (width)", width, 8)
    height = _check_int("size[1] (height)", height, 8)
    if even and (width % 2 or height % 2):
        raise ValueError(f"video size must have even width and height, got {size!r}")
    return width, height


def _check_kind(kind: str, valid: Sequence[str]) -> str:
    if kind not in valid:
        raise ValueError(f"unknown distortion {kind!r}; valid values: {', '.join(valid)}")
    return kind


def _check_severity(severity: object) -> int:
    if isinstance(severity, bool) or severity not in SEVERITIES:
        raise ValueError(f"invalid severity {severity!r}; valid values: {SEVERITIES}")
    return int(severity)  # type: ignore[call-overload]


def _str_key(text: str) -> int:
    """Stable (process-independent) integer key for a string."""
    return zlib.crc32(text.encode("utf-8"))


def _rng(*keys: int | str) -> np.random.Generator:
    """Generator seeded deterministically from integer/string keys (no ``hash()``)."""
    entropy = [_SALT] + [_str_key(k) if isinstance(k, str) else int(k) for k in keys]
    return np.random.default_rng(entropy)


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def _from_float(arr: np.ndarray) -> Image.Image:
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="RGB")


# ----------------------------------------------------------------------------------------
# procedural content


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def _random_colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> np.ndarray:
    return rng.integers(lo, hi, size=3).astype(np.float32)


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Per-pixel blend of colours ``a`` -> ``b`` with weights ``t`` of shape (H, W)."""
    return a[None, None, :] * (1.0 - t[..., None]) + b[None, None, :] * t[..., None]


def _coords(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return xx, yy


def _rotated(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    theta = rng.uniform(0.0, math.pi)
    return xx * math.cos(theta) + yy * math.sin(theta)


def _gradient(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    xx, yy = _coords(width, height)
    u = _rotated(rng, xx, yy)
    u = (u - u.min()) / max(float(u.max() - u.min()), 1e-6)
    cx, cy = rng.uniform(0, width), rng.uniform(0, height)
    r = np.hypot(xx - cx, yy - cy) / math.hypot(width, height)
    base = _blend(_random_colour(rng), _random_colour(rng), u)
    return _blend(np.zeros(3, np.float32), _random_colour(rng), np.clip(r * 1.5, 0, 1)) * 0.35 + (
        base * 0.65
    )


def _grating(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    xx, yy = _coords(width, height)
    period = rng.uniform(5.0, 16.0)
    u = _rotated(rng, xx, yy)
    t = 0.5 + 0.5 * np.sin(2.0 * math.pi * u / period + rng.uniform(0, 2 * math.pi))
    # second, coarser grating modulates the first to avoid a perfectly periodic pattern
    v = _rotated(rng, xx, yy)
    t = t * (0.6 + 0.4 * np.sin(2.0 * math.pi * v / rng.uniform(30.0, 70.0)))
    return _blend(_random_colour(rng, 0, 128), _random_colour(rng, 128, 256), t)


def _checkerboard(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    xx, yy = _coords(width, height)
    cell = rng.uniform(7.0, 20.0)
    theta = rng.uniform(0.0, math.pi / 2)
    u = xx * math.cos(theta) + yy * math.sin(theta)
    v = -xx * math.sin(theta) + yy * math.cos(theta)
    t = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    return _blend(_random_colour(rng, 0, 110), _random_colour(rng, 150, 256), t)


def _smooth_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    out = np.zeros((height, width, 3), np.float32)
    amp_total = 0.0
    for octave, cells in enumerate((4, 9, 20, 45)):
        amp = 0.55**octave
        grid = rng.uniform(0, 255, size=(cells, max(2, cells * width // height), 3))
        layer = Image.fromarray(grid.astype(np.uint8), mode="RGB").resize(
            (width, height), Image.Resampling.BICUBIC
        )
        out += amp * np.asarray(layer, dtype=np.float32)
        amp_total += amp
    out /= amp_total
    # stretch contrast so the noise is not washed out to mid-grey
    mean = out.mean(axis=(0, 1), keepdims=True)
    return np.clip(mean + (out - mean) * 2.2, 0, 255)


_BACKGROUNDS = (_gradient, _grating, _checkerboard, _smooth_noise)
_TEXTURES = (_grating, _checkerboard, _smooth_noise)


def _draw_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    n_shapes = int(rng.integers(5, 13))
    for _ in range(n_shapes):
        kind = int(rng.integers(0, 3))
        fill = tuple(int(c) for c in rng.integers(0, 256, size=3))
        outline = tuple(int(c) for c in rng.integers(0, 256, size=3))
        width = int(rng.integers(0, 4))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx = rng.uniform(0.04, 0.22) * w
        ry = rng.uniform(0.04, 0.22) * h
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        if kind == 0:
            draw.ellipse(box, fill=fill, outline=outline, width=width)
        elif kind == 1:
            draw.rectangle(box, fill=fill, outline=outline, width=width)
        else:
            n_vertices = int(rng.integers(3, 8))
            angles = np.sort(rng.uniform(0, 2 * math.pi, size=n_vertices))
            radii = rng.uniform(0.4, 1.0, size=n_vertices)
            points = [
                (float(cx + rx * r * math.cos(a)), float(cy + ry * r * math.sin(a)))
                for a, r in zip(angles, radii, strict=True)
            ]
            draw.polygon(points, fill=fill, outline=outline, width=max(width, 1))


def _draw_text(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    n_lines = int(rng.integers(1, 4))
    for _ in range(n_lines):
        size = int(rng.integers(max(10, h // 16), max(12, h // 6) + 1))
        text = _WORDS[int(rng.integers(0, len(_WORDS)))]
        dark = bool(rng.integers(0, 2))
        fill = (15, 15, 15) if dark else (245, 245, 245)
        stroke = (245, 245, 245) if dark else (15, 15, 15)
        x = rng.uniform(0, w * 0.55)
        y = rng.uniform(0, h * 0.85)
        draw.text((x, y), text, font=_font(size), fill=fill, stroke_width=1, stroke_fill=stroke)


def make_content_image(
    content_id: int, size: tuple[int, int] = (256, 192), seed: int = 0
) -> Image.Image:
    """Render a deterministic procedural RGB scene.

    The background cycles with ``content_id`` through colour gradient, sinusoidal grating,
    checkerboard and smooth multi-octave noise; every scene also gets a texture patch,
    random ellipses / rectangles / polygons and rendered text, so blur, noise and JPEG
    visibly degrade it.

    Args:
        content_id: Non-negative content index; different ids give different scenes.
        size: ``(width, height)`` in pixels (each >= 8).
        seed: Non-negative global seed.

    Returns:
        An RGB :class:`PIL.Image.Image` of the requested size.
    """
    content_id = _check_int("content_id", content_id, 0)
    seed = _check_int("seed", seed, 0)
    width, height = _check_size(size)
    rng = _rng(seed, content_id, "content")

    arr = _BACKGROUNDS[content_id % len(_BACKGROUNDS)](rng, width, height)
    # a rectangular texture patch (different family from the background when possible)
    texture = _TEXTURES[(content_id // len(_BACKGROUNDS) + content_id) % len(_TEXTURES)]
    pw = int(rng.uniform(0.25, 0.5) * width)
    ph = int(rng.uniform(0.25, 0.5) * height)
    px = int(rng.integers(0, width - pw + 1))
    py = int(rng.integers(0, height - ph + 1))
    arr[py : py + ph, px : px + pw] = texture(rng, pw, ph)

    image = _from_float(arr)
    draw = ImageDraw.Draw(image)
    _draw_shapes(draw, rng, width, height)
    _draw_text(draw, rng, width, height)
    return image


# ----------------------------------------------------------------------------------------
# distortions


def distort(image: Image.Image, kind: str, severity: int, seed: int = 0) -> Image.Image:
    """Apply one synthetic distortion to ``image``.

    Kinds (see :data:`DISTORTIONS`), all monotone in ``severity`` (1..5):

    * ``gaussian_blur``: PIL Gaussian blur, radius 0.8 .. 5.2 px;
    * ``gaussian_noise``: additive i.i.d. Gaussian noise, sigma 7 .. 45 (0..255 scale),
      seeded from ``seed``, the severity and a CRC of the pixels;
    * ``jpeg``: in-memory JPEG re-encode at quality 40 .. 3;
    * ``contrast``: blend toward the mean grey level, keeping 74 % .. 13 % of the contrast;
    * ``color_shift``: warm tint via per-channel gains and offsets of growing strength.

    Args:
        image: Input image (converted to RGB).
        kind: One of :data:`DISTORTIONS`.
        severity: One of :data:`SEVERITIES`.
        seed: Non-negative seed (only used by the noise distortion).

    Returns:
        A new RGB image of the same size.

    Raises:
        ValueError: For an unknown ``kind`` or ``severity``.
    """
    _check_kind(kind, DISTORTIONS)
    severity = _check_severity(severity)
    seed = _check_int("seed", seed, 0)
    idx = severity - 1
    if image.mode != "RGB":
        image = image.convert("RGB")

    if kind == "gaussian_blur":
        return image.filter(ImageFilter.GaussianBlur(radius=_BLUR_RADII[idx]))
    if kind == "jpeg":
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=_JPEG_QUALITIES[idx])
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            return decoded.convert("RGB")

    arr = _to_rgb_array(image).astype(np.float32)
    if kind == "gaussian_noise":
        rng = _rng(seed, kind, severity, zlib.crc32(arr.astype(np.uint8).tobytes()))
        noise = rng.standard_normal(arr.shape, dtype=np.float32) * _NOISE_SIGMAS[idx]
        return _from_float(arr + noise)
    if kind == "contrast":
        grey = float((arr @ np.array([0.299, 0.587, 0.114], np.float32)).mean())
        return _from_float(grey + (arr - grey) * _CONTRAST_KEEP[idx])
    # color_shift
    strength = _COLOR_STRENGTH[idx]
    return _from_float(arr * (1.0 + strength * _COLOR_GAINS) + strength * _COLOR_OFFSETS)


# ----------------------------------------------------------------------------------------
# MOS model


def _luma(arr: np.ndarray) -> np.ndarray:
    return arr.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _content_stats(image: Image.Image) -> tuple[float, float]:
    """Return (reference MOS, detail in [0, 1]) computed from the reference pixels."""
    y = _luma(_to_rgb_array(image)) / 255.0
    rms = float(y.std())
    lap = np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])
    # calibrated on the procedural scenes: mean |Laplacian| spans ~0.04..0.3, RMS ~0.13..0.3
    detail = math.log(max(float(lap.mean()), 1e-6) / 0.04) / math.log(0.30 / 0.04)
    detail = float(np.clip(detail, 0.0, 1.0))
    frac = float(np.clip((rms - 0.13) / 0.17, 0.0, 1.0))
    lo, hi = _REF_MOS_RANGE
    ref = lo + 0.05 + (hi - lo - 0.1) * frac
    return ref, detail


def _clean_mos(ref_mos: float, detail: float, kind: str, severity: int) -> float:
    if kind == "gaussian_blur":
        factor = 0.9 + 0.2 * detail  # detailed content loses more when blurred
    elif kind == "gaussian_noise":
        factor = 1.1 - 0.2 * detail  # texture masks noise
    else:
        factor = 1.0
    drop = (ref_mos - _MOS_TARGET5[kind]) * factor * (severity / 5.0) ** _MOS_GAMMA[kind]
    return ref_mos - drop


def _mos_noise(rng: np.random.Generator) -> float:
    return float(np.clip(rng.normal(0.0, _MOS_NOISE_SD), -_MOS_NOISE_CLIP, _MOS_NOISE_CLIP))


def _rating_std(mos: float, rng: np.random.Generator) -> float:
    """Inverted-U rating spread: ~0.3 at the ends of the scale, ~0.85 mid-scale."""
    core = 0.3 + 0.55 * (1.0 - ((mos - 3.0) / 2.0) ** 2)
    return round(float(np.clip(core + rng.uniform(-0.05, 0.05), 0.3, 0.9)), 4)


def _score_content(
    seed: int,
    content_id: int,
    ref_mos: float,
    detail: float,
    items: Iterable[tuple[str, int]],
) -> dict[tuple[str, int], tuple[float, float]]:
    """MOS and std for the reference and every (kind, severity) of one content.

    Returns a mapping ``(kind, severity) -> (mos, std)``; the reference is keyed
    ``("reference", 0)``.  MOS is strictly decreasing in severity within a kind and strictly
    below the reference.
    """
    ref_noisy = ref_mos + _mos_noise(_rng(seed, content_id, "mos", REFERENCE))
    ref_noisy = round(float(np.clip(ref_noisy, *_REF_MOS_RANGE)), 4)
    scores: dict[tuple[str, int], float] = {(REFERENCE, 0): ref_noisy}
    by_kind: dict[str, list[int]] = {}
    for kind, severity in items:
        by_kind.setdefault(kind, []).append(severity)
    for kind, severities in by_kind.items():
        previous = ref_noisy
        for severity in sorted(severities):
            value = _clean_mos(ref_mos, detail, kind, severity)
            value += _mos_noise(_rng(seed, content_id, "mos", kind, severity))
            value = min(value, previous - _MOS_MIN_GAP)
            value = round(float(np.clip(value, 1.0, 5.0)), 4)
            scores[(kind, severity)] = value
            previous = value
    return {
        key: (mos, _rating_std(mos, _rng(seed, content_id, "std", key[0], key[1])))
        for key, mos in scores.items()
    }


# ----------------------------------------------------------------------------------------
# splits and table writing


def _check_fractions(split_fractions: Sequence[float]) -> tuple[float, float, float]:
    try:
        fractions = tuple(float(f) for f in split_fractions)
    except (TypeError, ValueError):
        raise ValueError(f"split_fractions must be 3 numbers, got {split_fractions!r}") from None
    if len(fractions) != 3 or any(not math.isfinite(f) or f < 0 for f in fractions):
        raise ValueError(
            f"split_fractions must be 3 non-negative numbers (train, val, test), "
            f"got {split_fractions!r}"
        )
    total = sum(fractions)
    if total <= 0:
        raise ValueError(f"split_fractions must not all be zero, got {split_fractions!r}")
    return fractions[0] / total, fractions[1] / total, fractions[2] / total


def split_counts(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """How many of ``n`` items (or contents) go to train, val and test: the one rounding rule
    of every split (here and :func:`vqpipe.train.mos_readers.assign_splits`). Largest-remainder
    rounding; every split with a positive fraction gets >= 1 item
        whenever ``n`` is at least the number of such splits."""
    raw = [n * f for f in fractions]
    counts = [math.floor(r) for r in raw]
    order = sorted(range(3), key=lambda i: (-round(raw[i] - counts[i], 9), i))
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    positive = [i for i in range(3) if fractions[i] > 0]
    if n >= len(positive):
        for i in positive:
            if counts[i] == 0:
                donor = max(range(3), key=lambda j: (counts[j], -j))
                counts[donor] -= 1
                counts[i] += 1
    return counts


def _assign_splits(
    content_ids: Sequence[int], fractions: tuple[float, float, float], seed: int, tag: str
) -> dict[int, str]:
    ids = sorted(set(content_ids))
    counts = split_counts(len(ids), fractions)
    order = _rng(seed, tag, "split").permutation(len(ids))
    split_of: dict[int, str] = {}
    start = 0
    for name, count in zip(SPLITS, counts, strict=True):
        for pos in order[start : start + count]:
            split_of[ids[int(pos)]] = name
        start += count
    return split_of


def _write_table(table: pd.DataFrame, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    table.to_parquet(directory / f"{TABLE_NAME}.parquet", index=False)
    table.to_csv(directory / f"{TABLE_NAME}.csv", index=False)


def _finish_table(rows: list[dict], columns: Sequence[str]) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=list(columns))
    table["content_id"] = table["content_id"].astype("int64")
    table["severity"] = table["severity"].astype("int64")
    for col in ("mos", "std", "scale_low", "scale_high"):
        table[col] = table[col].astype("float64")
    table["lower_better"] = table["lower_better"].astype(bool)
    return table


def _check_choices(
    name: str, values: Iterable, valid: Sequence, allow_empty: bool = False
) -> tuple:
    if isinstance(values, (str, bytes)):
        values = (values,)
    values = tuple(values)
    if not values and not allow_empty:
        raise ValueError(f"{name} must not be empty; valid values: {tuple(valid)}")
    for value in values:
        if isinstance(value, bool) or value not in valid:
            raise ValueError(f"invalid {name} value {value!r}; valid values: {tuple(valid)}")
    if len(set(values)) != len(values):
        raise ValueError(f"{name} contains duplicates: {values!r}")
    return values


# ----------------------------------------------------------------------------------------
# image dataset


def _mos_row(
    path: Path,
    mos: float,
    std: float,
    dataset: str,
    split: str,
    content_id: int,
    kind: str,
    severity: int,
) -> dict:
    """One row of :data:`MOS_COLUMNS` (our synthetic MOS is on 1..5, higher is better)."""
    return {
        "path": str(path),
        "mos": mos,
        "std": std,
        "dataset": dataset,
        "split": split,
        "content_id": content_id,
        "distortion": kind,
        "severity": severity,
        "scale_low": 1.0,
        "scale_high": 5.0,
        "lower_better": False,
    }


def _build_image_dataset(
    media_root: Path,
    table_dir: Path,
    *,
    n_contents: int,
    distortions: Iterable[str],
    severities: Iterable[int],
    include_references: bool,
    size: tuple[int, int],
    seed: int,
    dataset: str,
    split_fractions: Sequence[float],
    image_format: str,
) -> pd.DataFrame:
    n_contents = _check_int("n_contents", n_contents, 1)
    seed = _check_int("seed", seed, 0)
    size = _check_size(size)
    kinds = _check_choices("distortions", distortions, DISTORTIONS, allow_empty=True)
    levels = _check_choices("severities", severities, SEVERITIES, allow_empty=not kinds)
    if not kinds and not include_references:
        raise ValueError("nothing to generate: no distortions and include_references=False")
    fractions = _check_fractions(split_fractions)
    fmt = str(image_format).lower().lstrip(".")
    if fmt not in _IMAGE_FORMATS:
        raise ValueError(f"image_format must be one of {sorted(_IMAGE_FORMATS)}, got {fmt!r}")
    ext = _IMAGE_FORMATS[fmt]
    save_kwargs: dict = {"compress_level": 1} if ext == "png" else {}
    if ext == "jpg":
        save_kwargs = {"quality": 95, "subsampling": 0}

    image_dir = media_root.resolve() / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    split_of = _assign_splits(range(n_contents), fractions, seed, "images")
    items = [(kind, sev) for kind in kinds for sev in sorted(levels)]

    rows: list[dict] = []
    for content_id in range(n_contents):
        reference = make_content_image(content_id, size=size, seed=seed)
        ref_mos, detail = _content_stats(reference)
        scores = _score_content(seed, content_id, ref_mos, detail, items)
        entries: list[tuple[str, int, Image.Image]] = []
        if include_references:
            entries.append((REFERENCE, 0, reference))
        for kind, sev in items:
            entries.append((kind, sev, distort(reference, kind, sev, seed=seed)))
        for kind, sev, image in entries:
            stem = (
                f"c{content_id:03d}_ref"
                if kind == REFERENCE
                else f"c{content_id:03d}_{kind}_s{sev}"
            )
            path = image_dir / f"{stem}.{ext}"
            image.save(path, **save_kwargs)
            mos, std = scores[(kind, sev)]
            rows.append(
                _mos_row(path, mos, std, dataset, split_of[content_id], content_id, kind, sev)
            )
    table = _finish_table(rows, MOS_COLUMNS)
    _write_table(table, table_dir)
    return table


def make_image_dataset(
    root: str | os.PathLike,
    n_contents: int = 12,
    distortions: Iterable[str] = DISTORTIONS,
    severities: Iterable[int] = SEVERITIES,
    include_references: bool = True,
    size: tuple[int, int] = (256, 192),
    seed: int = 0,
    dataset: str = "synthetic-iqa",
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
    image_format: str = "png",
) -> pd.DataFrame:
    """Build a synthetic image-quality dataset under ``root``.

    Writes ``root/images/c{content:03d}_ref.{ext}`` and
    ``root/images/c{content:03d}_{distortion}_s{severity}.{ext}``, plus the table to
    ``root/mos.parquet`` and ``root/mos.csv``.

    Splits are by content (every image of a content shares a split), deterministic in
    ``seed``, and every split with a positive fraction is non-empty when ``n_contents >= 3``.

    Args:
        root: Output directory (created if needed).
        n_contents: Number of procedural scenes (>= 1).
        distortions: Subset of :data:`DISTORTIONS`.
        severities: Subset of :data:`SEVERITIES`.
        include_references: Also write the undistorted reference of each content.
        size: ``(width, height)`` of every image.
        seed: Non-negative seed; equal arguments give byte-identical files and tables.
        dataset: Value of the ``dataset`` column.
        split_fractions: ``(train, val, test)`` weights (normalised to sum to 1).
        image_format: ``"png"`` (default), ``"jpg"``/``"jpeg"`` (quality 95) or ``"bmp"``.

    Returns:
        The table, with columns :data:`MOS_COLUMNS` (``path`` is absolute; MOS on 1..5,
        higher is better; references have ``distortion="reference"`` and ``severity=0``).

    Raises:
        ValueError: For invalid arguments.
    """
    root = Path(root)
    return _build_image_dataset(
        root,
        root,
        n_contents=n_contents,
        distortions=distortions,
        severities=severities,
        include_references=include_references,
        size=size,
        seed=seed,
        dataset=dataset,
        split_fractions=split_fractions,
        image_format=image_format,
    )


# ----------------------------------------------------------------------------------------
# video dataset


def _import_av():
    try:
        import av
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "make_video_dataset needs PyAV (the 'av' package); install it with "
            "pip install 'vqpipe[video]'"
        ) from exc
    return av


def _video_plan(index: int) -> tuple[str, int]:
    """Degradation and severity of the ``index``-th video (cycles over kinds, spreads
    severities so that a handful of videos already covers the MOS range)."""
    kinds = (REFERENCE, *VIDEO_DISTORTIONS)
    kind = kinds[index % len(kinds)]
    if kind == REFERENCE:
        return kind, 0
    block = index // len(kinds)
    return kind, (2 * (index % len(kinds)) + 3 * block) % 5 + 1


def _video_frames(
    content_id: int,
    n_frames: int,
    size: tuple[int, int],
    seed: int,
    kind: str,
    severity: int,
) -> list[np.ndarray]:
    """RGB frames: a content image panned under a fixed window plus a bouncing ball."""
    width, height = size
    canvas = make_content_image(content_id, size=(2 * width, height + height // 2), seed=seed)
    rng = _rng(seed, content_id, "motion")
    pan_x = width * rng.uniform(0.5, 1.0)
    pan_y = (height // 2) * rng.uniform(0.3, 1.0)
    radius = max(4, int(min(width, height) * rng.uniform(0.08, 0.14)))
    bx, by = rng.uniform(radius, width - radius), rng.uniform(radius, height - radius)
    vx, vy = rng.uniform(3, 7) * rng.choice([-1, 1]), rng.uniform(2, 5) * rng.choice([-1, 1])
    colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
    span_x, span_y = width - 2 * radius, height - 2 * radius

    def bounce(p0: float, v: float, t: int, span: float) -> float:
        p = (p0 - radius + v * t) % (2 * span)
        return radius + (p if p <= span else 2 * span - p)

    frames: list[np.ndarray] = []
    denom = max(1, n_frames - 1)
    for t in range(n_frames):
        source_t = t
        if kind == "stutter":
            hold = _STUTTER_HOLD[severity - 1]
            source_t = (t // hold) * hold
        x = round(pan_x * source_t / denom)
        y = round(pan_y * (0.5 - 0.5 * math.cos(math.pi * source_t / denom)))
        frame = canvas.crop((x, y, x + width, y + height))
        cx, cy = bounce(bx, vx, source_t, span_x), bounce(by, vy, source_t, span_y)
        ImageDraw.Draw(frame).ellipse(
            [cx - radius, cy - radius, cx + radius, cy + radius],
            fill=colour,
            outline=(0, 0, 0),
            width=2,
        )
        if kind in ("gaussian_blur", "gaussian_noise"):
            frame = distort(frame, kind, severity, seed=seed)
        frames.append(np.asarray(frame.convert("RGB")))
    return frames


def _encode_h264(path: Path, frames: Sequence[np.ndarray], fps: int, crf: int) -> None:
    av = _import_av()
    height, width = frames[0].shape[:2]
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        stream.time_base = Fraction(1, fps)
        stream.codec_context.thread_count = 1
        # x264's SIMD paths made output bytes depend on heap state (observed with PyAV 18 /
        # x264 core 165); single thread + asm=0 gives byte-identical files at ~2x the cost.
        stream.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "threads": "1",
            "x264-params": "asm=0",
        }
        for index, array in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24").reformat(format="yuv420p")
            frame.pts = index
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def _build_video_dataset(
    media_root: Path,
    table_dir: Path,
    *,
    n_videos: int,
    seconds: float,
    fps: int,
    size: tuple[int, int],
    seed: int,
    dataset: str,
    split_fractions: Sequence[float] = (0.7, 0.1, 0.2),
) -> pd.DataFrame:
    n_videos = _check_int("n_videos", n_videos, 1)
    fps = _check_int("fps", fps, 1)
    seed = _check_int("seed", seed, 0)
    size = _check_size(size, even=True)
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    n_frames = max(1, round(seconds * fps))
    fractions = _check_fractions(split_fractions)
    _import_av()  # fail early with the install hint

    video_dir = media_root.resolve() / "videos"
    video_dir.mkdir(parents=True, exist_ok=True)
    content_ids = [VIDEO_CONTENT_OFFSET + i for i in range(n_videos)]
    split_of = _assign_splits(content_ids, fractions, seed, "videos")

    rows: list[dict] = []
    for index, content_id in enumerate(content_ids):
        kind, severity = _video_plan(index)
        frames = _video_frames(content_id, n_frames, size, seed, kind, severity)
        reference = make_content_image(content_id, size=size, seed=seed)
        ref_mos, detail = _content_stats(reference)
        items = [] if kind == REFERENCE else [(kind, severity)]
        mos, std = _score_content(seed, content_id, ref_mos, detail, items)[(kind, severity)]
        crf = _VIDEO_CRF[severity - 1] if kind == "compression" else _VIDEO_BASE_CRF
        stem = f"v{index:03d}_ref" if kind == REFERENCE else f"v{index:03d}_{kind}_s{severity}"
        path = video_dir / f"{stem}.mp4"
        _encode_h264(path, frames, fps, crf)
        row = _mos_row(path, mos, std, dataset, split_of[content_id], content_id, kind, severity)
        rows.append({**row, "fps": fps, "frames": n_frames, "duration_s": n_frames / fps})
    table = _finish_table(rows, VIDEO_COLUMNS)
    table["fps"] = table["fps"].astype("int64")
    table["frames"] = table["frames"].astype("int64")
    table["duration_s"] = table["duration_s"].astype("float64")
    _write_table(table, table_dir)
    return table


def make_video_dataset(
    root: str | os.PathLike,
    n_videos: int = 6,
    seconds: float = 3.0,
    fps: int = 10,
    size: tuple[int, int] = (160, 128),
    seed: int = 0,
    dataset: str = "synthetic-vqa",
) -> pd.DataFrame:
    """Build a synthetic video-quality dataset of short H.264 mp4 clips under ``root``.

    Each clip pans a window over a procedural content image and adds a bouncing ball.
    Video ``i`` gets degradation ``("reference", *VIDEO_DISTORTIONS)[i % 5]``
    (blur, noise, heavy compression via high CRF, or stutter / frame freezing) at a
    severity spread over 1..5.  Files go to ``root/videos/v{i:03d}_{kind}_s{sev}.mp4``
    (``v{i:03d}_ref.mp4`` for references), the table to ``root/mos.parquet`` and
    ``root/mos.csv``.  Video content ids start at :data:`VIDEO_CONTENT_OFFSET` so they
    never collide with image content ids; splits are by content (70/10/20).

    Encoding uses PyAV with ``libx264`` (``yuv420p``, single thread, no SIMD), so equal
    arguments give an identical table and, with the same PyAV/x264 build, byte-identical
    files.

    Args:
        root: Output directory (created if needed).
        n_videos: Number of clips (>= 1).
        seconds: Clip length in seconds (> 0); ``frames = round(seconds * fps)``.
        fps: Frame rate (positive integer).
        size: ``(width, height)``; both must be even.
        seed: Non-negative seed.
        dataset: Value of the ``dataset`` column.

    Returns:
        The table, with columns :data:`VIDEO_COLUMNS`.

    Raises:
        ValueError: For invalid arguments.
        ImportError: If PyAV is not installed.
    """
    root = Path(root)
    return _build_video_dataset(
        root,
        root,
        n_videos=n_videos,
        seconds=seconds,
        fps=fps,
        size=size,
        seed=seed,
        dataset=dataset,
    )


# ----------------------------------------------------------------------------------------
# combined corpus


def make_corpus(
    root: str | os.PathLike,
    n_contents: int = 12,
    n_videos: int = 6,
    seed: int = 0,
) -> pd.DataFrame:
    """Build images and videos under ``root`` and write a combined table.

    Layout::

        root/images/*.png           root/images/mos.parquet, mos.csv  (image sub-table)
        root/videos/*.mp4           root/videos/mos.parquet, mos.csv  (video sub-table)
        root/mos.parquet, mos.csv   combined table

    The sub-tables are written next to their media so nothing is clobbered.  The combined
    table has the video columns plus ``media_type`` (``"image"`` / ``"video"``); image rows
    have ``frames=1`` and ``NaN`` ``fps`` / ``duration_s``.  Pass ``n_videos=0`` to skip
    videos (no PyAV needed).

    Args:
        root: Output directory.
        n_contents: Image contents (see :func:`make_image_dataset`).
        n_videos: Number of videos (see :func:`make_video_dataset`); 0 to skip.
        seed: Non-negative seed.

    Returns:
        The combined table.
    """
    root = Path(root)
    n_videos = _check_int("n_videos", n_videos, 0)
    images = _build_image_dataset(
        root,
        root / "images",
        n_contents=n_contents,
        distortions=DISTORTIONS,
        severities=SEVERITIES,
        include_references=True,
        size=(256, 192),
        seed=seed,
        dataset="synthetic-iqa",
        split_fractions=(0.7, 0.1, 0.2),
        image_format="png",
    )
    images = images.assign(fps=np.nan, frames=1, duration_s=np.nan, media_type="image")
    parts = [images]
    if n_videos:
        videos = _build_video_dataset(
            root,
            root / "videos",
            n_videos=n_videos,
            seconds=3.0,
            fps=10,
            size=(160, 128),
            seed=seed,
            dataset="synthetic-vqa",
        )
        parts.append(videos.assign(media_type="video"))
    table = pd.concat(parts, ignore_index=True)
    table["fps"] = table["fps"].astype("float64")
    table["frames"] = table["frames"].astype("int64")
    table = table[[*VIDEO_COLUMNS, "media_type"]]
    _write_table(table, root)
    return table
