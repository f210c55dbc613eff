"""Q-Align throughput, side by side in one process: the fused batched scorer (shared prefix KV
cache, last position only, five LM-head rows) vs a naive one-image-at-a-time forward with the
full LM head over every position, as the official scorer runs it.

    python benchmarks/qalign_throughput.py --quick            # small config, CPU-sized
    python benchmarks/qalign_throughput.py --device cuda      # real 7B shape, bf16, batch 1/16/64

Random weights (speed does not depend on them). MFU = model FLOPs (2 · multiply-adds of the
linear layers + attention) per second / the device's peak (``--peak-tflops``; default 989 for
H100/H200 bf16 dense). ``--json`` prints the records.
"""

from __future__ import annotations

import tempfile

import numpy as np
import torch
from _timing import best_time, device_and_dtype, emit, machine_name, mfu, model_parser

from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM
from vqpipe.models.mplug_owl2.config import MPLUGOwl2Config
from vqpipe.models.mplug_owl2.tiny import bench_config, train_tiny_tokenizer
from vqpipe.scorers.qalign import QAlignScorer


def flops_per_image(cfg: MPLUGOwl2Config, prefix: int, suffix: int, naive: bool) -> float:
    """Forward FLOPs for one image: ViT + abstractor + LLM over the new tokens (+ the prefix
    and the full LM head over every position when ``naive``)."""
    v, a = cfg.vision, cfg.abstractor
    n = v.num_patches + 1
    vit = v.num_hidden_layers * (
        2 * n * (4 * v.hidden_size**2 + 2 * v.hidden_size * v.intermediate_size)
        + 4 * n * n * v.hidden_size
    )
    q, kv = a.num_learnable_queries, a.num_learnable_queries + n
    d = a.hidden_size
    abstr = (
        a.num_hidden_layers
        * (2 * (2 * q * d * d + 2 * kv * d * d + 3 * q * d * a.intermediate_size) + 4 * q * kv * d)
        + 2 * q * d * cfg.hidden_size
    )
    tokens = cfg.tokens_per_image + suffix + (prefix if naive else 0)
    context = cfg.tokens_per_image + suffix + prefix
    h, m = cfg.hidden_size, cfg.intermediate_size
    kvh = cfg.num_key_value_heads * cfg.head_dim
    llm = cfg.num_hidden_layers * (
        2 * tokens * (2 * h * h + 2 * h * kvh + 3 * h * m) + 4 * tokens * context * h
    )
    head = 2 * (tokens if naive else 1) * h * (cfg.vocab_size if naive else 5)
    return float(vit + abstr + llm + head)


def run(
    quick: bool, device: str, dtype: str, batches: list[int], repeats: int, peak_tflops: float
) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        train_tiny_tokenizer(tmp)  # prompt ids only; the model's vocabulary is its own
        cfg = bench_config() if quick else MPLUGOwl2Config()
        torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, torch.float32)
        model = MPLUGOwl2ForCausalLM.from_config(cfg, dtype=torch_dtype, device=device)
        cfg.save_pretrained(tmp)
        scorer = QAlignScorer(tmp, device=device, dtype=dtype, model=model)
    dev = scorer.device
    size = cfg.vision.image_size
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, (max(batches), 3, size, size), dtype=np.uint8)
    prefix, suffix = len(scorer.prefix_ids), len(scorer.suffix_ids)
    ids = torch.tensor([scorer.prompt_ids], device=dev)
    naive_input = scorer.processor.normalize(torch.as_tensor(pixels[:1]).to(dev)).to(model.dtype)

    def naive() -> None:
        with torch.inference_mode():
            logits = model(ids, images=naive_input).logits  # full head, every position
            logits[:, -1, scorer.level_ids].float().cpu()

    n_naive = 2 if dev.type == "cpu" else 8
    naive_s = best_time(lambda: [naive() for _ in range(n_naive)], dev, repeats) / n_naive
    naive_ips = 1 / naive_s
    machine = machine_name(dev)
    records = []
    for batch in batches:
        chunk = pixels[:batch]
        fused_s = best_time(
            lambda c=chunk: scorer.level_logits(c, [1] * len(c)).cpu(), dev, repeats
        )
        ips = batch / fused_s
        flops = flops_per_image(cfg, prefix, suffix, naive=False)
        records.append(
            {
                "figure": f"fused scorer, batch {batch}, vs naive one-by-one full-head forward",
                "images_per_s": ips,
                "baseline_images_per_s": naive_ips,
                "ratio": ips / naive_ips,
                "tflops_per_s": ips * flops / 1e12,
                "mfu": mfu(ips, flops, dev, peak_tflops),
                "baseline_tflops_per_s": naive_ips
                * flops_per_image(cfg, prefix, suffix, True)
                / 1e12,
                "batch": batch,
                "model": "quick" if quick else "7B (one-align shape)",
                "device": str(dev),
                "dtype": dtype,
                "machine": machine,
            }
        )
    return records


def main() -> None:
    parser = model_parser(__doc__, "a small config that runs on a CPU")
    parser.add_argument("--batch", type=int, nargs="*", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    device, dtype = device_and_dtype(args)
    quick = args.quick or device == "cpu"
    batches = args.batch or ([1, 16, 64] if device == "cuda" else [1, 8])
    records = run(quick, device, dtype, batches, args.repeats, args.peak_tflops)
    emit(records, args.json)


if __name__ == "__main__":
    main()
