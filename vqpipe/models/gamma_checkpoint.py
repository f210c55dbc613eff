"""Loading and saving Gamma models: official Gamma, UniQA / OpenAI-CLIP, open_clip and ours.

Layouts understood (after unwrapping a ``"params"`` / ``"state_dict"`` / ``"model"`` level):

* **Gamma** — ``clip_model.*`` + ``adapter.fc.*`` + ``score_level`` (official
  ``gamma_weight.pth`` and the safetensors files :func:`save_gamma` writes). The number of MoAE
  layers and experts is read off the keys.
* **CLIP** — a plain CLIP state dict in OpenAI / open_clip names (UniQA's ``UniQA_weight.pt``):
  loaded into the backbone *before* MoAE is added, so the experts start as copies of it.

``.safetensors`` is preferred; ``.pt`` / ``.pth`` / ``.bin`` load with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vqpipe.errors import CheckpointMismatchError, key_report
from vqpipe.io.checkpoints import resolve_checkpoint
from vqpipe.models.gamma import GammaConfig, GammaModel, create_clip

CONFIG_METADATA_KEY = "vqpipe.gamma_config"
_OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
_WRAPPER_KEYS = ("params", "state_dict", "model", "module")
_MOAE_KEY = re.compile(r"resblocks\.(\d+)\.mlp\.experts\.expert_(\d+)\.")


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and (safetensors) metadata of a checkpoint file or directory, on the CPU."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) or sorted(
            p for ext in ("*.pth", "*.pt", "*.bin") for p in path.glob(ext)
        )
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"expected one weight file in {path}, found {[p.name for p in candidates]}"
            )
        path = candidates[0]
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as fh:
            metadata = dict(fh.metadata() or {})
        return load_file(str(path)), metadata
    if path.suffix in (".pt", ".pth", ".bin"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        return _unwrap(obj, path), {}
    raise ValueError(f"unsupported checkpoint format {path.suffix!r} ({path})")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(obj, dict):
        wrapper = next((k for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if wrapper is None:
            break
        obj = obj[wrapper]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(obj).__name__})")
    state = {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise ValueError(f"{path} holds no tensors")
    return state


def is_gamma_layout(state: dict[str, torch.Tensor]) -> bool:
    return "score_level" in state or any(k.startswith("clip_model.") for k in state)


def infer_moae(state: dict[str, torch.Tensor]) -> tuple[int, int] | None:
    """(n_moae_layers, n_experts) read off the MoAE keys of the vision tower; None if absent."""
    layers, experts, depth = set(), set(), -1
    for key in state:
        if key.startswith("clip_model.visual.transformer.resblocks."):
            depth = max(depth, int(key.split(".")[4]))
            match = _MOAE_KEY.search(key)
            if match:
                layers.add(int(match.group(1)))
                experts.add(int(match.group(2)))
    if not layers:
        return None
    return depth + 1 - min(layers), len(experts)


def load_gamma(
    checkpoint: str | os.PathLike | None = None,
    config: GammaConfig | None = None,
    *,
    storage_options: dict[str, Any] | None = None,
) -> tuple[GammaModel, Path]:
    """Build a :class:`GammaModel` from a checkpoint (local path or fsspec URI).

    ``config`` defaults to the one stored in our checkpoints, else :class:`GammaConfig` with
    MoAE sizes read from the keys. ``checkpoint=None`` gives a randomly initialised model.
    Returns the model (CPU, eval mode) and the local checkpoint path.
    """
    if checkpoint is None:
        return GammaModel(config or GammaConfig()).eval(), Path()
    local = resolve_checkpoint(checkpoint, storage_options=storage_options)
    state, metadata = read_state_dict(local)
    if config is None:
        stored = metadata.get(CONFIG_METADATA_KEY)
        config = GammaConfig.from_dict(json.loads(stored)) if stored else GammaConfig()
        moae = infer_moae(state)
        if moae is not None and not stored:
            config.n_moae_layers, config.n_experts = moae
    if is_gamma_layout(state):
        model = GammaModel(config)
        _load_strict(model, state, f"{local} (Gamma layout, config {config.clip_model})")
    else:
        clip = create_clip(config)
        state = {k: v for k, v in state.items() if k not in _OPENAI_EXTRA_KEYS}
        _load_strict(clip, state, f"{local} (CLIP layout, config {config.clip_model})")
        model = GammaModel(config, clip=clip)
    return model.eval(), local


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    expected = module.state_dict()
    wrong = {
        k: (tuple(state[k].shape), tuple(expected[k].shape))
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    }
    report = key_report(set(expected) - set(state), set(state) - set(expected), wrong, shown=5)
    if report:
        raise CheckpointMismatchError(f"checkpoint does not fit the model: {what}\n{report}")
    module.load_state_dict(state, strict=True)


def save_gamma(
    model: GammaModel, path: str | os.PathLike, dtype: torch.dtype | None = None
) -> Path:
    """Write ``model`` as safetensors in the official key layout, with its config as metadata.

    ``dtype`` (e.g. ``torch.float16``) stores floating tensors at reduced precision; loading
    upcasts them to the model's parameters' dtype.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        state[key] = value.contiguous().clone()
    save_file(state, str(path), metadata={CONFIG_METADATA_KEY: model.config.to_json()})
    return path
