"""Timing helpers shared by the benchmark scripts (``vqpipe bench`` skips ``_*`` files)."""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so wall time covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def best_time(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def print_records(records: list[dict[str, Any]]) -> None:
    """One line per record: figure, images/s vs baseline, ratio, model and device."""
    for r in records:
        mfu = f", MFU {r['mfu']:.1%}" if r.get("mfu") is not None else ""
        print(
            f"{r['figure']}: {r['images_per_s']:.2f} vs {r['baseline_images_per_s']:.2f} images/s"
            f" → {r['ratio']:.2f}x ({r['model']}, {r['device']} {r['dtype']}{mfu})"
        )


def count_flops(fn: Callable[[], Any], model: torch.nn.Module | None = None) -> float:
    """FLOPs of one call, counted by torch's FlopCounterMode (matmuls, convs, attention) under
    ``no_grad`` with the scorers' ``inference_mode`` swapped for it (the counter fails under
    inference mode) and ``model``'s parameters frozen (its module tracker asserts on a
    parameter that requires grad passed as an input). A failure is printed, and NaN returned."""
    import sys

    from _gpu_suite import count_flops as counted

    flops, error = counted(fn, model)
    if error is not None:
        print(f"count_flops: {error}", file=sys.stderr)
        return float("nan")
    return float(flops)


def mfu(
    images_per_s: float, flops_per_image: float, device: torch.device, peak_tflops: float = 989.0
) -> float | None:
    """Model FLOPs utilisation on a GPU (``None`` elsewhere); peak: H100/H200 bf16 dense."""
    if device.type != "cuda":
        return None
    return images_per_s * flops_per_image / (peak_tflops * 1e12)


def machine_name(device: torch.device) -> str:
    """The GPU's name, else the CPU's."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine()


def emit(records: list[dict[str, Any]], as_json: bool) -> None:
    """Print the records as JSON (``--json``, what ``vqpipe bench`` reads) or as lines."""
    if as_json:
        print(json.dumps(records, indent=2))
    else:
        print_records(records)


def model_parser(
    doc: str, quick_help: str = "a small config that runs on a CPU"
) -> argparse.ArgumentParser:
    """The flags every model benchmark takes: ``--quick``, ``--device``, ``--dtype``, ``--json``
    (each script adds its own sizes and repeats)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=quick_help)
    parser.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    parser.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--json", action="store_true")
    return parser


def device_and_dtype(args: argparse.Namespace) -> tuple[str, str]:
    """``--device`` and ``--dtype`` with their defaults filled in."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    return device, args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
