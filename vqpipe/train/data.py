"""Training data: MOS tables mixed with per-dataset weights, images read through fsspec (local
or ``s3://``) with the scoring pipeline's reader and decoder, grid-aligned random crops, and a
Ray Data stream of the same media stage for Ray Train workers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode, Resize

from vqpipe.io.fs import read_bytes
from vqpipe.media.decode import MediaError, MediaLimits, decode_image
from vqpipe.models.gamma import scene_for_dataset, scene_prompts
from vqpipe.train.config import dataset_setting, media_rows, skipped_note
from vqpipe.train.tables import dataset_name, dataset_table, joined_path, split_rows

__all__ = [  # the table helpers live in train/tables.py; imported from here by callers too
    "dataset_name",
    "dataset_table",
    "joined_path",
    "split_rows",
]

log = logging.getLogger("vqpipe.train")


def normalised_targets(table: pd.DataFrame) -> np.ndarray:
    """MOS → [0, 1] with each row's scale; lower-is-better scales (DMOS) are flipped."""
    mos = table["mos"].to_numpy(dtype=np.float64)
    low = (
        table["scale_low"].to_numpy(np.float64)
        if "scale_low" in table
        else np.full_like(mos, mos.min())
    )
    high = (
        table["scale_high"].to_numpy(np.float64)
        if "scale_high" in table
        else np.full_like(mos, mos.max())
    )
    if np.any(high <= low):
        raise ValueError("MOS scale needs scale_high > scale_low")
    target = (mos - low) / (high - low)
    if "lower_better" in table:
        flip = table["lower_better"].fillna(False).to_numpy(bool)
        target = np.where(flip, 1.0 - target, target)
    return np.clip(target, 0.0, 1.0)


def mixed_table(
    datasets: Sequence[dict[str, Any]],
    split: str | None = "train",
    storage_options: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One table (path, target, scene, weight) from several MOS tables with their options.

    Rows Gamma cannot train on (videos) are skipped, logged with their files and counted in
    ``attrs["skipped_rows"]``. Each dataset gets ``weight`` (default 1) of the sampling mass,
    spread over its rows, so a small set mixed with weight 1 is seen as often as a large one."""
    parts, skipped_rows = [], 0
    for i, spec in enumerate(datasets):
        table = split_rows(dataset_table(spec, storage_options), spec.get("split", split))
        table, skipped = media_rows(table, "gamma")
        if len(skipped):
            skipped_rows += len(skipped)
            log.warning(skipped_note(skipped, "gamma", f"datasets[{i}]"))
        if table.empty:
            continue
        scene = spec.get("scene") or scene_for_dataset(dataset_name(table))
        scene_prompts(scene)  # validate
        parts.append(
            pd.DataFrame(
                {
                    "path": table["path"].astype(str).to_numpy(),
                    "target": normalised_targets(table),
                    "scene": scene,
                    "weight": float(dataset_setting(spec, "gamma", "weight")) / len(table),
                }
            )
        )
    if not parts:
        raise ValueError("no training rows: check the dataset tables and split names")
    out = pd.concat(parts, ignore_index=True)
    out.attrs["skipped_rows"] = skipped_rows
    return out


def load_image(
    uri: str, storage_options: dict[str, Any] | None = None, limits: MediaLimits | None = None
) -> Image.Image:
    """An RGB image from a local path or fsspec URI (retries, decode guards of the pipeline)."""
    image, _ = decode_image(read_bytes(uri, storage_options), limits or MediaLimits())
    return image


class AlignedCrop:
    """Shortest side → ``size`` (bicubic), random ``size``² crop whose offsets are multiples of
    ``step``, optional horizontal flip; returns uint8 [3, size, size].

    ``step`` defaults to 8, the JPEG block: an arbitrary offset shifts the 8×8 block grid
    against the patch grid, which the eval centre crop of an image whose sides are multiples
    of 8 never does, so a model trained that way sees compression blocks at phases it is never
    scored at. ``step=1`` crops anywhere; ``augment=False`` gives the centre crop.
    """

    def __init__(self, size: int, step: int = 8, augment: bool = True) -> None:
        self.size = int(size)
        self.step = max(1, int(step))
        self.augment = augment
        self.resize = Resize(self.size, interpolation=InterpolationMode.BICUBIC)

    def _offset(self, extra: int, generator: torch.Generator | None) -> int:
        if extra <= 0:
            return 0
        if not self.augment:
            return extra // 2
        step = self.step if extra >= self.step else 1
        return int(torch.randint(0, extra // step + 1, (), generator=generator)) * step

    def __call__(self, image: Image.Image, generator: torch.Generator | None = None) -> np.ndarray:
        image = self.resize(image)
        left = self._offset(image.width - self.size, generator)
        top = self._offset(image.height - self.size, generator)
        image = image.crop((left, top, left + self.size, top + self.size))
        if self.augment and bool(torch.rand((), generator=generator) < 0.5):
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))


class MOSImageDataset(torch.utils.data.Dataset):
    """Rows of a :func:`mixed_table` as (uint8 [3, S, S], target, scene) through
    :class:`AlignedCrop`; images are read with :func:`load_image` (local or fsspec)."""

    def __init__(
        self,
        table: pd.DataFrame,
        image_size: int,
        augment: bool = True,
        crop_step: int = 8,
        storage_options: dict[str, Any] | None = None,
    ) -> None:
        self.table = table.reset_index(drop=True)
        self.crop = AlignedCrop(image_size, crop_step, augment)
        self.storage_options = storage_options

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float, str]:
        row = self.table.iloc[index]
        try:
            image = load_image(row["path"], self.storage_options)
        except Exception as exc:  # name the file: a bare decode error ends a run unexplained
            raise MediaError(f"training image {row['path']}: {type(exc).__name__}: {exc}") from exc
        pixels = self.crop(image)
        return torch.from_numpy(pixels), float(row["target"]), str(row["scene"])


def decode_training_batch(
    batch: dict[str, np.ndarray],
    image_size: int,
    crop_step: int = 8,
    augment: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> dict[str, np.ndarray]:
    """Ray Data media stage for training: read + decode + :class:`AlignedCrop` each row.

    A row that cannot be read or decoded keeps its place with zero pixels and an ``error``; the
    loop gives it zero loss weight, so every worker still runs the same number of steps."""
    crop = AlignedCrop(image_size, crop_step, augment)
    n = len(batch["path"])
    pixels = np.zeros((n, 3, image_size, image_size), np.uint8)
    errors = np.full(n, "", dtype=object)
    for i, uri in enumerate(batch["path"]):
        try:
            pixels[i] = crop(load_image(str(uri), storage_options))
        except Exception as exc:  # a bad image must not end a training run
            errors[i] = f"{type(exc).__name__}: {exc}"
    return {**batch, "pixels": pixels, "error": errors}


def training_stream(
    table: pd.DataFrame,
    image_size: int,
    crop_step: int = 8,
    augment: bool = True,
    storage_options: dict[str, Any] | None = None,
    batch_size: int = 32,
) -> Any:
    """A Ray Dataset of a :func:`mixed_table` decoded by :func:`decode_training_batch`, for
    ``TorchTrainer(datasets={"train": ...})``. Per-dataset weights become per-row loss weights
    (``weight`` × rows / total weight, mean 1): the same expected gradient as weighted sampling,
    while every image is streamed once per epoch. Decoding runs again each epoch (new crops)."""
    import ray.data

    rows = table[["path", "target", "scene", "weight"]].copy()
    rows["weight"] = rows["weight"] * len(rows) / rows["weight"].sum()
    return ray.data.from_pandas(rows).map_batches(
        decode_training_batch,
        batch_size=batch_size,
        fn_kwargs={
            "image_size": int(image_size),
            "crop_step": int(crop_step),
            "augment": augment,
            "storage_options": storage_options,
        },
        num_cpus=0.5,
    )
