"""Reading and writing mPLUG-Owl2 checkpoint directories in the official layout.

A directory holds ``config.json`` and the weights: ``model.safetensors``, sharded
``model-0000X-of-0000N.safetensors`` + ``model.safetensors.index.json``, or the same with
``pytorch_model*.bin`` (read with ``torch.load(weights_only=True)``; safetensors win when both
are there). Keys must match the model one for one: any missing or unexpected key is an error
that names it. Legacy buffers (``rotary_emb.inv_freq``, the abstractor's fixed sin-cos
positions) are recomputed, so they may be present or not.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vqpipe.errors import CheckpointMismatchError, key_report

RECOMPUTED_KEYS = re.compile(r"(\.rotary_emb\.inv_freq|\.q_pos_embed|\.k_pos_embed)$")


def shard_files(directory: str | os.PathLike) -> list[Path]:
    """The weight shards to load from a checkpoint directory, in one format (safetensors
    preferred), as its index names them (:func:`vqpipe.io.checkpoints.weight_files` lists
    every weight file instead: what a fingerprint hashes)."""
    directory = Path(directory)
    for index_name, single in (
        ("model.safetensors.index.json", "model.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin"),
    ):
        index = directory / index_name
        if index.exists():
            with open(index, encoding="utf-8") as fh:
                names = sorted(set(json.load(fh)["weight_map"].values()))
            return [directory / name for name in names]
        if (directory / single).exists():
            return [directory / single]
    found = sorted(directory.glob("*.safetensors")) or sorted(directory.glob("*.bin"))
    if not found:
        raise FileNotFoundError(
            f"no weights in {directory}: expected model.safetensors, sharded safetensors with "
            "model.safetensors.index.json, or pytorch_model*.bin"
        )
    return found


def iter_shards(
    files: list[Path], device: torch.device | str = "cpu"
) -> Iterator[dict[str, torch.Tensor]]:
    """One state dict per shard file (pickles only through ``weights_only=True``)."""
    for file in files:
        if file.suffix == ".safetensors":
            yield load_file(str(file), device=str(device))
        else:
            yield torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def load_into(
    model: torch.nn.Module,
    files: list[Path],
    dtype: torch.dtype,
    device: torch.device,
) -> None:
    """Assign the checkpoint's tensors to ``model`` (built on the meta device), shard by
    shard, cast to ``dtype``; raise :class:`CheckpointMismatchError` on any key or shape
    difference."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    seen: set[str] = set()
    unexpected: list[str] = []
    wrong_shape: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    load_device = device if device.type != "meta" else torch.device("cpu")
    for shard in iter_shards(files, load_device if files[0].suffix == ".safetensors" else "cpu"):
        ready = {}
        for key, tensor in shard.items():
            if RECOMPUTED_KEYS.search(key):
                continue
            if key not in expected:
                unexpected.append(key)
                continue
            if tuple(tensor.shape) != tuple(expected[key]):
                wrong_shape[key] = (tuple(tensor.shape), tuple(expected[key]))
                continue
            if tensor.is_floating_point():
                tensor = tensor.to(device=load_device, dtype=dtype)
            ready[key] = tensor
        seen.update(ready)
        model.load_state_dict(ready, strict=False, assign=True)
    report = key_report(sorted(set(expected) - seen), unexpected, wrong_shape)
    if report:
        names = ", ".join(f.name for f in files)
        raise CheckpointMismatchError(
            f"checkpoint ({names}) does not match the mPLUG-Owl2 model of its config.json:\n"
            + report
        )


def save_weights(
    state_dict: dict[str, torch.Tensor],
    directory: str | os.PathLike,
    max_shard_bytes: int = 5 * 1024**3,
) -> list[Path]:
    """Write ``model.safetensors`` (or shards + index when larger than ``max_shard_bytes``)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        path = directory / "model.safetensors"
        save_file(shards[0], str(path), metadata=metadata)
        return [path]
    paths, weight_map = [], {}
    for i, shard in enumerate(shards, 1):
        path = directory / f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path), metadata=metadata)
        paths.append(path)
        weight_map.update(dict.fromkeys(shard, path.name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    with open(directory / "model.safetensors.index.json", "w", encoding="utf-8") as fh:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    return paths
