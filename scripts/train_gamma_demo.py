"""Train the bundled Gamma demo checkpoint from scratch on synthetic distortion data.

    python scripts/train_gamma_demo.py [--out vqpipe/assets/gamma-demo.safetensors]

A reduced CLIP (``vqpipe-demo2-ViT-8``: 192 px = the synthetic images' short side, so the
eval geometry only centre-crops and keeps pixel-level noise and JPEG blocks; 8 px patches,
4+2 layers, average-pooled image tokens) with MoAE in the last 2 blocks of both towers is
trained end to end (no pretrained weights offline) on the train split of
:func:`vqpipe.data.make_image_dataset`, then scored on the held-out contents of the val/test
splits with the same :class:`GammaScorer` users get. Writes the checkpoint (fp16 safetensors)
and a JSON card with the held-out SRCC/PLCC (overall and per distortion) next to it.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

from vqpipe.data import DISTORTIONS, make_image_dataset
from vqpipe.eval import plcc, srcc
from vqpipe.scorers.gamma import GammaScorer
from vqpipe.train.gamma import from_scratch_config, train_gamma

DEMO_CLIP_MODEL = "vqpipe-demo2-ViT-8"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="vqpipe/assets/gamma-demo.safetensors")
    parser.add_argument("--clip-model", default=DEMO_CLIP_MODEL)
    parser.add_argument("--contents", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=24)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--level-loss", type=float, default=0.5, help="soft level CE weight")
    parser.add_argument("--patch-init", default="dct", help="'dct' or 'random'")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        table = make_image_dataset(Path(tmp) / "corpus", n_contents=args.contents, seed=args.seed)
        started = time.perf_counter()
        history = train_gamma(
            from_scratch_config(
                args.clip_model,
                table,
                args.epochs,
                patch_init=args.patch_init,
                batch_size=args.batch_size,
                lr=args.lr,
                level_loss_weight=args.level_loss,
                seed=args.seed,
                output=args.out,
                save_dtype="float16",
                verbose=True,
            )
        )
        minutes = (time.perf_counter() - started) / 60
        scorer = GammaScorer(checkpoint=args.out, device="cpu")  # the saved fp16 file
        model_config = from_scratch_config(args.clip_model, table, 0)["model_config"]
        card = {"checkpoint": Path(args.out).name, "model_config": model_config}
        for split in ("val", "test"):
            rows = table[table["split"] == split]
            images = [Image.open(p) for p in rows["path"]]
            scores = scorer.score(images)
            card[split] = {
                "images": len(rows),
                "contents": int(rows["content_id"].nunique()),
                "srcc": round(srcc(scores, rows["mos"]), 4),
                "plcc": round(plcc(scores, rows["mos"]), 4),
                "srcc_by_distortion": {
                    kind: round(srcc(scores[mask], rows["mos"][mask]), 4)
                    for kind in DISTORTIONS
                    if (mask := (rows["distortion"] == kind).to_numpy()).any()
                },
            }
        card.update(
            {
                "train_images": int((table["split"] == "train").sum()),
                "epochs": args.epochs,
                "lr": args.lr,
                "level_loss": args.level_loss,
                "patch_init": args.patch_init,
                "batch_size": args.batch_size,
                "seed": args.seed,
                "final_loss": round(history["epoch_loss"][-1], 5),
                "train_minutes": round(minutes, 1),
                "fingerprint": scorer.checkpoint_fingerprint,
                "command": "python scripts/train_gamma_demo.py",
            }
        )
    Path(args.out).with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
