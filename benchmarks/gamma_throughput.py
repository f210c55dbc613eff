"""Gamma throughput, side by side in one process: fused batched scorer vs a naive per-image
loop, MoAE (fused experts) vs MoAE (loop over experts) vs plain CLIP.

    python benchmarks/gamma_throughput.py                 # ViT-B-16 shape, random weights
    python benchmarks/gamma_throughput.py --quick         # the small demo config
    python benchmarks/gamma_throughput.py --device cuda --dtype bf16 --batch 256

Random weights (the speed does not depend on their values). Prints one line per comparison
with its ratio; ``--json`` prints the records.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from _timing import best_time, count_flops, device_and_dtype, emit, machine_name, mfu, model_parser
from PIL import Image

from vqpipe.models.gamma import GammaConfig, GammaModel, MoAEMLP, create_clip
from vqpipe.scorers.gamma import GammaScorer


def run(config: GammaConfig, device: str, dtype: str, batch: int, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    model = GammaModel(config).eval()
    scorer = GammaScorer(model=model, device=device, dtype=dtype)
    dev = scorer.device
    size = scorer.image_size
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 255, (size + 32, size + 48, 3), dtype=np.uint8))
    ] * batch
    pixels = {"pixels": np.stack([scorer.preprocess(im)["pixels"] for im in images])}
    records = []

    fused = best_time(lambda: scorer.predict(pixels), dev, repeats)
    flops = count_flops(lambda: scorer.predict({"pixels": pixels["pixels"][:1]}), scorer.model)
    single = {"pixels": pixels["pixels"][:1]}
    n_naive = max(4, batch // 8)
    naive = (
        best_time(lambda: [scorer.predict(single) for _ in range(n_naive)], dev, repeats) / n_naive
    )
    records.append(
        {
            "figure": "fused batched scorer vs per-image loop",
            "images_per_s": batch / fused,
            "gflops_per_image": flops / 1e9,
            "mfu": mfu(batch / fused, flops, dev),
            "baseline_images_per_s": 1 / naive,
            "ratio": (batch / fused) * naive,
        }
    )

    x = scorer.pixels_to_input(pixels["pixels"])
    amp = scorer.autocast_dtype

    def image_tower(m):
        def call():
            with (
                torch.inference_mode(),
                torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None),
            ):
                m.encode_image(x)

        return call

    def set_fused(flag: bool) -> None:
        for module in scorer.model.modules():
            if isinstance(module, MoAEMLP):
                module.fused = flag

    set_fused(True)
    moae_fused = best_time(image_tower(scorer.model.clip_model), dev, repeats)
    set_fused(False)
    moae_loop = best_time(image_tower(scorer.model.clip_model), dev, repeats)
    plain = create_clip(config).eval().to(dev)
    plain_s = best_time(image_tower(plain), dev, repeats)
    records.append(
        {
            "figure": "MoAE fused experts vs loop over experts (image tower)",
            "images_per_s": batch / moae_fused,
            "baseline_images_per_s": batch / moae_loop,
            "ratio": moae_loop / moae_fused,
        }
    )
    records.append(
        {
            "figure": "MoAE overhead vs plain CLIP (image tower)",
            "images_per_s": batch / moae_loop,
            "baseline_images_per_s": batch / plain_s,
            "ratio": moae_loop / plain_s,
        }
    )
    machine = machine_name(dev)
    for r in records:
        r.update(
            {
                "model": config.clip_model,
                "batch": batch,
                "device": str(dev),
                "dtype": dtype,
                "machine": machine,
            }
        )
    return records


def main() -> None:
    parser = model_parser(__doc__, "the small demo config")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        config = GammaConfig(clip_model="vqpipe-demo-ViT-16", n_moae_layers=2, adapter_hidden=64)
    else:
        config = GammaConfig()
    device, dtype = device_and_dtype(args)
    batch = args.batch or (256 if device == "cuda" else 16)
    records = run(copy.deepcopy(config), device, dtype, batch, args.repeats)
    emit(records, args.json)


if __name__ == "__main__":
    main()
