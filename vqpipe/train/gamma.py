"""Gamma fine-tuning as a ``train_loop_per_worker``-style function (plain PyTorch or Ray Train).

Recipe (Gamma paper, Sec. 4): freeze CLIP, train the MoAE experts, routers, λ, the adapter
and the level weights; MSE between the predicted score and the MOS normalised to [0, 1];
Adam, lr 2e-5. Datasets are mixed with per-dataset weights and per-dataset scene prompts.

``train_gamma(config)`` reads everything from one dict so that
``TorchTrainer(train_gamma, train_loop_config=config)`` can call it unchanged. Keys:

- ``datasets``: list of ``{"table": path | DataFrame, "scene": str | None, "weight": float,
  "split": "train"}`` — MOS tables with ``path``, ``mos``, ``dataset`` and optionally
  ``split``, ``scale_low``, ``scale_high``, ``lower_better`` (default scale: the table's range).
- ``checkpoint`` (path / URI) or ``model_config`` (a :class:`GammaConfig` dict) for a fresh model.
- ``epochs`` (10), ``batch_size`` (8), ``lr`` (2e-5), ``weight_decay`` (0), ``seed`` (0),
  ``train_backbone`` (False; True trains the whole CLIP too, e.g. from scratch),
  ``max_steps`` (None), ``device`` (auto), ``output`` (a ``.safetensors`` path written at the end),
  ``save_dtype`` ("float32" | "float16"), ``verbose`` (print the loss per epoch),
  ``cosine`` (cosine decay, off), ``warmup`` (fraction of steps with linear warmup, 0),
  ``level_loss_weight`` (0; > 0 adds :func:`soft_level_loss`, useful when training from scratch),
  ``validate`` (True: SRCC/PLCC per dataset on each table's ``val`` split every epoch),
  ``early_stop_patience`` (None: epochs without a better mean val SRCC before stopping),
  ``checkpoint_every`` (1: epochs between Ray Train checkpoints), ``resume_from`` (a checkpoint
  directory outside Ray Train; inside it, ``ray.train.get_checkpoint()`` is used).

Checkpoints are directories with ``model.safetensors`` (what ``create_scorer("gamma",
checkpoint=...)`` loads) and ``trainer_state.pt`` (optimizer, schedule, epoch, step).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from torchvision.transforms import InterpolationMode, RandomCrop, RandomHorizontalFlip, Resize

from vqpipe.media.image import to_rgb
from vqpipe.models.gamma import GammaConfig, GammaModel, scene_for_dataset, scene_prompts
from vqpipe.models.gamma_checkpoint import load_gamma, save_gamma


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


def read_table(source: str | Path | pd.DataFrame) -> pd.DataFrame:
    """A MOS table given as a DataFrame or a ``.parquet`` / ``.csv`` path."""
    if isinstance(source, pd.DataFrame):
        return source.copy()
    return pd.read_parquet(source) if str(source).endswith(".parquet") else pd.read_csv(source)


def mixed_table(datasets: Sequence[dict[str, Any]], split: str | None = "train") -> pd.DataFrame:
    """One table (path, target, scene, weight) from several MOS tables with their options."""
    parts = []
    for spec in datasets:
        table = read_table(spec["table"])
        wanted = spec.get("split", split)
        if wanted is not None and "split" in table:
            table = table[table["split"] == wanted]
        if table.empty:
            continue
        name = str(table["dataset"].iloc[0]) if "dataset" in table else "dataset"
        scene = spec.get("scene") or scene_for_dataset(name)
        scene_prompts(scene)  # validate
        part = pd.DataFrame(
            {
                "path": table["path"].astype(str).to_numpy(),
                "target": normalised_targets(table),
                "scene": scene,
                # each dataset gets `weight` of the sampling mass, split over its rows
                "weight": float(spec.get("weight", 1.0)) / len(table),
            }
        )
        parts.append(part)
    if not parts:
        raise ValueError("no training rows: check the dataset tables and split names")
    return pd.concat(parts, ignore_index=True)


class MOSImageDataset(Dataset):
    """Images as uint8 [3, S, S] (resize shortest side, random crop and flip), target, scene."""

    def __init__(self, table: pd.DataFrame, image_size: int, augment: bool = True) -> None:
        self.table = table.reset_index(drop=True)
        self.resize = Resize(image_size, interpolation=InterpolationMode.BICUBIC)
        self.crop = RandomCrop(image_size)
        self.flip = RandomHorizontalFlip() if augment else None
        self.image_size = image_size

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float, str]:
        row = self.table.iloc[index]
        with Image.open(row["path"]) as img:
            image = self.crop(self.resize(to_rgb(img)))
        if self.flip is not None:
            image = self.flip(image)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).copy())
        return pixels, float(row["target"]), str(row["scene"])


def _collate(
    batch: list[tuple[torch.Tensor, float, str]],
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    pixels, targets, scenes = zip(*batch, strict=True)
    return torch.stack(pixels), torch.tensor(targets, dtype=torch.float32), list(scenes)


def soft_level_loss(
    logits: torch.Tensor, targets: torch.Tensor, model: GammaModel, width: float = 0.1
) -> torch.Tensor:
    """Cross-entropy of the level softmax against soft labels centred on each target.

    ``q_k ∝ exp(-(l_k - y)² / 2w²)`` with ``l_k`` the (detached) level weights: CLIP-style
    alignment of each image with its level prompt. Not in Gamma's recipe (weight 0 by
    default); it speeds up training from scratch, where the five prompt features start almost
    identical and the MSE gradient through the softmax is tiny.
    """
    levels = model.score_level.detach().float()
    labels = torch.softmax(-((levels[None, :] - targets[:, None]) ** 2) / (2 * width**2), dim=-1)
    return -(labels * torch.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def ray_train_context() -> Any | None:
    """The Ray Train context when running inside a Ray Train worker, else None."""
    try:
        import ray.train

        context = ray.train.get_context()
        context.get_world_size()
        return context
    except Exception:
        return None


def build_model(config: dict[str, Any]) -> GammaModel:
    if config.get("checkpoint"):
        model, _ = load_gamma(config["checkpoint"], storage_options=config.get("storage_options"))
        return model
    return GammaModel(GammaConfig.from_dict(dict(config.get("model_config") or {})))


def validate(model: GammaModel, config: dict[str, Any], device: torch.device) -> dict[str, float]:
    """SRCC / PLCC of ``model`` on the ``val`` split of each training table (eval geometry)."""
    from vqpipe.eval.metrics import plcc, srcc
    from vqpipe.scorers.gamma import GammaScorer

    was_training = model.training
    scorer = GammaScorer(model=model, device=device, dtype="fp32")
    out: dict[str, float] = {}
    try:
        for spec in config["datasets"]:
            table = read_table(spec["table"])
            if "split" not in table or not (table["split"] == "val").any():
                continue
            val = table[table["split"] == "val"]
            name = str(val["dataset"].iloc[0]) if "dataset" in val else "val"
            scene = spec.get("scene") or scene_for_dataset(name)
            images = []
            for path in val["path"]:
                with Image.open(path) as img:
                    images.append(to_rgb(img))
            pred = scorer.score(images, scene=scene)
            target = normalised_targets(val)
            out[f"val_srcc/{name}"] = srcc(pred, target)
            out[f"val_plcc/{name}"] = plcc(pred, target)
    finally:
        model.train(was_training)
    srccs = [v for k, v in out.items() if k.startswith("val_srcc/")]
    if srccs:
        out["val_srcc"] = float(np.nanmean(srccs))
    return out


def save_training_checkpoint(
    directory: str | Path, model: GammaModel, state: dict[str, Any]
) -> Path:
    """``model.safetensors`` + ``trainer_state.pt`` in ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_gamma(model, directory / "model.safetensors")
    torch.save(state, directory / "trainer_state.pt")
    return directory


def _resume_dir(config: dict[str, Any], ray_ctx: Any) -> Any:
    """A context manager yielding the directory to resume from, or None."""
    import contextlib

    if ray_ctx is not None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            return checkpoint.as_directory()
    if config.get("resume_from"):
        return contextlib.nullcontext(str(config["resume_from"]))
    return contextlib.nullcontext(None)


def train_gamma(config: dict[str, Any]) -> dict[str, Any] | None:
    """Train Gamma from ``config`` (see the module docstring); returns the loss history and
    the model (``None`` inside Ray Train, where results travel as reports and checkpoints)."""
    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    ray_ctx = ray_train_context()
    device = torch.device(config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))

    model = build_model(config)
    trainable = model.set_trainable(train_backbone=bool(config.get("train_backbone", False)))
    image_size = model.image_size
    table = mixed_table(config["datasets"], split=config.get("split", "train"))
    dataset = MOSImageDataset(table, image_size, augment=bool(config.get("augment", True)))
    generator = torch.Generator().manual_seed(seed)
    sampler = WeightedRandomSampler(
        torch.as_tensor(table["weight"].to_numpy(copy=True)),
        len(table),
        replacement=True,
        generator=generator,
    )
    loader = DataLoader(
        dataset,
        batch_size=int(config.get("batch_size", 8)),
        sampler=sampler,
        collate_fn=_collate,
        num_workers=int(config.get("num_workers", 0)),
        drop_last=len(table) > int(config.get("batch_size", 8)),
    )
    model.to(device).train()
    if ray_ctx is not None and ray_ctx.get_world_size() > 1:
        import ray.train.torch

        model = ray.train.torch.prepare_model(model)
        loader = ray.train.torch.prepare_data_loader(loader, move_to_device=False)
    core = model.module if hasattr(model, "module") else model
    params = [p for p in core.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(
        params,
        lr=float(config.get("lr", 2e-5)),
        weight_decay=float(config.get("weight_decay", 0.0)),
    )
    epochs = int(config.get("epochs", 10))
    max_steps = config.get("max_steps")
    total = min(epochs * len(loader), int(max_steps)) if max_steps else epochs * len(loader)
    warmup = int(float(config.get("warmup", 0.0)) * total)

    def lr_factor(step: int) -> float:  # linear warmup, then cosine decay (if enabled)
        if step < warmup:
            return (step + 1) / warmup
        if not config.get("cosine", False):
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total) / max(total - warmup, 1)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    level_weight = float(config.get("level_loss_weight", 0.0))

    history: dict[str, Any] = {
        "epoch_loss": [],
        "step_loss": [],
        "trainable": len(trainable),
        "val": [],
    }
    step, start_epoch, started = 0, 0, time.perf_counter()
    with _resume_dir(config, ray_ctx) as resume:
        if resume is not None:
            stored, _ = load_gamma(Path(resume) / "model.safetensors")
            core.load_state_dict(stored.state_dict())
            state = torch.load(Path(resume) / "trainer_state.pt", weights_only=True)
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step, start_epoch = int(state["step"]), int(state["epoch"]) + 1
            history["resumed_from_step"] = step
    best, stale = -math.inf, 0
    patience = config.get("early_stop_patience")
    rank0 = ray_ctx is None or ray_ctx.get_world_rank() == 0
    for epoch in range(start_epoch, epochs):
        losses = []
        for pixels, targets, scenes in loader:
            x = core.normalize(pixels.to(device))
            out = model(x, scenes)
            targets = targets.to(device)
            loss = torch.nn.functional.mse_loss(out["score"], targets)
            if level_weight > 0:
                loss = loss + level_weight * soft_level_loss(out["logits"], targets, core)
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
        if config.get("validate", True):
            metrics.update(validate(core, config, device))
            history["val"].append({k: v for k, v in metrics.items() if k.startswith("val")})
        stop = bool(max_steps and step >= int(max_steps))
        if patience is not None and "val_srcc" in metrics:
            if metrics["val_srcc"] > best:
                best, stale = metrics["val_srcc"], 0
            else:
                stale += 1
                stop = stop or stale >= int(patience)
        if ray_ctx is not None:
            import tempfile

            import ray.train

            every = int(config.get("checkpoint_every", 1))
            if rank0 and ((epoch + 1) % every == 0 or stop or epoch == epochs - 1):
                with tempfile.TemporaryDirectory() as tmp:
                    state = {
                        "optimizer": optimizer.state_dict(),
                        "epoch": epoch,
                        "step": step,
                        "schedule": schedule.state_dict(),
                    }
                    save_training_checkpoint(tmp, core, state)
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
        elif config.get("verbose"):
            print(
                f"epoch {epoch + 1}/{epochs} loss {metrics['loss']:.5f} ({step} steps)", flush=True
            )
        if config.get("checkpoint_dir") and rank0:
            state = {
                "optimizer": optimizer.state_dict(),
                "epoch": epoch,
                "step": step,
                "schedule": schedule.state_dict(),
            }
            save_training_checkpoint(config["checkpoint_dir"], core, state)
        if stop:
            break
    history["seconds"] = time.perf_counter() - started
    history["steps"] = step
    core.eval()
    output = config.get("output")
    if output and rank0:
        dtype = torch.float16 if config.get("save_dtype") == "float16" else None
        history["output"] = str(save_gamma(core, output, dtype=dtype))
        args = {
            k: v for k, v in config.items() if isinstance(v, (str, int, float, bool, type(None)))
        }
        args["datasets"] = [
            {k: (v if isinstance(v, (str, int, float)) else "<table>") for k, v in d.items()}
            for d in config["datasets"]
        ]
        args.update(
            steps=step, final_loss=history["epoch_loss"][-1] if history["epoch_loss"] else None
        )
        Path(output).with_name("training_args.json").write_text(json.dumps(args, indent=2))
    if ray_ctx is not None:  # Ray Train cannot return tensors; the model is in the checkpoint
        return None
    history["model"] = core
    return history
