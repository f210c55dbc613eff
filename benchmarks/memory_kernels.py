"""Memory and kernels of the mPLUG-Owl2 scorers, each figure two ways side by side:

- Compare2Score's anchor caches shared by the batch (tiled in each layer) vs repeated per test
  image (what it did before): peak memory of the forward after the anchor prefixes;
- the vision tower on a batch of videos in ``vision_chunk`` = 64 frames a call vs one call:
  peak memory;
- the forward after a cached prefix with no mask tensor (lower-right causal bias: SDPA's
  flash / efficient kernels on CUDA) vs the boolean mask: time, interleaved rounds, min and
  median.

    python benchmarks/memory_kernels.py --quick        # small config on a CPU
    python benchmarks/memory_kernels.py --device cuda  # 7B shape, bf16

Peak memory: ``torch.cuda.max_memory_allocated`` on CUDA; on a CPU the growth of the process's
resident memory (sampled every 0.5 ms) over what it held before the call, each variant in a
fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import torch
from _timing import sync
from PIL import Image

from vqpipe.models.mplug_owl2 import MPLUGOwl2Config, MPLUGOwl2ForCausalLM
from vqpipe.models.mplug_owl2.tiny import bench_config, train_tiny_tokenizer
from vqpipe.scorers.anchor_sets import OFFICIAL_ANCHOR_MATRIX, AnchorSet
from vqpipe.scorers.compare2score import Compare2ScoreScorer
from vqpipe.scorers.qalign import QAlignScorer

VARIANTS = ("c2s_shared", "c2s_repeated", "vision_chunked", "vision_whole")


def build(
    quick: bool, device: str, dtype: str, tmp: str
) -> tuple[QAlignScorer, Compare2ScoreScorer]:
    train_tiny_tokenizer(tmp)
    cfg = bench_config() if quick else MPLUGOwl2Config()
    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
    model = MPLUGOwl2ForCausalLM.from_config(cfg, dtype=torch_dtype, device=device)
    cfg.save_pretrained(tmp)
    size = cfg.vision.image_size
    rng = np.random.default_rng(0)
    files = []
    for j in range(5):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            f"{tmp}/{j}.png"
        )
        files.append(f"{j}.png")
    anchors = AnchorSet(
        root=Path(tmp), table=pd.DataFrame({"file": files, "mos": np.arange(5.0), "std": 1.0})
    )
    c2s = Compare2ScoreScorer(
        tmp, device=device, dtype=dtype, model=model, anchors=anchors,
        anchor_matrix=OFFICIAL_ANCHOR_MATRIX,
    )  # fmt: skip
    qalign = QAlignScorer(tmp, device=device, dtype=dtype, model=model, task="video")
    return qalign, c2s


def run_variant(variant: str, quick: bool, device: str, dtype: str, batch: int) -> int:
    """Peak bytes that ``variant`` adds over what the process held before it."""
    with tempfile.TemporaryDirectory() as tmp:
        qalign, c2s = build(quick, device, dtype, tmp)
    size = qalign.model.config.vision.image_size
    rng = np.random.default_rng(1)
    m = len(c2s.anchor_pixels)
    with torch.inference_mode():
        if variant.startswith("c2s"):
            pixels = rng.integers(0, 255, (batch, 3, size, size), dtype=np.uint8)
            second = c2s.encode_images(pixels).repeat_interleave(m, 0)
            cache = c2s._anchor_cache()

            def call():
                past = cache
                if variant == "c2s_repeated":
                    past = [(k.repeat(batch, 1, 1, 1), v.repeat(batch, 1, 1, 1)) for k, v in cache]
                return c2s._logits_after_prefix(past, second)
        else:
            frames = batch * qalign.max_frames
            pixels = rng.integers(0, 255, (frames, 3, size, size), dtype=np.uint8)
            qalign._vision.chunk = 64 if variant == "vision_chunked" else None

            def call():
                return qalign.encode_images(pixels)

        return peak_growth(call, qalign.device)


def peak_growth(call, device: torch.device) -> int:
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        call()
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    # CPU: the process's resident memory sampled while the call runs (the subprocess maps
    # every block over 64 KiB on its own, so freed tensors leave the RSS at once).
    process = psutil.Process()
    before, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            time.sleep(0.0005)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        call()
    finally:
        done.set()
        thread.join()
    return max(peak[0], process.memory_info().rss) - before


def peak_in_subprocess(variant: str, args: argparse.Namespace, batch: int) -> int:
    cmd = [sys.executable, __file__, "--variant", variant, "--device", args.device]
    cmd += ["--dtype", args.dtype, "--batch", str(batch)] + (["--quick"] if args.quick else [])
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return int(out.stdout.strip().splitlines()[-1])


def prefix_timing(args: argparse.Namespace, rounds: int) -> dict:
    """The forward after a cached prefix: no mask tensor vs the boolean mask, interleaved."""
    with tempfile.TemporaryDirectory() as tmp:
        qalign, _ = build(args.quick, args.device, args.dtype, tmp)
    decoder, dev = qalign.model.model, qalign.device
    d, n_prefix = decoder.config.hidden_size, 16
    new_len = 65 * (4 if args.quick else qalign.max_frames) + 10
    gen = torch.Generator(device=dev).manual_seed(0)
    dtype = qalign.model.dtype
    with torch.inference_mode():
        prefix = torch.randn(1, n_prefix, d, generator=gen, device=dev, dtype=dtype)
        _, cache = decoder.decode(prefix, 0, use_cache=True)
        b = 2 if args.quick else 8
        new = torch.randn(b, new_len, d, generator=gen, device=dev, dtype=dtype)
        ones = torch.ones(b, n_prefix + new_len, dtype=torch.bool, device=dev)
        free = lambda: decoder.decode(new, 1, past_key_values=cache, last_only=True)  # noqa: E731
        masked = lambda: decoder.decode(  # noqa: E731
            new, 1, attention_mask=ones, past_key_values=cache, last_only=True
        )
        times: dict[str, list[float]] = {"free": [], "masked": []}
        for fn in (free, masked):
            fn()
        for _ in range(rounds):
            for name, fn in (("free", free), ("masked", masked)):
                sync(dev)
                start = time.perf_counter()
                fn()
                sync(dev)
                times[name].append(time.perf_counter() - start)
    return {
        "figure": f"forward after a prefix, {b}x{new_len} tokens: no mask tensor vs bool mask",
        "seconds_min": min(times["free"]),
        "baseline_seconds_min": min(times["masked"]),
        "seconds_median": statistics.median(times["free"]),
        "baseline_seconds_median": statistics.median(times["masked"]),
        "ratio": statistics.median(times["masked"]) / statistics.median(times["free"]),
        "device": str(dev),
        "dtype": args.dtype,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--batch", type=int, default=None, help="test images / videos")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    args.dtype = args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32")
    if args.variant:  # one measurement, in this fresh process
        print(run_variant(args.variant, args.quick, args.device, args.dtype, args.batch))
        return
    c2s_batch = args.batch or (16 if args.quick else 64)
    videos = args.batch or (4 if args.quick else 8)
    records = []
    for name, a, b, n in (
        ("Compare2Score anchor caches shared vs repeated", "c2s_shared", "c2s_repeated", c2s_batch),
        ("vision tower, 64 frames a call vs all", "vision_chunked", "vision_whole", videos),
    ):
        peak, base = peak_in_subprocess(a, args, n), peak_in_subprocess(b, args, n)
        records.append(
            {
                "figure": f"{name} (batch {n}), peak memory",
                "peak_mb": peak / 2**20,
                "baseline_peak_mb": base / 2**20,
                "ratio": base / max(peak, 1),
                "device": args.device,
                "dtype": args.dtype,
            }
        )
    records.append(prefix_timing(args, args.rounds))
    if args.json:
        print(json.dumps(records, indent=2))
        return
    for r in records:
        if "peak_mb" in r:
            shown = f"{r['peak_mb']:.1f} vs {r['baseline_peak_mb']:.1f} MB"
        else:
            ms = {k: v * 1e3 for k, v in r.items() if k.endswith(("_min", "_median"))}
            shown = (
                f"median {ms['seconds_median']:.1f} vs {ms['baseline_seconds_median']:.1f} ms "
                f"(min {ms['seconds_min']:.1f} vs {ms['baseline_seconds_min']:.1f})"
            )
        print(f"{r['figure']}: {shown} → {r['ratio']:.2f}x ({r['device']} {r['dtype']})")


if __name__ == "__main__":
    main()
