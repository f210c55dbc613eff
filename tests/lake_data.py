"""Test data for the data-lake readers: real JPEG / PNG / H.264 bytes, tar shards, Parquet."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def image_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (32, 24)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt)
    return buf.getvalue()


def mp4_bytes(frames: int = 4, size: tuple[int, int] = (32, 32)) -> bytes:
    """A short H.264 mp4 written with PyAV."""
    import av

    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=4)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            pixels = np.full((size[1], size[0], 3), 40 * i % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]], mode: str = "w") -> Path:
    """A WebDataset tar: ``samples`` = [(key, {extension: bytes})], members in that order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tar:
        for key, members in samples:
            for ext, data in members.items():
                add_member(tar, f"{key}.{ext}", data)
    return path


def caption_sample(i: int, media: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    meta = {"width": 32, "caption": f"picture {i}", "nested": {"source": "lake", "n": i}}
    return f"{i:06d}", {
        **media,
        "txt": f"caption {i}".encode(),
        "json": json.dumps(meta).encode(),
        "cls": str(i % 3).encode(),
    }


def mixed_samples() -> list[tuple[str, dict[str, bytes]]]:
    """jpg, png, mp4, a garbage .jpg, a sample without media, then two more jpgs."""
    return [
        caption_sample(0, {"jpg": image_bytes(0)}),
        caption_sample(1, {"png": image_bytes(1, "PNG")}),
        caption_sample(2, {"mp4": mp4_bytes()}),
        caption_sample(3, {"jpg": b"this is not a jpeg at all"}),
        ("000004", {"txt": b"no media here", "json": b"{}"}),
        caption_sample(5, {"jpg": image_bytes(5)}),
        caption_sample(6, {"jpg": image_bytes(6)}),
    ]
