"""Typed training configs: one frozen dataclass per method, built from a config mapping and
the key table :data:`vqpipe.train.config.KEYS` (the one place defaults live) by
:func:`settings`; the loops read these fields, never the mapping.

A ``datasets`` entry stays a mapping (tables may be DataFrames); its keys are read through
:func:`vqpipe.train.config.dataset_setting`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from vqpipe.train.config import KEYS


@dataclass(frozen=True)
class Settings:
    """The keys every method has (:data:`vqpipe.train.config.COMMON_KEYS`) plus the four
    every method gives its own default; ``raw``: the config as given (``training_args.json``)."""

    datasets: list[Mapping[str, Any]]
    storage_options: dict[str, Any] | None
    seed: int
    lr: float
    weight_decay: float
    max_steps: int | None
    device: str | None
    output: str | None
    validate: bool
    early_stop_patience: int | None
    checkpoint_every: int
    checkpoint_dir: str | None
    resume: bool
    resume_from: str | None
    verbose: bool
    stream: bool
    freeze_patch_embed: bool
    checkpoint: str | None
    epochs: int
    batch_size: int
    warmup: float
    raw: dict[str, Any] = field(repr=False, compare=False)

    @property
    def weighted(self) -> bool:
        """Whether any dataset names its sampling ``weight``."""
        return any("weight" in spec for spec in self.datasets)


@dataclass(frozen=True)
class GammaSettings(Settings):
    model_config: dict[str, Any] | None
    train_backbone: bool
    save_dtype: str
    cosine: bool
    level_loss_weight: float
    patch_init: str | None
    crop_step: int
    augment: bool
    split: str | None
    num_workers: int


@dataclass(frozen=True)
class LMMSettings(Settings):
    freeze_vision: bool
    gradient_checkpointing: bool
    dtype: str | None
    deepspeed: bool | dict[str, Any] | None
    video_fps: float
    max_frames: int


@dataclass(frozen=True)
class QAlignSettings(LMMSettings):
    task: str


@dataclass(frozen=True)
class Compare2ScoreSettings(LMMSettings):
    n_pairs: int
    anchors: str | None


CLASSES: dict[str, type[Settings]] = {
    "gamma": GammaSettings,
    "qalign": QAlignSettings,
    "compare2score": Compare2ScoreSettings,
}
"""Method → its typed config (its fields are the method's keys in ``KEYS``, plus ``raw``)."""


def settings(method: str, config: Mapping[str, Any] | Settings) -> Any:
    """``config`` as ``method``'s typed config: each key as given, else its default from
    :data:`~vqpipe.train.config.KEYS`; a typed config is returned as it is."""
    if isinstance(config, Settings):
        return config
    values = {
        name: _typed(config.get(name, key.default), key.kind) for name, key in KEYS[method].items()
    }
    values["datasets"] = list(values["datasets"] or [])
    return CLASSES[method](**values, raw=dict(config))


def _typed(value: Any, kind: str) -> Any:
    if value is None:
        return None
    return {"int": int, "number": float}.get(kind, lambda v: v)(value)


def fields(method: str) -> set[str]:
    """The config keys ``method``'s typed config holds."""
    return {f.name for f in dataclasses.fields(CLASSES[method])} - {"raw"}
