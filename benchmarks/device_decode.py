"""``decode=gpu``: images/s of JPEG decode + resize on the scorer's device against the CPU path.

    python benchmarks/device_decode.py           # 1 MP and 12 MP JPEGs, 7 interleaved rounds
    python benchmarks/device_decode.py --quick   # 3 rounds, smaller batches

Device path: ``decode_jpegs`` on a batch (nvJPEG on CUDA; torchvision's libjpeg on one CPU
thread where there is no GPU) with the preprocessor's ``device_geometry`` and one copy of the
batch's pixels to the host, as the actor runs it. Baseline: the decode tasks' path on one core
(``decode_image`` with the scorer's default: Gamma drafts, Q-Align decodes in full; then its
CPU preprocessor). Where there is no GPU the device path decodes in full without a draft:
slower than Gamma's drafted CPU path (``decode=gpu`` on a CPU actor is for tests). Device and CPU
alternate within each round; per path the median over rounds (min beside it). Also the largest
mean and max |Δ| (of 255) of the device pixels against the exact CPU path. One line per case
with its ratio (device vs one CPU core, median). On a GPU the figure is per GPU, against one
core: a decode task is one core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_downscale_decode import photo
from vqpipe.media.decode import decode_image
from vqpipe.media.device_decode import decode_jpegs
from vqpipe.models.mplug_owl2 import MPLUGOwl2ImageProcessor
from vqpipe.scorers._owl2 import Owl2Preprocessor
from vqpipe.scorers.gamma import GammaPreprocessor

SIZES = {"1 MP": (1152, 864), "12 MP": (4000, 3000)}
SCORERS = {  # the preprocessor, and the scorer's default exact_preprocessing
    "Gamma 224": (lambda exact: GammaPreprocessor(224, exact), False),
    "Q-Align 448": (lambda exact: Owl2Preprocessor(MPLUGOwl2ImageProcessor(size=448), exact), True),
}


def _jpeg(size: tuple[int, int], seed: int) -> bytes:
    buf = io.BytesIO()
    photo(*size, seed=seed).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _cpu(datas: list[bytes], prep) -> list[np.ndarray]:
    return [prep(decode_image(d, draft=prep.draft)[0])["pixels"] for d in datas]


def _device(datas: list[bytes], prep, device: torch.device) -> np.ndarray:
    images, errors = decode_jpegs(datas, device, prep.device_geometry)
    if any(e is not None for e in errors):
        raise RuntimeError(f"device decode failed: {errors}")
    return torch.stack(images).cpu().numpy()


def run(rounds: int = 7, batch: int = 32) -> list[dict]:
    torch.set_num_threads(1)  # one core for either path where the device is the CPU
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU, 1 thread"
    records = []
    for size_name, size in SIZES.items():
        n = batch if size_name == "1 MP" else max(2, batch // 4)
        datas = [_jpeg(size, seed) for seed in range(n)]
        for scorer_name, (make, default_exact) in SCORERS.items():
            default, exact = make(default_exact), make(True)
            pixels = _device(datas, exact, device)  # warm-up too
            diffs = [
                np.abs(a.astype(np.int16) - b.astype(np.int16))
                for a, b in zip(_cpu(datas, exact), pixels, strict=True)
            ]
            times: dict[str, list[float]] = {"device": [], "cpu": []}
            for _ in range(rounds):
                start = time.perf_counter()
                _device(datas, exact, device)
                times["device"].append((time.perf_counter() - start) / n)
                start = time.perf_counter()
                _cpu(datas, default)
                times["cpu"].append((time.perf_counter() - start) / n)
            dev, cpu = statistics.median(times["device"]), statistics.median(times["cpu"])
            records.append(
                {
                    "figure": f"decode+resize {size_name} JPEG → {scorer_name}, device vs CPU",
                    "images_per_s": 1 / dev,
                    "baseline_images_per_s": 1 / cpu,
                    "ratio": cpu / dev,
                    "ratio_best": min(times["cpu"]) / min(times["device"]),
                    "batch": n,
                    "rounds": rounds,
                    "max_mean_abs_diff_255": float(max(d.mean() for d in diffs)),
                    "max_abs_diff_255": int(max(d.max() for d in diffs)),
                    "model": scorer_name,
                    "device": name,
                    "dtype": "uint8",
                }
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds, batches of 8")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records = run(rounds=3, batch=8) if args.quick else run()
    if args.json:
        print(json.dumps(records, indent=2))
        return
    for r in records:
        print(
            f"{r['figure']}: {r['images_per_s']:.1f} vs {r['baseline_images_per_s']:.1f} "
            f"images/s (median) → {r['ratio']:.2f}x (best {r['ratio_best']:.2f}x; {r['device']}, "
            f"batch {r['batch']}); vs exact CPU pixels mean |Δ| ≤ "
            f"{r['max_mean_abs_diff_255']:.3f}, max {r['max_abs_diff_255']}/255"
        )


if __name__ == "__main__":
    main()
