"""Q-Align ``tasks=quality,aesthetics`` (one visual encoding per image, two text decodes) vs
two scorers, one per task (each image encoded twice), side by side in one process.

    python benchmarks/qalign_tasks.py --quick            # small config, CPU-sized
    python benchmarks/qalign_tasks.py --device cuda      # real 7B shape, bf16

Random weights (speed does not depend on them). The two arms are timed interleaved, round by
round (min and median of ``--rounds``), on the same batch through ``predict_items`` (what the
pipeline's actor calls). FLOPs per image of each arm are counted once with torch's
FlopCounterMode, and the visual encoding's share of one task's FLOPs is reported (what
``tasks=`` saves per extra prompt). ``--json`` prints the records.
"""

from __future__ import annotations

import statistics
import tempfile
import time

import numpy as np
import torch
from _timing import count_flops, device_and_dtype, emit, machine_name, model_parser, sync

from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM
from vqpipe.models.mplug_owl2.config import MPLUGOwl2Config
from vqpipe.models.mplug_owl2.tiny import bench_config, train_tiny_tokenizer
from vqpipe.scorers.qalign import QAlignScorer


def run(quick: bool, device: str, dtype: str, batch: int, rounds: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        train_tiny_tokenizer(tmp)  # prompt ids only; the model's vocabulary is its own
        cfg = bench_config() if quick else MPLUGOwl2Config()
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
        model = MPLUGOwl2ForCausalLM.from_config(cfg, dtype=torch_dtype, device=device)
        cfg.save_pretrained(tmp)
        build = {"device": device, "dtype": dtype, "model": model}
        both = QAlignScorer(tmp, tasks=("quality", "aesthetics"), **build)
        quality = QAlignScorer(tmp, task="quality", **build)
        aesthetics = QAlignScorer(tmp, task="aesthetics", **build)
    dev = both.device
    size = cfg.vision.image_size
    rng = np.random.default_rng(0)
    items = list(rng.integers(0, 255, (batch, 1, 3, size, size), dtype=np.uint8))

    def shared() -> None:
        both.predict_items(items, batch)

    def separate() -> None:
        quality.predict_items(items, batch)
        aesthetics.predict_items(items, batch)

    for fn in (shared, separate):  # warm-up: prefix caches, kernels, allocator
        fn()
    times: dict[str, list[float]] = {"shared": [], "separate": []}
    for _ in range(rounds):  # interleaved: drift hits both arms alike
        for name, fn in (("shared", shared), ("separate", separate)):
            sync(dev)
            start = time.perf_counter()
            fn()
            sync(dev)
            times[name].append(time.perf_counter() - start)
    one = items[:1]
    flops_shared = count_flops(lambda: both.predict_items(one, 1), model)
    flops_separate = count_flops(
        lambda: (quality.predict_items(one, 1), aesthetics.predict_items(one, 1)), model
    )
    flops_encode = count_flops(lambda: quality.encode(one[0]), model)
    flops_task = count_flops(lambda: quality.predict_items(one, 1), model)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    return [
        {
            "figure": f"qalign tasks=quality,aesthetics vs a scorer per task, batch {batch}",
            "images_per_s": batch / best["shared"],
            "baseline_images_per_s": batch / best["separate"],
            "ratio": best["separate"] / best["shared"],
            "median_ratio": median["separate"] / median["shared"],
            "rounds": rounds,
            "flops_per_image": flops_shared,
            "baseline_flops_per_image": flops_separate,
            "flops_ratio": flops_separate / flops_shared,
            "visual_share_of_one_task": flops_encode / flops_task,
            "batch": batch,
            "model": "quick" if quick else "7B (one-align shape)",
            "device": str(dev),
            "dtype": dtype,
            "machine": machine_name(dev),
        }
    ]


def main() -> None:
    parser = model_parser(__doc__, "a small config that runs on a CPU")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    device, dtype = device_and_dtype(args)
    quick = args.quick or device == "cpu"
    batch = args.batch or (32 if device == "cuda" else 8)
    emit(run(quick, device, dtype, batch, args.rounds), args.json)


if __name__ == "__main__":
    main()
