"""Pairwise comparison throughput (``vqpipe compare``'s model step), best-of-n against one
reference, both orders: batched pairs with one vision pass per distinct image and one prefix KV
cache per distinct first image vs the official way (one full two-image forward per pair and
order, full LM head), same model.

    python benchmarks/compare_pairs.py --quick        # small config on a CPU
    python benchmarks/compare_pairs.py --device cuda  # 7B shape, bf16

Random weights; the anchor matrix is given, so nothing but pair comparisons is timed.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from _timing import best_time, device_and_dtype, emit, machine_name, model_parser
from PIL import Image

from vqpipe.models.mplug_owl2 import MPLUGOwl2Config, MPLUGOwl2ForCausalLM
from vqpipe.models.mplug_owl2.tiny import bench_config, train_tiny_tokenizer
from vqpipe.scorers.anchor_sets import AnchorSet
from vqpipe.scorers.compare2score import Compare2ScoreScorer
from vqpipe.scorers.pairwise import compare_pairs


def run(quick: bool, device: str, dtype: str, n: int, repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        train_tiny_tokenizer(tmp)
        cfg = bench_config() if quick else MPLUGOwl2Config()
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
        model = MPLUGOwl2ForCausalLM.from_config(cfg, dtype=torch_dtype, device=device)
        cfg.save_pretrained(tmp)
        size = cfg.vision.image_size
        Image.new("RGB", (size, size)).save(f"{tmp}/a.png")
        table = pd.DataFrame({"file": ["a.png"], "mos": [1.0], "std": [1.0]})
        scorer = Compare2ScoreScorer(
            tmp,
            device=device,
            dtype=dtype,
            model=model,
            anchors=AnchorSet(root=Path(tmp), table=table),
            anchor_matrix=np.array([[0.5]]),
        )
    dev = scorer.device
    rng = np.random.default_rng(0)
    images = list(rng.integers(0, 255, (n + 1, 3, size, size), dtype=np.uint8))
    reference, candidates = [0] * n, list(range(1, n + 1))  # best-of-n: image 0 is the reference
    fast_s = best_time(lambda: compare_pairs(scorer, images, reference, candidates), dev, repeats)

    ids = torch.tensor([scorer.prompt_ids], device=dev)
    pixels = scorer.to_input(np.stack(images))

    def official(pairs: int) -> None:
        with torch.inference_mode():
            for b in range(1, pairs + 1):
                for first, second in ((0, b), (b, 0)):  # both orders, one full forward each
                    _ = model(ids, images=torch.stack([pixels[first], pixels[second]])).logits

    n_naive = min(n, 4)
    naive_s = best_time(lambda: official(n_naive), dev, repeats)
    fast, naive = n / fast_s, n_naive / naive_s
    return [
        {
            "figure": f"best-of-{n} pairs, both orders, shared vision + prefix vs official",
            "images_per_s": fast,  # candidate images (pairs) per second
            "baseline_images_per_s": naive,
            "ratio": fast / naive,
            "model": "quick" if quick else "7B (Compare2Score shape)",
            "device": str(dev),
            "dtype": dtype,
            "machine": machine_name(dev),
        }
    ]


def main() -> None:
    parser = model_parser(__doc__)
    parser.add_argument("--pairs", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    device, dtype = device_and_dtype(args)
    quick = args.quick or device == "cpu"
    pairs = args.pairs or (32 if device == "cuda" else 8)
    emit(run(quick, device, dtype, pairs, args.repeats), args.json)


if __name__ == "__main__":
    main()
