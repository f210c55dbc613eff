"""Host path of preprocessed pixels: ms per image from the preprocessor's output to the device
copy, the old path against the tensor column path (issue 26, item 1).

    python benchmarks/host_path.py                   # 9 interleaved rounds, both input sizes
    python benchmarks/host_path.py --quick           # 3 rounds
    python benchmarks/host_path.py --json out.json   # also write the records (--json alone:
                                                     # print them, as `vqpipe bench` reads)

Per batch of B distinct uint8 [3, S, S] images (S = 224: Gamma, 448: Q-Align), both halves of
the trip, with Ray Data's own block conversions (the transfer between processes is the same
bytes either way, left out):

* old: decode task ``np.stack`` + ``.npy`` bytes per row → Arrow block; actor: numpy batch →
  ``np.load`` per row → ``np.stack`` of the frames → ``pin_memory`` → ``.to(device)``;
* new: decode task one copy per row into the variable-shaped tensor column
  (:mod:`vqpipe.pipeline.pixels`); actor: numpy batch (views) → one copy into a reused pinned
  buffer (:class:`vqpipe.scorers.transfer.StagingBuffers`) → ``.to(device)`` on its own stream.

Both end when the device copy has ended (on the CPU there is no device copy: the old path's
tensor, the new path's buffer). The two paths alternate within each round; per path the min and
median over rounds of ms per image, and the ratio (old / new), for the whole trip and for the
actor's half alone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _timing import machine_name, sync
from ray.data.block import BlockAccessor

from vqpipe.pipeline.pixels import column_items, item_frames, to_block
from vqpipe.pipeline.stages import _from_bytes, _to_bytes
from vqpipe.scorers.transfer import StagingBuffers

SIZES = {"Gamma 3x224x224": 224, "Q-Align 3x448x448": 448}
COLUMN = "_input_x"


def _old(frames: list[np.ndarray], device: torch.device) -> tuple[float, float]:
    start = time.perf_counter()
    cells = np.array([_to_bytes(np.stack([f])) for f in frames], dtype=object)
    block = BlockAccessor.batch_to_block({COLUMN: cells})
    middle = time.perf_counter()
    batch = BlockAccessor.for_block(block).to_batch_format("numpy")
    inputs = [_from_bytes(b) for b in batch[COLUMN]]
    x = torch.as_tensor(np.stack([f for item in inputs for f in item]))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    sync(device)
    return middle - start, time.perf_counter() - middle


def _new(
    frames: list[np.ndarray], device: torch.device, buffers: StagingBuffers
) -> tuple[float, float]:
    start = time.perf_counter()
    cells = np.empty(len(frames), dtype=object)
    cells[:] = [item_frames([f]) for f in frames]
    block = to_block({COLUMN: cells}, [COLUMN])
    middle = time.perf_counter()
    batch = BlockAccessor.for_block(block).to_batch_format("numpy")
    staged = buffers.stage(column_items(batch[COLUMN]))
    staged.to_device(device)
    if staged.event is not None:
        staged.event.synchronize()
    staged.release()
    return middle - start, time.perf_counter() - middle


def run(rounds: int = 9, batch: int = 32, calls: int = 5) -> list[dict]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(1)  # an actor's one CPU
    records = []
    for name, size in SIZES.items():
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 255, (3, size, size), dtype=np.uint8) for _ in range(batch)]
        buffers = StagingBuffers(pinned=device.type == "cuda")
        paths = {
            "old": lambda f=frames: _old(f, device),
            "new": lambda f=frames, b=buffers: _new(f, device, b),
        }
        for fn in paths.values():  # warm-up: buffers, allocator, CUDA context
            fn()
        whole: dict[str, list[float]] = {"old": [], "new": []}
        actor: dict[str, list[float]] = {"old": [], "new": []}
        for _ in range(rounds):  # interleaved: both paths see each round's conditions
            for key, fn in paths.items():
                times = [fn() for _ in range(calls)]
                whole[key].append(1e3 * sum(a + b for a, b in times) / (calls * batch))
                actor[key].append(1e3 * sum(b for _, b in times) / (calls * batch))
        med = {k: statistics.median(v) for k, v in whole.items()}
        best = {k: min(v) for k, v in whole.items()}
        actor_med = {k: statistics.median(v) for k, v in actor.items()}
        setting = {
            "batch": batch,
            "rounds": rounds,
            "calls_per_round": calls,
            "model": name,
            "device": machine_name(device),
            "dtype": "uint8",
        }
        records.append(
            {
                "figure": f"host path {name}, preprocessed → device copy, tensor column vs .npy",
                "images_per_s": 1e3 / med["new"],
                "baseline_images_per_s": 1e3 / med["old"],
                "ratio": med["old"] / med["new"],
                "ratio_best": best["old"] / best["new"],
                "old_ms_per_image_median": med["old"],
                "new_ms_per_image_median": med["new"],
                "old_ms_per_image_min": best["old"],
                "new_ms_per_image_min": best["new"],
                "actor_old_ms_per_image_median": actor_med["old"],
                "actor_new_ms_per_image_median": actor_med["new"],
                "actor_ratio": actor_med["old"] / actor_med["new"],
                "buffers_allocated": buffers.allocated,
                **setting,
            }
        )
        actor_best = {k: min(v) for k, v in actor.items()}
        records.append(  # the actor's half alone: the part the target is about
            {
                "figure": f"host path {name}, the actor's half: batch → device copy",
                "images_per_s": 1e3 / actor_med["new"],
                "baseline_images_per_s": 1e3 / actor_med["old"],
                "ratio": actor_med["old"] / actor_med["new"],
                "ratio_best": actor_best["old"] / actor_best["new"],
                **setting,
            }
        )
    return records


def _table(records: list[dict]) -> str:
    records = [r for r in records if "old_ms_per_image_median" in r]
    head = (
        f"{'input':<20} {'old ms/img':>18} {'new ms/img':>18} {'ratio':>14} {'actor half':>22}"
        "\n" + f"{'':<20} {'median (min)':>18} {'median (min)':>18} {'median (min)':>14}"
        f" {'old → new, ratio':>22}"
    )
    rows = [
        f"{r['model']:<20} "
        f"{r['old_ms_per_image_median']:>8.4f} ({r['old_ms_per_image_min']:.4f}) "
        f"{r['new_ms_per_image_median']:>8.4f} ({r['new_ms_per_image_min']:.4f}) "
        f"{r['ratio']:>6.1f}x ({r['ratio_best']:.1f}x) "
        f"{r['actor_old_ms_per_image_median']:.3f} → {r['actor_new_ms_per_image_median']:.4f},"
        f" {r['actor_ratio']:.0f}x"
        for r in records
    ]
    return "\n".join([head, *rows, f"device: {records[0]['device']}, batch {records[0]['batch']}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 2 calls")
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the records to PATH (alone: print them instead of the table)",
    )
    args = parser.parse_args()
    records = run(rounds=3, calls=2) if args.quick else run()
    if args.json == "-":
        print(json.dumps(records, indent=2))
        return
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=2)
    print(_table(records))
    for r in (r for r in records if "old_ms_per_image_median" in r):
        print(
            f"{r['figure']}: {r['new_ms_per_image_median']:.4f} vs "
            f"{r['old_ms_per_image_median']:.4f} ms per image → {r['ratio']:.1f}x vs .npy"
        )


if __name__ == "__main__":
    main()
