"""What every training loop shares: the Ray Train context, resuming, the end of an epoch
(report, checkpoint, early stop) and ``training_args.json``.

A checkpoint is a directory with the model in the layout its scorer loads plus
``trainer_state.pt`` (optimizer, schedule, epoch, step); inside Ray Train it is reported with
``ray.train.report`` from rank 0, outside it goes to ``config["checkpoint_dir"]``.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from vqpipe.train.config import setting

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


@contextlib.contextmanager
def resume_directory(config: dict[str, Any], ctx: Any | None) -> Iterator[Path | None]:
    """The checkpoint to resume from: Ray Train's (after a restart) first, else
    ``config["resume_from"]``, else None."""
    if ctx is not None:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                yield Path(directory)
            return
    yield Path(config["resume_from"]) if config.get("resume_from") else None


def load_state(directory: Path) -> dict[str, Any]:
    return torch.load(directory / STATE_FILE, weights_only=True)


def trainer_state(optimizer: Any | None, schedule: Any, epoch: int, step: int) -> dict[str, Any]:
    """What resuming needs besides the weights (``optimizer`` None: not saved)."""
    state = {"schedule": schedule.state_dict(), "epoch": epoch, "step": step}
    if optimizer is not None:
        state["optimizer"] = optimizer.state_dict()
    return state


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
    config: dict[str, Any],
    ctx: Any | None,
    save: Callable[[Path], None],
    last: bool,
    all_ranks: bool = False,
) -> None:
    """Report ``metrics`` and save a checkpoint with ``save(directory)``: every
    ``checkpoint_every`` epochs (default 1) and at the last one, from rank 0 — or from every
    rank with ``all_ranks`` (sharded state such as DeepSpeed's; Ray Train merges the ranks'
    files into one checkpoint directory)."""
    rank, _ = rank_and_world(ctx)
    due = last or (metrics["epoch"] + 1) % int(setting(config, "common", "checkpoint_every")) == 0
    saves = due and (rank == 0 or all_ranks)
    if ctx is not None:
        import ray.train

        if saves:
            with tempfile.TemporaryDirectory() as tmp:
                save(Path(tmp))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)
    elif config.get("verbose"):
        shown = {k: round(v, 5) if isinstance(v, float) else v for k, v in metrics.items()}
        print(json.dumps(shown), flush=True)
    if config.get("checkpoint_dir") and saves:
        save(Path(config["checkpoint_dir"]))


def write_training_args(path: Path, config: dict[str, Any], **extra: Any) -> Path:
    """The scalar options of ``config`` (tables as ``<table>``) plus ``extra``, as JSON."""
    args: dict[str, Any] = {
        k: v for k, v in config.items() if isinstance(v, (str, int, float, bool, type(None)))
    }
    args["datasets"] = [
        {k: (v if isinstance(v, (str, int, float)) else "<table>") for k, v in spec.items()}
        for spec in config.get("datasets", [])
    ]
    args.update(extra)
    path.write_text(json.dumps(args, indent=2, default=str))
    return path
