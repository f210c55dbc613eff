"""Compare2Score throughput, side by side in one process: anchor-prefix KV caching (each test
image encoded once, every (test, anchor) pair of a batch in one forward after the cached
anchor prefix, five LM-head rows) vs the official way (m full two-image forwards per test
image with the full LM head), same model.

    python benchmarks/compare2score_throughput.py --quick        # small config on a CPU
    python benchmarks/compare2score_throughput.py --device cuda  # 7B shape, bf16, m = 5

Random weights; the anchor matrix is given (the official constant), so only scoring is timed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _timing import best_time, count_flops, device_and_dtype, emit, machine_name, mfu, model_parser
from PIL import Image

from vqpipe.models.mplug_owl2 import MPLUGOwl2Config, MPLUGOwl2ForCausalLM
from vqpipe.models.mplug_owl2.tiny import bench_config, train_tiny_tokenizer
from vqpipe.scorers.anchor_sets import OFFICIAL_ANCHOR_MATRIX, AnchorSet
from vqpipe.scorers.compare2score import Compare2ScoreScorer, map_scores


def run(quick: bool, device: str, dtype: str, batch: int, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        train_tiny_tokenizer(tmp)
        cfg = bench_config() if quick else MPLUGOwl2Config()
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
        model = MPLUGOwl2ForCausalLM.from_config(cfg, dtype=torch_dtype, device=device)
        cfg.save_pretrained(tmp)
        rng = np.random.default_rng(0)
        size = cfg.vision.image_size
        files = []
        for j in range(5):
            name = f"a{j}.png"
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                f"{tmp}/{name}"
            )
            files.append(name)
        table = pd.DataFrame({"file": files, "mos": np.arange(5.0), "std": np.ones(5)})
        anchors = AnchorSet(root=Path(tmp), table=table)
        scorer = Compare2ScoreScorer(
            tmp,
            device=device,
            dtype=dtype,
            model=model,
            anchors=anchors,
            anchor_matrix=OFFICIAL_ANCHOR_MATRIX,
        )
    dev = scorer.device
    m = len(scorer.anchor_pixels)
    pixels = rng.integers(0, 255, (batch, 3, size, size), dtype=np.uint8)
    fast_s = best_time(lambda: scorer.predict({"pixels": pixels}), dev, repeats)
    flops = count_flops(lambda: scorer.comparison_logits(pixels[:1]), model)

    ids = torch.tensor([scorer.prompt_ids], device=dev)
    anchor_in = scorer.to_input(scorer.anchor_pixels)

    def official_one(test_pixels: np.ndarray) -> None:
        test = scorer.to_input(test_pixels[None])[0]
        p = []
        with torch.inference_mode():
            for j in range(m):  # m full two-image forwards, full LM head at every position
                logits = model(ids, images=torch.stack([anchor_in[j], test])).logits
                w = torch.softmax(logits[0, -1, scorer.word_ids_].float() / 100, -1)
                p.append(float(w @ torch.tensor([0, 0.25, 0.5, 0.75, 1.0], device=dev)))
        map_scores(scorer.anchor_matrix, np.array([p]))

    n_naive = 2
    naive_s = best_time(lambda: [official_one(pixels[i]) for i in range(n_naive)], dev, repeats)
    naive_ips = n_naive / naive_s
    machine = machine_name(dev)
    return [
        {
            "figure": f"anchor-prefix cache, batch {batch}, m={m}, vs official m full passes",
            "images_per_s": batch / fast_s,
            "baseline_images_per_s": naive_ips,
            "ratio": (batch / fast_s) / naive_ips,
            "gflops_per_image": flops / 1e9,
            "mfu": mfu(batch / fast_s, flops, dev),
            "model": "quick" if quick else "7B (Compare2Score shape)",
            "device": str(dev),
            "dtype": dtype,
            "machine": machine,
        }
    ]


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, dtype = device_and_dtype(args)
    quick = args.quick or device == "cpu"
    batch = args.batch or (32 if device == "cuda" else 8)
    records = run(quick, device, dtype, batch, args.repeats)
    emit(records, args.json)


if __name__ == "__main__":
    main()
