"""The training skeleton every method plugs into: epochs, validation, early stopping,
checkpoints, resume and the output, around a small per-method object (:class:`Method`).

:func:`run_training` drives a :class:`Method` — Gamma (:mod:`vqpipe.train.gamma`), Q-Align SFT
and Compare2Score (:mod:`vqpipe.train.lmm`) — that builds its model and optimizer, steps on a
batch, validates, and writes its checkpoint. The same function is the
``train_loop_per_worker`` of Ray Train (:func:`vqpipe.train.trainer.fit`) and a plain PyTorch
loop outside it.

A checkpoint is a directory with the model in the layout its scorer loads plus
``trainer_state.pt`` (optimizer, schedule, epoch, step); inside Ray Train it is reported with
``ray.train.report`` (from rank 0, or every rank for sharded state), outside it goes to
``checkpoint_dir``. Resuming: Ray Train hands a worker its run's latest checkpoint
(``ray.train.get_checkpoint()``; a run is its storage path and name) unless ``resume`` is
false; else ``resume_from``.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from vqpipe.train.settings import Settings

STATE_FILE = "trainer_state.pt"


def ray_train_context() -> Any | None:
    """The Ray Train context when running inside a Ray Train worker, else None."""
    try:
        import ray.train

        context = ray.train.get_context()
        context.get_world_size()
        return context
    except Exception:
        return None


def dataset_shard(ctx: Any | None, name: str = "train") -> Any | None:
    """The worker's shard of the Ray Dataset ``name``, when the trainer was given one."""
    if ctx is None:
        return None
    try:
        import ray.train

        return ray.train.get_dataset_shard(name)
    except Exception:  # no datasets passed to the trainer
        return None


def rank_and_world(ctx: Any | None) -> tuple[int, int]:
    return (ctx.get_world_rank(), ctx.get_world_size()) if ctx is not None else (0, 1)


@dataclass(frozen=True)
class Run:
    """Where a loop runs: the Ray Train context (None outside Ray Train), this worker's rank,
    the number of workers, the torch device."""

    ctx: Any | None
    rank: int
    world: int
    device: torch.device

    @classmethod
    def here(cls, device: str | None) -> Run:
        """This process: ``device``, else cuda when there is one (the worker's own GPU under
        Ray Train), else cpu."""
        ctx = ray_train_context()
        rank, world = rank_and_world(ctx)
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if ctx is not None and chosen.type == "cuda":
            import ray.train.torch

            chosen = ray.train.torch.get_device()
        return cls(ctx, rank, world, chosen)

    def shard(self) -> Any | None:
        """This worker's shard of the streamed ``"train"`` dataset, if the trainer has one."""
        return dataset_shard(self.ctx)


class Method(Protocol):
    """What a training method gives :func:`run_training`."""

    settings: Settings
    cosine: bool
    """Cosine decay after the warm-up (else a constant learning rate)."""
    sharded: bool
    """Every rank writes part of a checkpoint, and the optimizer state is not in
    ``trainer_state.pt`` (DeepSpeed ZeRO)."""

    def setup(self, run: Run, resume: Path | None) -> tuple[torch.optim.Optimizer, int]:
        """Build the model (with ``resume``'s weights when given), data and optimizer;
        returns (optimizer, optimizer steps per epoch on this worker)."""
        ...

    def attach(self, schedule: Any, resume: Path | None) -> None:
        """Take the learning-rate schedule (resumed already); DeepSpeed starts here."""
        ...

    def batches(self, epoch: int) -> Iterable[Any]: ...

    def step(self, batch: Any) -> float:
        """One optimizer and schedule step on ``batch``; returns the loss to log."""
        ...

    def validate(self) -> dict[str, float]: ...

    def saver(self, state: dict[str, Any]) -> Callable[[Path], None]:
        """What writes a checkpoint with ``state``; called on every rank (it may gather
        sharded weights, a collective), the writer only on the ranks that save."""
        ...

    def finish(self, history: dict[str, Any], run: Run) -> Any:
        """Write the output (``settings.output``); returns the trained model."""
        ...


def lr_schedule(optimizer: torch.optim.Optimizer, warmup: float, total: int, cosine: bool) -> Any:
    """transformers' linear warm-up over ``int(warmup * total)`` steps, then cosine decay to 0
    at ``total`` (``cosine``) or a constant rate."""
    from transformers import get_scheduler

    name = "cosine" if cosine else "constant_with_warmup"
    return get_scheduler(
        name, optimizer, num_warmup_steps=int(warmup * total), num_training_steps=total
    )


def run_training(method: Method) -> dict[str, Any] | None:
    """Train ``method`` for its epochs: returns the history (losses, validation, seconds,
    steps, ``model``), or None inside Ray Train, where results travel as reports and
    checkpoints."""
    config = method.settings
    torch.manual_seed(config.seed)
    run = Run.here(config.device)
    history: dict[str, Any] = {"step_loss": [], "epoch_loss": [], "val": []}
    step, start_epoch = 0, 0
    with restored_checkpoint(config, run.ctx) as resume:  # open until DeepSpeed has read it
        optimizer, per_epoch = method.setup(run, resume)
        total = config.epochs * per_epoch
        if config.max_steps:
            total = min(total, config.max_steps)
        schedule = lr_schedule(optimizer, config.warmup, total, method.cosine)
        if resume is not None:
            state = load_state(resume)
            if "optimizer" in state:  # under DeepSpeed the moments are in its own checkpoint
                optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            step, start_epoch = int(state["step"]), int(state["epoch"]) + 1
            history["resumed_from_step"] = step
        method.attach(schedule, resume)
    stopper = EarlyStopping(config.early_stop_patience)
    started = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        losses = []
        for batch in method.batches(epoch):
            losses.append(method.step(batch))
            history["step_loss"].append(losses[-1])
            step += 1
            if step >= total:
                break
        history["epoch_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        metrics: dict[str, Any] = {"epoch": epoch, "loss": history["epoch_loss"][-1], "steps": step}
        if config.validate:
            metrics.update(method.validate())
            history["val"].append({k: v for k, v in metrics.items() if k.startswith("val")})
        stop = step >= total or stopper.update(metrics)
        state = {"schedule": schedule.state_dict(), "epoch": epoch, "step": step}
        if not method.sharded:
            state["optimizer"] = optimizer.state_dict()
        end_epoch(metrics, config, run, method, state, last=stop or epoch == config.epochs - 1)
        if stop:
            break
    history["seconds"] = time.perf_counter() - started
    history["steps"] = step
    model = method.finish(history, run)
    if run.ctx is not None:  # Ray Train cannot return tensors; the model is in the checkpoint
        return None
    history["model"] = model
    return history


@contextlib.contextmanager
def restored_checkpoint(config: Settings, ctx: Any | None) -> Iterator[Path | None]:
    """The checkpoint to resume from: the run's latest, which Ray Train restores for a run of
    the same storage path and name (unless ``resume`` is false: start over), else
    ``resume_from``, else None."""
    if ctx is not None and config.resume:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                yield Path(directory)
            return
    yield Path(config.resume_from) if config.resume_from else None


def load_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / STATE_FILE, weights_only=True)


class EarlyStopping:
    """Stop after ``patience`` epochs without a better ``key`` (None: never)."""

    def __init__(self, patience: int | None, key: str = "val_srcc") -> None:
        self.patience = None if patience is None else int(patience)
        self.key = key
        self.best = -math.inf
        self.stale = 0

    def update(self, metrics: dict[str, Any]) -> bool:
        value = metrics.get(self.key)
        if self.patience is None or value is None or not math.isfinite(value):
            return False
        if value > self.best:
            self.best, self.stale = value, 0
        else:
            self.stale += 1
        return self.stale >= self.patience


def end_epoch(
    metrics: dict[str, Any],
    config: Settings,
    run: Run,
    method: Method,
    state: dict[str, Any],
    last: bool,
) -> None:
    """Report ``metrics`` and save a checkpoint: every ``checkpoint_every`` epochs and at the
    last one, from rank 0 — or from every rank for a sharded method (Ray Train merges the
    ranks' files into one checkpoint directory)."""
    due = last or (metrics["epoch"] + 1) % config.checkpoint_every == 0
    save = method.saver(state) if due else None  # every rank: it may be a collective
    saves = save is not None and (run.rank == 0 or method.sharded)
    if run.ctx is not None:
        import ray.train

        if saves:
            with tempfile.TemporaryDirectory() as tmp:
                save(Path(tmp))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
    elif config.verbose:
        shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
        print(json.dumps(shown), flush=True)
    if config.checkpoint_dir and saves:
        save(Path(config.checkpoint_dir))


def dataset_means(metrics: dict[str, float]) -> dict[str, float]:
    """Per-dataset ``val_srcc/<name>`` and ``val_plcc/<name>`` plus their means over the
    datasets as ``val_srcc`` and ``val_plcc`` (what early stopping watches)."""
    out = dict(metrics)
    for name in ("val_srcc", "val_plcc"):
        values = [v for k, v in metrics.items() if k.startswith(f"{name}/")]
        if values:
            out[name] = float(np.nanmean(values))
    return out


def stream_batches(shard: Any, batch_size: int, convert: Callable[[dict[str, Any]], Any]) -> Any:
    """A streamed Ray Data shard as training batches: ``convert`` of each numpy batch."""
    for rows in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        yield convert(rows)


def write_training_args(path: Path, given: dict[str, Any], **extra: Any) -> Path:
    """The scalar options of the config as ``given`` (tables as ``<table>``) plus ``extra``,
    as JSON."""
    args: dict[str, Any] = {
        k: v for k, v in given.items() if isinstance(v, (str, int, float, bool, type(None)))
    }
    args["datasets"] = [
        {k: (v if isinstance(v, (str, int, float)) else "<table>") for k, v in spec.items()}
        for spec in given.get("datasets", [])
    ]
    args.update(extra)
    path.write_text(json.dumps(args, indent=2, default=str))
    return path
