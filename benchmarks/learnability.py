"""Learnability: train a small model from scratch on synthetic distortions, report the SRCC on
the held-out content split (the issue's target: ≥ 0.8).

    python benchmarks/learnability.py --method qalign [--epochs 8] [--contents 600]
    python benchmarks/learnability.py --method gamma --tiny   # the test's recipe: 300 contents,
                                                              # 7 epochs, fixed DCT patch embedding

Q-Align: a tiny mPLUG-Owl2 (64 px, 8 px patches, 96-wide 2-layer ViT whose patch embedding is
a fixed DCT basis, 2-layer 64-wide LLaMA) fine-tuned with the level-SFT loop
(:func:`vqpipe.train.lmm.train_qalign`, AdamW 3e-4) on 600 synthetic contents, scored by
:class:`QAlignScorer`. Gamma: the tiny 64 px config (``--tiny``) or the demo config trained end
to end by :func:`vqpipe.train.gamma.train_gamma`. Prints one JSON record (SRCC/PLCC overall
and per distortion, minutes); ``--out`` also writes it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vqpipe.data import DISTORTIONS, make_image_dataset
from vqpipe.eval import plcc, srcc

TINY_CONFIGS = {64: "vqpipe-tiny-ViT-8", 96: "vqpipe-tiny96-ViT-8"}


def held_out_report(scores: np.ndarray, rows) -> dict:
    mos = rows["mos"].to_numpy()
    return {
        "images": len(rows),
        "srcc": round(srcc(scores, mos), 4),
        "plcc": round(plcc(scores, mos), 4),
        "srcc_by_distortion": {
            kind: round(srcc(scores[mask], mos[mask]), 4)
            for kind in DISTORTIONS
            if (mask := (rows["distortion"] == kind).to_numpy()).sum() > 2
        },
    }


def run_qalign(args: argparse.Namespace, tmp: Path) -> tuple[np.ndarray, object]:
    import sentencepiece

    from vqpipe.models.mplug_owl2 import MPLUGOwl2ForCausalLM
    from vqpipe.models.mplug_owl2.tiny import (
        make_tiny_checkpoint,
        tiny_config,
        train_tiny_tokenizer,
    )
    from vqpipe.scorers.qalign import QAlignScorer
    from vqpipe.train.gamma import dct_patch_init_
    from vqpipe.train.lmm import train_qalign

    table = make_image_dataset(tmp / "data", n_contents=args.contents, size=(64, 64))
    tokenizer = train_tiny_tokenizer(tmp / "tokenizer")
    vocab = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()
    width = args.vision_width
    visual_model = {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 64,
        "patch_size": 8,
    }
    abstractor = {
        "num_learnable_queries": 4,
        "hidden_size": width,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 3 * width // 2,
        "encoder_hidden_size": width,
        "grid_size": 8,
    }
    config = tiny_config(
        image_size=64,
        patch_size=8,
        vocab_size=vocab,
        visual_config={"visual_model": visual_model, "visual_abstractor": abstractor},
    )
    ckpt = make_tiny_checkpoint(tmp / "tiny", seed=args.seed, std=0.02, config=config)
    if not args.train_patch_embed:  # the DCT basis, kept fixed (as for the tiny Gamma)
        model = MPLUGOwl2ForCausalLM.from_pretrained(ckpt)
        dct_patch_init_(model.model.vision_model.embeddings.patch_embed)
        model.save_pretrained(ckpt)
    train_qalign(
        {
            "checkpoint": str(ckpt),
            "datasets": [{"table": table}],
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "warmup": 0.05,
            "freeze_patch_embed": not args.train_patch_embed,
            "validate": False,
            "device": "cpu",
            "output": str(tmp / "trained"),
            "seed": args.seed,
        }
    )
    scorer = QAlignScorer(tmp / "trained", device="cpu")
    test = table[table["split"] == "test"]
    return scorer.score([Image.open(p) for p in test["path"]]), test


def run_gamma(args: argparse.Namespace, tmp: Path) -> tuple[np.ndarray, object]:
    from vqpipe.scorers.gamma import GammaScorer
    from vqpipe.train.gamma import from_scratch_config, train_gamma

    side = args.tiny_size
    size = (side, side) if args.tiny else (256, 192)
    table = make_image_dataset(tmp / "data", n_contents=args.contents, size=size)
    clip_model = args.clip_model or (TINY_CONFIGS[side] if args.tiny else "vqpipe-demo2-ViT-8")
    train_gamma(
        from_scratch_config(
            clip_model,
            table,
            args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            freeze_patch_embed=not args.train_patch_embed,
            validate=False,
            output=str(tmp / "gamma.safetensors"),
            seed=args.seed,
        )
    )
    scorer = GammaScorer(checkpoint=tmp / "gamma.safetensors", device="cpu")
    test = table[table["split"] == "test"]
    return scorer.score([Image.open(p) for p in test["path"]]), test


DEFAULTS = {"qalign": {"contents": 600, "epochs": 8, "lr": 3e-4}}
DEFAULTS["gamma"] = {"contents": 300, "epochs": 7, "lr": 1e-3}
"""Per-method recipe of the learnability runs (the Gamma one is the test's)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("qalign", "gamma"), default="qalign")
    parser.add_argument("--contents", type=int, default=None, help="default: 600 / 300")
    parser.add_argument("--epochs", type=int, default=None, help="default: 8 / 7")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=None, help="default: 3e-4 / 1e-3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="gamma: small square images")
    parser.add_argument("--tiny-size", type=int, default=64, choices=sorted(TINY_CONFIGS))
    parser.add_argument("--clip-model", default=None, help="gamma: any open_clip config name")
    parser.add_argument("--vision-width", type=int, default=96, help="qalign: tiny ViT width")
    parser.add_argument(
        "--train-patch-embed",
        action="store_true",
        help="train the patch embedding (gamma: from its DCT init; qalign: from random init)",
    )
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    parser.add_argument("--quick", action="store_true", help="vqpipe bench: the tiny Gamma run")
    parser.add_argument("--json", action="store_true", help="vqpipe bench: a list of records")
    args = parser.parse_args()
    if args.quick:
        args.method, args.tiny = "gamma", True
    if args.threads:
        torch.set_num_threads(args.threads)
    for key, value in DEFAULTS[args.method].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run = run_qalign if args.method == "qalign" else run_gamma
        scores, test = run(args, Path(tmp))
    minutes = round((time.perf_counter() - started) / 60, 1)
    report = held_out_report(np.asarray(scores), test)
    record = {
        "figure": f"{'tiny ' if args.tiny or args.method == 'qalign' else ''}{args.method}"
        f" trained from scratch: held-out SRCC (target 0.8)",
        "method": args.method,
        "contents": args.contents,
        "epochs": args.epochs,
        "lr": args.lr,
        "srcc": report["srcc"],
        "test": report,
        "minutes": minutes,
        "target_srcc": 0.8,
    }
    text = json.dumps([record] if args.json else record, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
