"""Decoding images and videos from bytes: odd formats work, broken inputs give clear errors."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vqpipe.data import make_video_dataset
from vqpipe.media.decode import MediaError, MediaLimits, decode_image, decode_video, frame_indices


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8))


@pytest.mark.parametrize(
    "data",
    [
        _encode(RGB, "JPEG"),
        _encode(RGB.convert("CMYK"), "JPEG"),
        _encode(RGB.convert("P"), "PNG"),
        _encode(RGB.convert("LA"), "PNG"),
        _encode(RGB.convert("RGBA"), "WEBP"),
        _encode(
            Image.fromarray((np.arange(48 * 64).reshape(48, 64) * 20).astype(np.uint16)), "PNG"
        ),
        _encode(RGB, "GIF", save_all=True, append_images=[RGB.rotate(90)], duration=100),
        _encode(RGB, "TIFF"),
        _encode(RGB, "BMP"),
    ],
    ids=[
        "jpeg",
        "cmyk-jpeg",
        "palette",
        "la",
        "rgba-webp",
        "16-bit",
        "animated-gif",
        "tiff",
        "bmp",
    ],
)
def test_odd_formats_decode_to_rgb(data):
    image, info = decode_image(data)
    assert image.mode == "RGB" and (info.width, info.height) == (64, 48)


def test_sixteen_bit_is_rescaled_not_clipped():
    ramp = (np.linspace(0, 65535, 64 * 8).reshape(8, 64)).astype(np.uint16)
    image, _ = decode_image(_encode(Image.fromarray(ramp), "PNG"))
    grey = np.asarray(image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and len(np.unique(grey)) > 100


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    _, info = decode_image(_encode(RGB, "JPEG", exif=exif))
    assert (info.width, info.height) == (48, 64)


def test_extreme_aspect_ratio():
    _, info = decode_image(_encode(Image.new("RGB", (1, 4000), (9, 9, 9)), "PNG"))
    assert (info.width, info.height) == (1, 4000)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file"),
        (_encode(RGB, "JPEG")[:200], "cannot decode image"),
        (_encode(RGB, "PNG")[:60], "cannot decode image"),
        (bytes(np.random.default_rng(1).integers(0, 255, 5000, dtype=np.uint8)), "cannot decode"),
    ],
    ids=["zero-bytes", "truncated-jpeg", "truncated-png", "random-bytes"],
)
def test_broken_images_raise_clear_errors(data, message):
    with pytest.raises(MediaError, match=message):
        decode_image(data)


def test_decompression_bomb_and_byte_limits():
    bomb = _encode(Image.new("L", (12000, 12000)), "PNG")  # tiny file, 144 Mpx declared
    with pytest.raises(MediaError, match="decompression bomb"):
        decode_image(bomb, MediaLimits(max_pixels=50_000_000))
    with pytest.raises(MediaError, match="over the limit"):
        decode_image(_encode(RGB, "PNG"), MediaLimits(max_bytes=100))


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return make_video_dataset(tmp_path_factory.mktemp("v"), n_videos=2, seconds=3.0, fps=10)


def test_video_sampling_one_frame_per_second(videos):
    data = Path(videos["path"][0]).read_bytes()
    frames, info = decode_video(data, sample_fps=1.0)
    assert info.sampled == len(frames) == 3 and info.frames == 30
    assert info.fps == pytest.approx(10.0) and info.duration_s == pytest.approx(3.0, abs=0.1)
    assert frames[0].mode == "RGB" and frames[0].size == (info.width, info.height)


def test_video_frame_cap_and_pyav_agrees(videos):
    from vqpipe.media import decode as dec

    data = Path(videos["path"][1]).read_bytes()
    frames, info = decode_video(data, sample_fps=10.0, limits=MediaLimits(max_frames=4))
    assert len(frames) == 4
    av_frames, av_info = dec._decode_with_pyav(data, 10.0, MediaLimits(max_frames=4))
    assert len(av_frames) == 4 and av_info.frames == info.frames
    diff = np.abs(np.asarray(frames[2], float) - np.asarray(av_frames[2], float)).mean()
    assert diff < 2.0  # same frames from both decoders


def test_broken_videos_raise_clear_errors(videos):
    data = Path(videos["path"][0]).read_bytes()
    with pytest.raises(MediaError, match="cannot decode video"):
        decode_video(data[: len(data) // 10])
    with pytest.raises(MediaError, match="cannot decode video"):
        decode_video(b"\x00\x00\x00\x18ftypisom" + b"\x00" * 100)
    with pytest.raises(MediaError, match="over the limit"):
        decode_video(data, limits=MediaLimits(max_duration_s=1.0))


def test_frame_indices():
    assert frame_indices(30, 10.0, 1.0, 32) == [0, 10, 20]
    assert frame_indices(95, 25.0, 1.0, 32) == [0, 25, 50]  # as int(n / fps) seconds
    capped = frame_indices(3000, 25.0, 1.0, 8)
    assert len(capped) == 8 and capped[0] == 0 and capped[-1] == 2975
    assert frame_indices(0, 25.0, 1.0, 8) == []
    assert frame_indices(5, 0.0, 1.0, 8) == [0]
