"""Cores per GPU: how many CPU cores of decoding one GPU needs, from measured figures.

    python benchmarks/cores_per_gpu.py            # FLOPs at the real shapes, decode per core
    python benchmarks/cores_per_gpu.py --quick    # 3 decode rounds
    python benchmarks/cores_per_gpu.py --json

Two halves, each labelled as what it is:

* **measured**: FLOPs per image of each scorer's ``predict_stacked`` at its real shape
  (``FlopCounterMode``, the counter of ``benchmarks/gpu_suite.sh``). Gamma (CLIP ViT-B/16 +
  MoAE) is counted whole; the 7B LMMs are counted with 1 and 2 layers of each stack (vision
  tower, abstractor, LLM) at the real widths, and extended to the real depths (every layer of a
  stack does the same work, so ``F(L) = F(1) + (L − 1) · (F(2) − F(1))`` is exact). The prompt
  prefix and anchor caches are built before counting, as in a running actor. Decode +
  preprocessing images/s on one core come from ``benchmarks/decode_throughput.py`` (1 MP and
  12 MP JPEGs, exact and draft paths).
* **projected (arithmetic, not a GPU measurement)**: images/s per GPU = ``mfu`` × the bf16
  dense peak (989 TFLOP/s for an H100 SXM or H200) ÷ FLOPs per image, and cores per GPU =
  that rate ÷ the per-core decode rate. ``benchmarks/gpu_suite.sh`` measures the real rate on a
  GPU; with ``decode=gpu`` the cores only read bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PEAK_TFLOPS = 989.0  # H100 SXM / H200, bf16 dense
MFU = 0.5
BATCH = 2  # images per counted call (FLOPs per image do not depend on it)


def _gamma_flops() -> float:
    import numpy as np
    from _gpu_suite import count_flops

    from vqpipe.models.gamma import GammaConfig, GammaModel
    from vqpipe.scorers.gamma import GammaScorer

    scorer = GammaScorer(model=GammaModel(GammaConfig()).eval(), device="cpu", dtype="fp32")
    pixels = np.zeros((BATCH, 3, scorer.image_size, scorer.image_size), np.uint8)
    scorer.predict_stacked(
        pixels, [1] * BATCH, BATCH
    )  # scene-prompt features cached, as in an actor
    flops, error = count_flops(
        lambda: scorer.predict_stacked(pixels, [1] * BATCH, BATCH), scorer.model
    )
    if flops is None:
        raise RuntimeError(error)
    return flops / BATCH


def _lmm_flops(name: str, vision: int, abstractor: int, llm: int) -> float:
    """FLOPs per image of ``name``'s ``predict_stacked``, given depths, real widths."""
    import numpy as np
    import torch
    from _gpu_suite import build_scorer, count_flops

    from vqpipe.models.mplug_owl2 import MPLUGOwl2Config

    real = MPLUGOwl2Config()
    shallow = MPLUGOwl2Config.from_dict(
        {
            **real.to_dict(),
            "num_hidden_layers": llm,
            "visual_config": {
                "visual_model": {**real.vision.to_dict(), "num_hidden_layers": vision},
                "visual_abstractor": {**real.abstractor.to_dict(), "num_hidden_layers": abstractor},
            },
        }
    )
    with tempfile.TemporaryDirectory(prefix=f"cores-{name}-") as tmp:
        torch.manual_seed(0)
        scorer, _ = build_scorer(name, False, "cpu", "fp32", tmp, config=shallow)
        size = scorer.model.config.vision.image_size
        pixels = np.zeros((BATCH, 3, size, size), np.uint8)
        scorer.predict_stacked(
            pixels, [1] * BATCH, BATCH
        )  # prefix / anchor caches built, as in an actor
        flops, error = count_flops(
            lambda: scorer.predict_stacked(pixels, [1] * BATCH, BATCH), scorer.model
        )
    if flops is None:
        raise RuntimeError(error)
    return flops / BATCH


def lmm_flops(name: str) -> dict[str, float]:
    """FLOPs per image at the 7B shape by per-layer extension (see the module docstring)."""
    from vqpipe.models.mplug_owl2 import MPLUGOwl2Config

    real = MPLUGOwl2Config()
    depth = {
        "vision": real.vision.num_hidden_layers,
        "abstractor": real.abstractor.num_hidden_layers,
        "llm": real.num_hidden_layers,
    }
    base = _lmm_flops(name, 1, 1, 1)
    total = base
    per_layer = {}
    for i, stack in enumerate(depth):
        layers = [1, 1, 1]
        layers[i] = 2
        per_layer[stack] = _lmm_flops(name, *layers) - base
        total += (depth[stack] - 1) * per_layer[stack]
    return {"total": total, **{f"per_{k}_layer": v for k, v in per_layer.items()}}


def run(rounds: int) -> list[dict[str, Any]]:
    from decode_throughput import run as decode_run

    flops = {
        "gamma": _gamma_flops(),
        "qalign": lmm_flops("qalign")["total"],
        "compare2score": lmm_flops("compare2score")["total"],
    }
    peak = PEAK_TFLOPS * 1e12
    per_gpu = {name: MFU * peak / f for name, f in flops.items()}
    decode = decode_run(rounds=rounds, per_round_s=0.3)
    rows = [
        {
            "figure": f"{name}: FLOPs per image (measured), images/s per GPU (projected)",
            "flops_per_image": f,
            "projected_images_per_s_per_gpu": per_gpu[name],
        }
        for name, f in flops.items()
    ]
    for record in decode:
        geometry = "gamma" if record["model"].startswith("Gamma") else "qalign"
        size = record["figure"].split(" JPEG")[0].removeprefix("decode+preprocess ")
        scorers = ["gamma"] if geometry == "gamma" else ["qalign", "compare2score"]
        for scorer in scorers:
            for path, rate in (
                ("exact", record["baseline_images_per_s"]),
                ("draft", record["images_per_s"]),
            ):
                rows.append(
                    {
                        "figure": f"cores per GPU: {scorer}, {size} JPEG, {path} decode",
                        "scorer": scorer,
                        "jpeg": size,
                        "path": path,
                        "decode_images_per_s_per_core": rate,
                        "projected_images_per_s_per_gpu": per_gpu[scorer],
                        "cores_per_gpu": per_gpu[scorer] / rate,
                    }
                )
    for row in rows:
        row.update(peak_tflops_bf16=PEAK_TFLOPS, mfu=MFU)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 decode rounds")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    records = run(rounds=3 if args.quick else 9)
    if args.json:
        print(json.dumps(records, indent=2))
        return
    print(f"projected at {MFU:.0%} MFU of {PEAK_TFLOPS:g} TFLOP/s (arithmetic, not measured):")
    for r in records:
        if "flops_per_image" in r:
            print(
                f"  {r['figure'].split(':')[0]}: {r['flops_per_image'] / 1e9:.1f} GFLOP/image "
                f"(measured) → {r['projected_images_per_s_per_gpu']:,.0f} images/s per GPU"
            )
    print("cores per GPU (projected rate ÷ measured decode images/s per core):")
    for r in (r for r in records if "cores_per_gpu" in r):
        print(
            f"  {r['scorer']:<14} {r['jpeg']:>6} {r['path']:<5} "
            f"{r['decode_images_per_s_per_core']:7.1f} images/s/core → "
            f"{r['cores_per_gpu']:7.0f} cores"
        )


if __name__ == "__main__":
    main()
