"""Gamma fine-tuning as a ``train_loop_per_worker``-style function (plain PyTorch or Ray Train).

Recipe (Gamma paper, Sec. 4): freeze CLIP, train the MoAE experts, routers, λ, the adapter
and the level weights; MSE between the predicted score and the MOS normalised to [0, 1];
Adam, lr 2e-5. Datasets are mixed with per-dataset weights and per-dataset scene prompts.

``train_gamma(config)`` takes one dict (read once into
:class:`~vqpipe.train.settings.GammaSettings`) so that
``TorchTrainer(train_gamma, train_loop_config=config)`` can call it unchanged; the epochs,
validation, checkpoints and resume are :func:`vqpipe.train.loop.run_training`'s, the
Gamma-specific parts :class:`GammaTraining`'s. Keys: ``datasets``
(MOS tables with ``path``, ``mos`` and optionally ``split``, ``scale_low``, ``scale_high``,
``lower_better``, ``dataset``; per entry ``scene``, ``weight``, ``split``, ``image_root``),
``checkpoint`` to fine-tune (without it and without ``model_config``, a :class:`GammaConfig`
dict for a new model: the bundled demo checkpoint) and the optimisation keys. Every key with
its kind, default and meaning is in :data:`vqpipe.train.config.KEYS`, the one place defaults
are defined (rendered into ``docs/training.md``). ``level_loss_weight`` adds
:func:`soft_level_loss`, ``patch_init: dct`` :func:`dct_patch_init_` (both for training from
scratch); ``validate`` gives SRCC/PLCC per dataset on each table's ``val`` split every epoch.

Images come from a local DataLoader, or — when Ray Train hands the worker a ``"train"``
dataset (:func:`vqpipe.train.data.training_stream`, ``fit(..., stream=True)``) — are
streamed by Ray Data through the same reader and decoder as the scoring pipeline.
Checkpoints: ``model.safetensors`` (what ``create_scorer("gamma", checkpoint=...)`` loads)
and ``trainer_state.pt``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from vqpipe.models.gamma import GammaConfig, GammaModel, scene_for_dataset
from vqpipe.models.gamma_checkpoint import load_gamma, save_gamma
from vqpipe.train.config import media_rows, start_from
from vqpipe.train.data import MOSImageDataset, load_image, mixed_table, normalised_targets
from vqpipe.train.loop import (
    STATE_FILE,
    Run,
    dataset_means,
    run_training,
    stream_batches,
    write_training_args,
)
from vqpipe.train.settings import GammaSettings, settings
from vqpipe.train.tables import dataset_name, dataset_table, split_rows

log = logging.getLogger("vqpipe.train")

Batch = tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]
"""uint8 pixels [B, 3, S, S], targets [B], scenes, loss weights [B] (0 for unreadable rows)."""


def soft_level_loss(
    logits: torch.Tensor, targets: torch.Tensor, model: GammaModel, width: float = 0.1
) -> torch.Tensor:
    """Per-row cross-entropy of the level softmax against soft labels centred on each target.

    ``q_k ∝ exp(-(l_k - y)² / 2w²)`` with ``l_k`` the (detached) level weights: CLIP-style
    alignment of each image with its level prompt. Not in Gamma's recipe (weight 0 by
    default); it speeds up training from scratch, where the five prompt features start almost
    identical and the MSE gradient through the softmax is tiny.
    """
    levels = model.score_level.detach().float()
    labels = torch.softmax(-((levels[None, :] - targets[:, None]) ** 2) / (2 * width**2), dim=-1)
    return -(labels * torch.log_softmax(logits.float(), dim=-1)).sum(-1)


def dct_patch_init_(conv: torch.nn.Conv2d, dc_gain: float = 0.125) -> None:
    """Initialise a ViT patch embedding with a 2-D DCT basis, as JPEG sees a block.

    Channels take luma DCT coefficients in zigzag order (low frequencies first) and, for one
    eighth of the width each, the lowest Cb and Cr coefficients; the DC terms are scaled by
    ``dc_gain`` so that after ``ln_pre`` the high frequencies — where noise, blur and JPEG
    live — are not drowned by the patch mean. Used when training a small model from scratch
    (``patch_init: dct``); the layer stays trainable unless ``freeze_patch_embed`` — kept
    fixed, it is a JPEG-like analysis transform and noise and JPEG are learned much sooner.
    """
    width, _, p, q = conv.weight.shape
    if p != q:
        raise ValueError("DCT init needs square patches")
    k = torch.arange(p, dtype=torch.float64)
    basis_1d = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * p))  # [freq, pos]
    basis_1d[0] /= math.sqrt(2)
    basis_1d *= math.sqrt(2 / p)
    freqs = sorted(((u, v) for u in range(p) for v in range(p)), key=lambda f: (f[0] + f[1], f))
    ycc = torch.tensor(
        [[0.299, 0.587, 0.114], [-0.1687, -0.3313, 0.5], [0.5, -0.4187, -0.0813]],
        dtype=torch.float64,
    )
    n_chroma = width // 8
    plan = [(0, f) for f in freqs[: width - 2 * n_chroma]]
    plan += [(1, f) for f in freqs[:n_chroma]] + [(2, f) for f in freqs[:n_chroma]]
    weight = torch.zeros(width, 3, p, p, dtype=torch.float64)
    for c, (colour, (u, v)) in enumerate(plan):
        gain = dc_gain if (u, v) == (0, 0) else 1.0
        pattern = torch.outer(basis_1d[u], basis_1d[v])
        weight[c] = gain * ycc[colour][:, None, None] * pattern[None]
    with torch.no_grad():
        conv.weight.copy_(weight.to(conv.weight.dtype))


def from_scratch_config(
    clip_model: str, table: Any, epochs: int, **overrides: Any
) -> dict[str, Any]:
    """The recipe that trains a small Gamma end to end on synthetic data (the bundled demo
    checkpoint, the learnability runs): whole model trainable, DCT patch init, Adam 5e-4 with
    warmup and cosine decay, batch 16, soft level loss 0.5."""
    config: dict[str, Any] = {
        "model_config": {
            "clip_model": clip_model,
            "force_quick_gelu": True,
            "n_moae_layers": 2,
            "n_experts": 3,
            "adapter_hidden": 64,
        },
        "datasets": [{"table": table, "scene": "natural-quality"}],
        "train_backbone": True,
        "patch_init": "dct",
        "epochs": epochs,
        "batch_size": 16,
        "lr": 5e-4,
        "cosine": True,
        "warmup": 0.05,
        "level_loss_weight": 0.5,
    }
    config.update(overrides)
    return config


def build_model(config: GammaSettings | dict[str, Any]) -> GammaModel:
    """The model to train: ``checkpoint``'s, else a new one of ``model_config``."""
    config = settings("gamma", config)
    if config.checkpoint:
        model, _ = load_gamma(config.checkpoint, storage_options=config.storage_options)
        return model
    model = GammaModel(GammaConfig.from_dict(dict(config.model_config or {})))
    if config.patch_init == "dct":
        dct_patch_init_(model.clip_model.visual.conv1)
    return model


def input_size(config: GammaSettings | dict[str, Any]) -> int:
    """The model's input size from ``config`` without building it."""
    config = settings("gamma", config)
    import open_clip

    from vqpipe.scorers.gamma import checkpoint_image_size

    if config.checkpoint:
        return checkpoint_image_size(config.checkpoint, config.storage_options)
    name = GammaConfig.from_dict(dict(config.model_config or {})).clip_model
    size = (open_clip.get_model_config(name) or {}).get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def validate(model: GammaModel, config: GammaSettings, device: torch.device) -> dict[str, float]:
    """SRCC / PLCC of ``model`` on the ``val`` split of each training table (eval geometry)."""
    from vqpipe.eval.metrics import plcc, srcc
    from vqpipe.scorers.gamma import GammaScorer

    was_training = model.training
    scorer = GammaScorer(model=model, device=device, dtype="fp32")
    out: dict[str, float] = {}
    try:
        for spec in config.datasets:
            val = split_rows(dataset_table(spec, config.storage_options), "val")
            val, _ = media_rows(val, "gamma")  # videos were skipped (and logged) for training
            if "split" not in val or val.empty:
                continue
            name = dataset_name(val, "val")
            scene = spec.get("scene") or scene_for_dataset(name)
            images = [load_image(p, config.storage_options) for p in val["path"]]
            pred = scorer.score(images, scene=scene)
            target = normalised_targets(val)
            out[f"val_srcc/{name}"] = srcc(pred, target)
            out[f"val_plcc/{name}"] = plcc(pred, target)
    finally:
        model.train(was_training)
    return dataset_means(out)


def save_training_checkpoint(
    directory: str | Path, model: GammaModel, state: dict[str, Any]
) -> Path:
    """``model.safetensors`` + ``trainer_state.pt`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_gamma(model, directory / "model.safetensors")
    torch.save(state, directory / STATE_FILE)
    return directory


def _collate(batch: list[tuple[torch.Tensor, float, str]]) -> Batch:
    pixels, targets, scenes = zip(*batch, strict=True)
    targets_t = torch.tensor(targets, dtype=torch.float32)
    return torch.stack(pixels), targets_t, list(scenes), torch.ones_like(targets_t)


def _streamed(batch: dict[str, np.ndarray]) -> Batch:
    """A batch of :func:`vqpipe.train.data.training_stream`; unreadable rows weigh 0."""
    ok = np.array([not e for e in batch["error"]], dtype=np.float32)
    return (
        torch.from_numpy(np.ascontiguousarray(batch["pixels"])),
        torch.from_numpy(batch["target"].astype(np.float32)),
        [str(s) for s in batch["scene"]],
        torch.from_numpy(batch["weight"].astype(np.float32) * ok),
    )


def _local_loader(config: GammaSettings, table: pd.DataFrame, image_size: int) -> DataLoader:
    dataset = MOSImageDataset(
        table,
        image_size,
        augment=config.augment,
        crop_step=config.crop_step,
        storage_options=config.storage_options,
    )
    sampler = WeightedRandomSampler(
        torch.as_tensor(table["weight"].to_numpy(copy=True)),
        len(table),
        replacement=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        collate_fn=_collate,
        num_workers=config.num_workers,
        drop_last=len(table) > config.batch_size,
    )


class GammaTraining:
    """Gamma's part of the training skeleton (:class:`vqpipe.train.loop.Method`): the model
    (CLIP frozen unless ``train_backbone``), Adam, the MSE (+ soft level) loss, validation
    through :class:`~vqpipe.scorers.gamma.GammaScorer`, ``model.safetensors`` checkpoints."""

    sharded = False

    def __init__(self, config: GammaSettings) -> None:
        self.settings = config
        self.cosine = config.cosine

    def setup(self, run: Run, resume: Path | None) -> tuple[torch.optim.Optimizer, int]:
        config = self.settings
        self.run = run
        model = build_model(config)
        trainable = model.set_trainable(train_backbone=config.train_backbone)
        if config.freeze_patch_embed:
            model.clip_model.visual.conv1.requires_grad_(False)
            trainable = [n for n in trainable if not n.startswith("clip_model.visual.conv1.")]
        self.trainable = len(trainable)
        self.table = mixed_table(config.datasets, config.split, config.storage_options)
        self.shard = run.shard()
        loader = (
            None if self.shard is not None else _local_loader(config, self.table, model.image_size)
        )
        model.to(run.device).train()
        if run.world > 1:
            import ray.train.torch

            model = ray.train.torch.prepare_model(model)
            if loader is not None:
                loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)
        self.loader, self.model = loader, model
        self.core: GammaModel = model.module if hasattr(model, "module") else model
        if resume is not None:
            stored, _ = load_gamma(resume / "model.safetensors")
            self.core.load_state_dict(stored.state_dict())
        params = [p for p in self.core.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        if loader is not None:
            per_epoch = len(loader)
        else:
            per_epoch = math.ceil(len(self.table) / run.world / config.batch_size)
        return self.optimizer, per_epoch

    def attach(self, schedule: Any, resume: Path | None) -> None:
        self.schedule = schedule

    def batches(self, epoch: int) -> Iterable[Batch]:
        seed = self.settings.seed
        torch.manual_seed(seed + epoch)  # crops and flips: reproducible and resumable
        if self.loader is None:
            return stream_batches(self.shard, self.settings.batch_size, _streamed)
        if hasattr(self.loader.sampler, "generator"):
            self.loader.sampler.generator.manual_seed(seed + epoch)
        return self.loader

    def step(self, batch: Batch) -> float:
        pixels, targets, scenes, weights = batch
        device = self.run.device
        out = self.model(self.core.normalize(pixels.to(device)), scenes)
        targets, weights = targets.to(device), weights.to(device)
        per_row = (out["score"].float() - targets) ** 2
        level_weight = self.settings.level_loss_weight
        if level_weight > 0:
            per_row = per_row + level_weight * soft_level_loss(out["logits"], targets, self.core)
        loss = (per_row * weights).sum() / weights.sum().clamp_min(1e-6)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return loss.item()

    def validate(self) -> dict[str, float]:
        return validate(self.core, self.settings, self.run.device)

    def saver(self, state: dict[str, Any]) -> Callable[[Path], None]:
        return lambda directory: save_training_checkpoint(directory, self.core, state)

    def finish(self, history: dict[str, Any], run: Run) -> GammaModel:
        history["trainable"] = self.trainable
        history["skipped_rows"] = self.table.attrs.get("skipped_rows", 0)
        self.core.eval()
        config = self.settings
        if config.output and run.rank == 0:
            dtype = torch.float16 if config.save_dtype == "float16" else None
            history["output"] = str(save_gamma(self.core, config.output, dtype=dtype))
            final = history["epoch_loss"][-1] if history["epoch_loss"] else None
            write_training_args(
                Path(config.output).with_name("training_args.json"),
                config.raw,
                steps=history["steps"],
                final_loss=final,
            )
        return self.core


def train_gamma(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train Gamma from ``config`` (see the module docstring); returns the loss history and
    the model (``None`` inside Ray Train, where results travel as reports and checkpoints)."""
    config, start = start_from("gamma", config)  # neither checkpoint nor model_config: the demo
    log.info(start)
    return run_training(GammaTraining(settings("gamma", config)))
