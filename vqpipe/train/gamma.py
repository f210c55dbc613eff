"""Gamma fine-tuning as a ``train_loop_per_worker``-style function (plain PyTorch or Ray Train).

Recipe (Gamma paper, Sec. 4): freeze CLIP, train the MoAE experts, routers, λ, the adapter
and the level weights; MSE between the predicted score and the MOS normalised to [0, 1];
Adam, lr 2e-5. Datasets are mixed with per-dataset weights and per-dataset scene prompts.

``train_gamma(config)`` reads everything from one dict so that
``TorchTrainer(train_gamma, train_loop_config=config)`` can call it unchanged: ``datasets``
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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, WeightedRandomSampler

from vqpipe.models.gamma import GammaConfig, GammaModel, scene_for_dataset
from vqpipe.models.gamma_checkpoint import load_gamma, save_gamma
from vqpipe.train.config import media_rows, setting, start_from
from vqpipe.train.data import (
    MOSImageDataset,
    dataset_name,
    dataset_table,
    load_image,
    mixed_table,
    normalised_targets,
    split_rows,
)
from vqpipe.train.loop import (
    STATE_FILE,
    EarlyStopping,
    dataset_shard,
    end_epoch,
    load_state,
    rank_and_world,
    ray_train_context,
    resume_directory,
    trainer_state,
    write_training_args,
)

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


def build_model(config: dict[str, Any]) -> GammaModel:
    if config.get("checkpoint"):
        model, _ = load_gamma(config["checkpoint"], storage_options=config.get("storage_options"))
        return model
    model = GammaModel(GammaConfig.from_dict(dict(config.get("model_config") or {})))
    if config.get("patch_init") == "dct":
        dct_patch_init_(model.clip_model.visual.conv1)
    return model


def input_size(config: dict[str, Any]) -> int:
    """The model's input size from ``config`` without building it."""
    import open_clip

    from vqpipe.scorers.gamma import checkpoint_image_size

    if config.get("checkpoint"):
        return checkpoint_image_size(config["checkpoint"], config.get("storage_options"))
    name = GammaConfig.from_dict(dict(config.get("model_config") or {})).clip_model
    size = (open_clip.get_model_config(name) or {}).get("vision_cfg", {}).get("image_size", 224)
    return int(size[0] if isinstance(size, (list, tuple)) else size)


def validate(model: GammaModel, config: dict[str, Any], device: torch.device) -> dict[str, float]:
    """SRCC / PLCC of ``model`` on the ``val`` split of each training table (eval geometry)."""
    from vqpipe.eval.metrics import plcc, srcc
    from vqpipe.scorers.gamma import GammaScorer

    was_training = model.training
    scorer = GammaScorer(model=model, device=device, dtype="fp32")
    out: dict[str, float] = {}
    try:
        for spec in config["datasets"]:
            val = split_rows(dataset_table(spec, config.get("storage_options")), "val")
            val, _ = media_rows(val, "gamma")  # videos were skipped (and logged) for training
            if "split" not in val or val.empty:
                continue
            name = dataset_name(val, "val")
            scene = spec.get("scene") or scene_for_dataset(name)
            images = [load_image(p, config.get("storage_options")) for p in val["path"]]
            pred = scorer.score(images, scene=scene)
            target = normalised_targets(val)
            out[f"val_srcc/{name}"] = srcc(pred, target)
            out[f"val_plcc/{name}"] = plcc(pred, target)
    finally:
        model.train(was_training)
    for name in ("val_srcc", "val_plcc"):  # the mean over datasets, for early stopping too
        values = [v for k, v in out.items() if k.startswith(f"{name}/")]
        if values:
            out[name] = float(np.nanmean(values))
    return out


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


def _stream_batches(shard: Any, batch_size: int) -> Iterator[Batch]:
    for batch in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        ok = np.array([not e for e in batch["error"]], dtype=np.float32)
        yield (
            torch.from_numpy(np.ascontiguousarray(batch["pixels"])),
            torch.from_numpy(batch["target"].astype(np.float32)),
            [str(s) for s in batch["scene"]],
            torch.from_numpy(batch["weight"].astype(np.float32) * ok),
        )


def _local_loader(config: dict[str, Any], table: pd.DataFrame, image_size: int) -> DataLoader:
    seed = int(setting(config, "gamma", "seed"))
    batch_size = int(setting(config, "gamma", "batch_size"))
    dataset = MOSImageDataset(
        table,
        image_size,
        augment=bool(setting(config, "gamma", "augment")),
        crop_step=int(setting(config, "gamma", "crop_step")),
        storage_options=config.get("storage_options"),
    )
    sampler = WeightedRandomSampler(
        torch.as_tensor(table["weight"].to_numpy(copy=True)),
        len(table),
        replacement=True,
        generator=torch.Generator().manual_seed(seed),
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=_collate,
        num_workers=int(setting(config, "gamma", "num_workers")),
        drop_last=len(table) > batch_size,
    )


def train_gamma(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train Gamma from ``config`` (see the module docstring); returns the loss history and
    the model (``None`` inside Ray Train, where results travel as reports and checkpoints)."""
    config, start = start_from("gamma", config)  # neither checkpoint nor model_config: the demo
    log.info(start)
    seed = int(setting(config, "gamma", "seed"))
    torch.manual_seed(seed)
    ctx = ray_train_context()
    rank, world = rank_and_world(ctx)
    device = torch.device(config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))

    model = build_model(config)
    trainable = model.set_trainable(train_backbone=bool(setting(config, "gamma", "train_backbone")))
    if config.get("freeze_patch_embed"):
        model.clip_model.visual.conv1.requires_grad_(False)
        trainable = [n for n in trainable if not n.startswith("clip_model.visual.conv1.")]
    batch_size = int(setting(config, "gamma", "batch_size"))
    table = mixed_table(
        config["datasets"], setting(config, "gamma", "split"), config.get("storage_options")
    )
    shard = dataset_shard(ctx)
    loader = None if shard is not None else _local_loader(config, table, model.image_size)
    model.to(device).train()
    if world > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
        if loader is not None:
            loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)
    core = model.module if hasattr(model, "module") else model
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params,
        lr=float(setting(config, "gamma", "lr")),
        weight_decay=float(setting(config, "gamma", "weight_decay")),
    )
    epochs = int(setting(config, "gamma", "epochs"))
    per_epoch = len(loader) if loader is not None else math.ceil(len(table) / world / batch_size)
    max_steps = config.get("max_steps")
    total = min(epochs * per_epoch, int(max_steps)) if max_steps else epochs * per_epoch
    warmup = int(float(setting(config, "gamma", "warmup")) * total)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine decay (if enabled)
        if step < warmup:
            return (step + 1) / warmup
        if not setting(config, "gamma", "cosine"):
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total) / max(total - warmup, 1)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    level_weight = float(setting(config, "gamma", "level_loss_weight"))
    history: dict[str, Any] = {"epoch_loss": [], "step_loss": [], "trainable": len(trainable)}
    history["val"] = []
    history["skipped_rows"] = table.attrs.get("skipped_rows", 0)
    step, start_epoch, started = 0, 0, time.perf_counter()
    with resume_directory(config, ctx) as resume:
        if resume is not None:
            stored, _ = load_gamma(resume / "model.safetensors")
            core.load_state_dict(stored.state_dict())
            state = load_state(resume)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step, start_epoch = int(state["step"]), int(state["epoch"]) + 1
            history["resumed_from_step"] = step
    stopper = EarlyStopping(config.get("early_stop_patience"))
    for epoch in range(start_epoch, epochs):
        torch.manual_seed(seed + epoch)  # crops and flips: reproducible and resumable
        if loader is not None and hasattr(loader.sampler, "generator"):
            loader.sampler.generator.manual_seed(seed + epoch)
        batches = _stream_batches(shard, batch_size) if shard is not None else loader
        losses = []
        for pixels, targets, scenes, weights in batches:
            out = model(core.normalize(pixels.to(device)), scenes)
            targets, weights = targets.to(device), weights.to(device)
            per_row = (out["score"].float() - targets) ** 2
            if level_weight > 0:
                per_row = per_row + level_weight * soft_level_loss(out["logits"], targets, core)
            loss = (per_row * weights).sum() / weights.sum().clamp_min(1e-6)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
            history["step_loss"].append(loss.item())
            step += 1
            if max_steps and step >= int(max_steps):
                break
        history["epoch_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        metrics: dict[str, Any] = {"epoch": epoch, "loss": history["epoch_loss"][-1], "steps": step}
        if setting(config, "gamma", "validate"):
            metrics.update(validate(core, config, device))
            history["val"].append({k: v for k, v in metrics.items() if k.startswith("val")})
        stop = bool(max_steps and step >= int(max_steps)) | stopper.update(metrics)
        state = trainer_state(optimizer, schedule, epoch, step)
        end_epoch(
            metrics,
            config,
            ctx,
            lambda d, state=state: save_training_checkpoint(d, core, state),
            last=stop or epoch == epochs - 1,
        )
        if stop:
            break
    history["seconds"] = time.perf_counter() - started
    history["steps"] = step
    core.eval()
    output = config.get("output")
    if output and rank == 0:
        dtype = torch.float16 if config.get("save_dtype") == "float16" else None
        history["output"] = str(save_gamma(core, output, dtype=dtype))
        final = history["epoch_loss"][-1] if history["epoch_loss"] else None
        write_training_args(
            Path(output).with_name("training_args.json"), config, steps=step, final_loss=final
        )
    if ctx is not None:  # Ray Train cannot return tensors; the model is in the checkpoint
        return None
    history["model"] = core
    return history
