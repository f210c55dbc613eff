"""JPEG decoding on the scorer's device (``--scorer ...:decode=gpu``): header checks without
decoding, batched decode with torchvision (nvJPEG on CUDA, libjpeg-turbo on the CPU), EXIF
orientation and the scorers' resize geometries on the device.

Only plain JPEGs take this path (:func:`device_header`): 8-bit baseline, extended or
progressive Huffman frames of 1 or 3 components stored as greyscale or YCbCr, complete (the
primary image's EOI is present), within the limits, not an extreme aspect ratio. Everything
else is decoded by Pillow (:func:`~vqpipe.media.decode.decode_image`) as before, so its
results and error messages stay those of the CPU path; so is a plain JPEG that the device
fails to decode (the pipeline retries it on the CPU). The header fields are read the way Pillow
reads them (the first frame header, EXIF orientation from the first Exif segment's IFD0, else
from XMP's ``tiff:Orientation``); anything unusual (two frame headers, a second Exif segment,
malformed EXIF, bytes between segments) is left to Pillow rather than second-guessed.

Torch and torchvision are imported inside the functions that decode or resize: reading a
header imports neither.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from PIL import Image

from vqpipe.media.decode import MediaLimits
from vqpipe.media.image import is_extreme, resized_size

if TYPE_CHECKING:
    import torch

JPEG_MAGIC = b"\xff\xd8\xff"
"""The first bytes of every JPEG file (SOI, then a marker)."""

_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_DEVICE_SOF = {0xC0, 0xC1, 0xC2}  # Huffman baseline, extended sequential, progressive
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RST0-7: markers without a length
_ORIENTATION_TAG = 0x0112
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')  # Pillow's pattern
_TRANSPOSING = (5, 6, 7, 8)

DEVICE_BATCH_PIXELS = 256 * 1024**2
"""At most this many stored pixels per batched decode call (768 MiB of uint8 RGB output)."""


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG's markers say before its scan data: the stored size and how to decode it."""

    width: int  # as stored (before EXIF orientation)
    height: int
    precision: int  # bits per sample
    components: int  # 1 greyscale, 3 YCbCr or RGB, 4 CMYK / YCCK
    frame: int  # the SOF marker: 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ...
    orientation: int  # EXIF orientation as Pillow reads it (1 when there is none)
    stored_rgb: bool  # 3 components stored as RGB (Adobe transform 0, or ids 'R', 'G', 'B')
    complete: bool  # the primary image's EOI follows its first scan

    @property
    def upright_size(self) -> tuple[int, int]:
        """(width, height) once turned upright, as :func:`~vqpipe.media.image.upright_size`."""
        if self.orientation in _TRANSPOSING:
            return self.height, self.width
        return self.width, self.height

    @property
    def device_decodable(self) -> bool:
        """A frame that torchvision decodes (nvJPEG on CUDA) as Pillow does."""
        return (
            self.frame in _DEVICE_SOF
            and self.precision == 8
            and self.components in (1, 3)
            and not self.stored_rgb
            and self.complete
            and self.width > 0
            and self.height > 0
        )


def is_jpeg(data: bytes) -> bool:
    return bytes(data[:3]) == JPEG_MAGIC


def parse_jpeg_header(data: bytes) -> JpegHeader | None:
    """The header of a JPEG, read from its markers up to the first scan; None when ``data`` is
    not a JPEG, is cut before its first scan, or is laid out in a way this reader leaves to
    Pillow (see the module docstring). Cheap: no entropy-coded data is read, except a search
    for the EOI marker."""
    data = bytes(data) if not isinstance(data, bytes) else data
    if not data.startswith(JPEG_MAGIC):
        return None
    pos, size = 2, len(data)
    frame: tuple[int, bytes] | None = None
    exif: bytes | None = None
    xmp: bytes | None = None
    jfif, adobe = False, None
    while True:
        if pos + 1 >= size or data[pos] != 0xFF:
            return None  # cut, or bytes between segments: Pillow's call
        while pos < size and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos + 2 >= size:
            return None
        marker = data[pos]
        pos += 1
        if marker in _STANDALONE:
            continue
        if marker in (0x00, 0xD8, 0xD9):  # stuffed byte, SOI again, EOI before any scan
            return None
        length = int.from_bytes(data[pos : pos + 2], "big")
        if length < 2 or pos + length > size:
            return None
        body = data[pos + 2 : pos + length]
        pos += length
        if marker == 0xDA:  # SOS: the scan data starts here
            break
        if marker in _SOF:
            if frame is not None:
                return None  # two frame headers: decoders disagree on which one counts
            frame = (marker, body)
        elif marker == 0xE0 and body.startswith(b"JFIF"):
            jfif = True
        elif marker == 0xE1 and body.startswith(b"Exif\0\0"):
            if exif is not None:
                return None  # Pillow joins Exif segments; leave that to it
            exif = body[6:]
        elif marker == 0xE1 and body.startswith(_XMP):
            xmp = body[len(_XMP) :]  # the last one, as Pillow keeps it
        elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
            adobe = body[11]
    if frame is None:
        return None
    marker, body = frame
    if len(body) < 6:
        return None
    components = body[5]
    if len(body) < 6 + 3 * components:
        return None
    orientation = _orientation(exif, xmp)
    if orientation is None:
        return None
    ids = tuple(body[6 + 3 * k] for k in range(components))
    # libjpeg's colour-space guess for 3 components (jdapimin.c default_decompress_parms)
    stored_rgb = (
        components == 3 and not jfif and (adobe == 0 or (adobe is None and ids == (82, 71, 66)))
    )
    return JpegHeader(
        width=int.from_bytes(body[3:5], "big"),
        height=int.from_bytes(body[1:3], "big"),
        precision=body[0],
        components=components,
        frame=marker,
        orientation=orientation,
        stored_rgb=stored_rgb,
        complete=data.find(b"\xff\xd9", pos) >= 0,
    )


def _orientation(exif: bytes | None, xmp: bytes | None) -> int | None:
    """Pillow's ``getexif().get(Orientation, 1)``: IFD0's tag, else XMP's ``tiff:Orientation``;
    None for EXIF this reader does not parse exactly as Pillow would (left to Pillow)."""
    value = None
    if exif is not None:
        order = {b"II": "little", b"MM": "big"}.get(exif[:2])
        if order is None or len(exif) < 8 or int.from_bytes(exif[2:4], order) != 42:
            return None

        def number(at: int, width: int) -> int:
            return int.from_bytes(exif[at : at + width], order)  # type: ignore[arg-type]

        ifd = number(4, 4)
        if ifd + 2 > len(exif):
            return None
        count = number(ifd, 2)
        if ifd + 2 + 12 * count > len(exif):
            return None
        for k in range(count):
            entry = ifd + 2 + 12 * k
            if number(entry, 2) == _ORIENTATION_TAG:
                if number(entry + 2, 2) != 3 or number(entry + 4, 4) != 1:  # one SHORT
                    return None
                value = number(entry + 8, 2)
                break
    if value is None and xmp:
        match = _XMP_ORIENTATION.search(xmp)
        value = int(match[2]) if match else None
    return 1 if value is None else value


def device_header(data: bytes, limits: MediaLimits) -> JpegHeader | None:
    """The header of a JPEG that may be decoded on the device: plain (see
    :attr:`JpegHeader.device_decodable`), within ``limits.max_pixels`` and Pillow's own
    decompression-bomb limit (the CPU path refuses those with its own message), not an
    extreme aspect ratio (the CPU preprocessors bound those specially). None: decode on the
    CPU."""
    if not is_jpeg(data) or (limits.max_bytes is not None and len(data) > limits.max_bytes):
        return None
    header = parse_jpeg_header(data)
    if header is None or not header.device_decodable:
        return None
    pixels = header.width * header.height
    for limit in (limits.max_pixels, Image.MAX_IMAGE_PIXELS):
        if limit is not None and pixels > limit:
            return None
    if is_extreme(header.width, header.height):
        return None
    return header


def decode_jpegs(
    datas: Sequence[bytes],
    device: str | torch.device = "cpu",
    transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor | None], list[str | None]]:
    """Decode JPEGs on ``device``: uint8 [3, H, W] tensors, upright by their EXIF orientation
    (then through ``transform``, batch by batch, so that only one batch of full-size images is
    held at a time), and per item the reason it could not be decoded there (its tensor then
    None).

    Items whose header is not :attr:`~JpegHeader.device_decodable` are refused unread. The rest
    are decoded in batches of at most :data:`DEVICE_BATCH_PIXELS` (one torchvision call each:
    on CUDA, batched nvJPEG); a batch that fails (torchvision returns nothing then) is retried
    item by item, so one bad file costs only itself. Greyscale comes back as RGB (libjpeg's
    replication, as Pillow's ``convert("RGB")``)."""
    import torch

    n = len(datas)
    images: list[torch.Tensor | None] = [None] * n
    errors: list[str | None] = [None] * n
    headers: list[JpegHeader | None] = [None] * n
    todo = []
    for i, data in enumerate(datas):
        header = parse_jpeg_header(data)
        if header is None or not header.device_decodable:
            errors[i] = "not a JPEG the device decodes (left to Pillow)"
        else:
            headers[i] = header
            todo.append(i)
    for chunk in _chunks(todo, [headers[i] for i in todo]):
        # a copy: a tensor over read-only bytes warns, and silencing warnings is not thread-safe
        tensors = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in chunk]
        try:
            decoded = _decode(tensors, device)
        except Exception:  # one bad file fails the whole call: find it
            decoded = []
            for i, tensor in zip(chunk, tensors, strict=True):
                try:
                    decoded.extend(_decode([tensor], device))
                except Exception as exc:
                    errors[i] = f"{type(exc).__name__}: {exc}".strip()
                    decoded.append(None)
        for i, image in zip(chunk, decoded, strict=True):
            header = headers[i]
            assert header is not None
            if image is None:
                continue
            if tuple(image.shape) != (3, header.height, header.width):
                errors[i] = (
                    f"decoded {tuple(image.shape)}, header says {header.width}x{header.height}"
                )
                continue
            try:
                image = orient(image, header.orientation)
                images[i] = image if transform is None else transform(image)
            except Exception as exc:  # e.g. out of device memory for one big image
                errors[i] = f"{type(exc).__name__}: {exc}"
        del decoded
    return images, errors


def _decode(tensors: list[torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    out = decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device)
    return list(out)


def _chunks(rows: list[int], headers: list[JpegHeader | None]) -> list[list[int]]:
    chunks: list[list[int]] = []
    total = 0
    for row, header in zip(rows, headers, strict=True):
        assert header is not None
        pixels = header.width * header.height
        if not chunks or total + pixels > DEVICE_BATCH_PIXELS:
            chunks.append([])
            total = 0
        chunks[-1].append(row)
        total += pixels
    return chunks


def orient(image: torch.Tensor, orientation: int) -> torch.Tensor:
    """[C, H, W] turned upright by an EXIF orientation, as Pillow's ``exif_transpose``
    (2-8; any other value leaves it as it is)."""
    import torch

    if orientation == 2:  # FLIP_LEFT_RIGHT
        return image.flip(-1)
    if orientation == 3:  # ROTATE_180
        return image.flip(-2, -1)
    if orientation == 4:  # FLIP_TOP_BOTTOM
        return image.flip(-2)
    if orientation == 5:  # TRANSPOSE
        return image.transpose(-2, -1)
    if orientation == 6:  # ROTATE_270 (counter-clockwise, i.e. 90° clockwise)
        return torch.rot90(image, -1, dims=(-2, -1))
    if orientation == 7:  # TRANSVERSE
        return torch.rot90(image, 2, dims=(-2, -1)).transpose(-2, -1)
    if orientation == 8:  # ROTATE_90 (counter-clockwise)
        return torch.rot90(image, 1, dims=(-2, -1))
    return image


def _resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """float [1, C, H, W] → [1, C, height, width], one axis at a time as Pillow does, rounded
    and clipped to 8 bits in between: bicubic with antialias, torch's port of Pillow's filter
    (a = -0.5, support widened by the reduction factor). Pillow 13 shrinks an image more than
    twice as tall as wide height first (its own cost rule; measured on the shrinks our
    preprocessors make, where ``H > 2W`` splits its choice exactly), others width first."""
    rows, cols = x.shape[-2:]
    if height < rows and rows > 2 * cols:
        x = _resize_axis(x, height, cols)
    if x.shape[-1] != width:
        x = _resize_axis(x if x.shape[-2] == rows else _to_levels(x), x.shape[-2], width)
    if x.shape[-2] != height:
        x = _resize_axis(_to_levels(x), height, width)
    return x


def _resize_axis(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    import torch.nn.functional as F

    if tuple(x.shape[-2:]) == (height, width):
        return x
    return F.interpolate(
        x, size=(height, width), mode="bicubic", align_corners=False, antialias=True
    )


def _to_levels(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    import torch

    return _to_levels(x).to(torch.uint8).contiguous()


def resize_crop(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 [3, H, W] → uint8 [3, size, size] on the image's device: shortest side → ``size``
    (torchvision ``Resize(size)``'s output size), centre crop (``CenterCrop``'s offsets) — the
    geometry of :class:`~vqpipe.scorers.gamma.GammaPreprocessor`."""
    height, width = image.shape[-2:]
    new_w, new_h = resized_size(int(width), int(height), size)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)  # as CenterCrop
    x = _resize(image[None].float(), new_h, new_w)
    return _to_uint8(x[0, :, top : top + size, left : left + size])


def pad_resize_crop(
    image: torch.Tensor, size: int, crop: int, background: tuple[int, ...]
) -> torch.Tensor:
    """uint8 [3, H, W] → uint8 [3, crop, crop] on the image's device: padded to a square of
    ``background`` with the image centred (``expand2square``), resized to ``size``, centre
    crop — the geometry of :meth:`~vqpipe.models.mplug_owl2.MPLUGOwl2ImageProcessor.to_uint8`.

    The square is never built: every output of a resize pass over a constant stretch is that
    constant, so the width pass runs on the image's own rows (a tall image: as a matrix
    product with the resize weights of its columns' positions in the square), and only the
    height pass sees the square's rows (O(side · size) memory, not side²)."""
    import torch

    if crop > size:
        raise ValueError(f"crop {crop} larger than the resized image {size}x{size}")
    height, width = (int(s) for s in image.shape[-2:])
    side = max(height, width)
    x = image[None].float()  # [1, 3, H, W]
    fill = torch.tensor(background, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    if width >= height:  # background rows above and below
        x = _to_levels(_resize_axis(x, height, size))  # [1, 3, H, size]
        square = fill.expand(1, x.shape[1], side, size).clone()  # [1, 3, side, size]
        top = (side - height) // 2
        square[..., top : top + height, :] = x
    else:  # background columns left and right: the width pass of the square's rows
        left = (side - width) // 2
        basis = torch.zeros(1, 1, width, side, dtype=x.dtype, device=x.device)
        basis[0, 0, torch.arange(width), left + torch.arange(width)] = 1.0
        weights = _resize_axis(basis, width, size)[0, 0]  # [W, size]: each column's share
        square = _to_levels(fill + torch.matmul(x - fill, weights))  # [1, 3, side, size]
    x = _resize_axis(square, size, size)
    offset = (size - crop) // 2
    return _to_uint8(x[0, :, offset : offset + crop, offset : offset + crop])
