"""Downscale-on-decode: images/s per CPU core for the decode + preprocessing half of a scorer.

    python benchmarks/decode_throughput.py           # 1 MP and 12 MP JPEGs, 9 interleaved rounds
    python benchmarks/decode_throughput.py --quick   # 3 rounds

For each JPEG size and each scorer geometry (Gamma: short side → 224 and centre crop; Q-Align /
Compare2Score: pad to square → 448), times bytes → ``decode_image`` → preprocessor → uint8
[3, S, S] on one thread, the exact path (full decode, one resampling) against the
``exact_preprocessing=False`` path (JPEG draft at ≥ 2× the input size, Pillow's
``reducing_gap``). Full and draft alternate within each round (same machine state); per path the
min and median over rounds. Also the mean |Δ| (of 255) between the two paths' pixels.
Prints one line per case with its ratio (draft vs full, median); target ≥ 4× on 12 MP.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.test_downscale_decode import photo
from vqpipe.media.decode import decode_image
from vqpipe.models.mplug_owl2 import MPLUGOwl2ImageProcessor
from vqpipe.scorers._owl2 import Owl2Preprocessor
from vqpipe.scorers.gamma import GammaPreprocessor

SIZES = {"1 MP": (1152, 864), "12 MP": (4000, 3000)}
SCORERS = {
    "Gamma 224": lambda exact: GammaPreprocessor(224, exact),
    "Q-Align 448": lambda exact: Owl2Preprocessor(MPLUGOwl2ImageProcessor(size=448), exact),
}


def _jpeg(size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    photo(*size).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _one(data: bytes, prep) -> np.ndarray:
    image, _ = decode_image(data, draft=prep.draft)
    return prep(image)["pixels"]


def run(rounds: int = 9, per_round_s: float = 0.5) -> list[dict]:
    torch.set_num_threads(1)  # one core: torchvision's resize, Pillow decodes on one thread
    records = []
    for size_name, size in SIZES.items():
        data = _jpeg(size)
        for scorer_name, make in SCORERS.items():
            paths = {"full": make(True), "draft": make(False)}
            diff = np.abs(
                _one(data, paths["full"]).astype(np.float64)
                - _one(data, paths["draft"]).astype(np.float64)
            ).mean()
            start = time.perf_counter()
            _one(data, paths["full"])  # warm-up, and how many calls fill a round
            n = max(1, int(per_round_s / (time.perf_counter() - start)))
            times: dict[str, list[float]] = {"full": [], "draft": []}
            for _ in range(rounds):  # interleaved: full and draft share each round's conditions
                for name, prep in paths.items():
                    start = time.perf_counter()
                    for _ in range(n):
                        _one(data, prep)
                    times[name].append((time.perf_counter() - start) / n)
            full_med, draft_med = (
                statistics.median(times["full"]),
                statistics.median(times["draft"]),
            )
            records.append(
                {
                    "figure": f"decode+preprocess {size_name} JPEG → {scorer_name}, draft vs full",
                    "images_per_s": 1 / draft_med,
                    "baseline_images_per_s": 1 / full_med,
                    "ratio": full_med / draft_med,
                    "ratio_best": min(times["full"]) / min(times["draft"]),
                    "full_images_per_s_best": 1 / min(times["full"]),
                    "draft_images_per_s_best": 1 / min(times["draft"]),
                    "mean_abs_diff_255": float(diff),
                    "rounds": rounds,
                    "calls_per_round": n,
                    "model": scorer_name,
                    "device": platform.processor() or platform.machine(),
                    "dtype": "uint8, 1 thread",
                }
            )
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of ~0.2 s")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records = run(rounds=3, per_round_s=0.2) if args.quick else run()
    if args.json:
        print(json.dumps(records, indent=2))
        return
    for r in records:
        print(
            f"{r['figure']}: {r['images_per_s']:.1f} vs {r['baseline_images_per_s']:.1f} "
            f"images/s per core (median) → {r['ratio']:.2f}x; best "
            f"{r['draft_images_per_s_best']:.1f} vs {r['full_images_per_s_best']:.1f} → "
            f"{r['ratio_best']:.2f}x; mean |Δ| {r['mean_abs_diff_255']:.2f}/255"
        )


if __name__ == "__main__":
    main()
