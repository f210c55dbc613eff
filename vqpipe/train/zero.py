"""DeepSpeed ZeRO for the LMM loops: the config, ``deepspeed.initialize`` on Ray Train's
process group, and the whole weights gathered for saving (``deepspeed.zero.GatheredParameters``,
the public API)."""

from __future__ import annotations

import os
from typing import Any

import torch

ZERO_STAGE = 3
"""The ZeRO stage when the ``deepspeed`` key does not name one: the official OneAlign recipe's."""

DEEPSPEED_DIR = "deepspeed"
"""Checkpoint subdirectory with DeepSpeed's sharded optimizer state (one file per rank)."""


def deepspeed_config(
    stage: int = ZERO_STAGE,
    bf16: bool = True,
    batch_per_gpu: int = 32,
    grad_accum: int = 1,
    offload: bool = False,
) -> dict[str, Any]:
    """A DeepSpeed config for the LMMs (ZeRO-2/3, bf16) in the official recipe's spirit."""
    if stage not in (1, 2, 3):
        raise ValueError("ZeRO stage must be 1, 2 or 3")
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": batch_per_gpu,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
    }


def deepspeed_settings(option: bool | dict[str, Any], batch_per_gpu: int) -> dict[str, Any]:
    """The DeepSpeed config of the ``deepspeed`` key: a full DeepSpeed dict, or
    ``{"stage", "bf16", "offload", "grad_accum"}`` filled in by :func:`deepspeed_config`."""
    ds = dict(option) if isinstance(option, dict) else {}
    if "zero_optimization" in ds:
        return ds
    return deepspeed_config(
        stage=int(ds.get("stage", ZERO_STAGE)),
        bf16=bool(ds.get("bf16", True)),
        batch_per_gpu=batch_per_gpu,
        grad_accum=int(ds.get("grad_accum", 1)),
        offload=bool(ds.get("offload", False)),
    )


def deepspeed_engine(
    model: torch.nn.Module, optimizer: Any, schedule: Any, settings: dict[str, Any], device: Any
) -> Any:
    """``deepspeed.initialize`` on the process group Ray Train set up (or a one-process gloo /
    nccl group outside it). On CPU DeepSpeed runs with its CPU accelerator and gloo."""
    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "config['deepspeed'] needs DeepSpeed: pip install 'vqpipe[train]'"
        ) from exc
    if not torch.distributed.is_initialized():
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        for key, value in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
            os.environ.setdefault(key, str(value))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl")
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=settings
    )
    return engine


def full_state_dict(
    model: torch.nn.Module, engine: Any | None, keep: bool
) -> dict[str, torch.Tensor] | None:
    """Under ZeRO-3, ``model``'s whole weights gathered from their partitions
    (``deepspeed.zero.GatheredParameters``, a collective: every rank calls it) and copied to the
    CPU where ``keep`` (the rank that saves); else None: the model's own state dict is whole."""
    if engine is None or engine.zero_optimization_stage() != 3:
        return None
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        if not keep:
            return None
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
