"""Q-Align and Compare2Score fine-tuning of the native mPLUG-Owl2, as
``train_loop_per_worker``-style functions (plain PyTorch, or Ray Train via
:func:`vqpipe.train.trainer.fit`).

Each example is an official-format conversation (:mod:`vqpipe.train.tasks`) rendered with the
vicuna_v1 template the official training uses — ``"<system> USER: <|image|>\\n<question>
ASSISTANT: <answer></s>"`` (images moved to the front of the user turn) — and the loss covers
the assistant tokens only. Config keys: ``checkpoint`` (a model directory: weights, tokenizer,
preprocessor), ``datasets`` (``[{"table": path | DataFrame, "split": "train"}]``, unified MOS
tables), ``task`` (Q-Align: quality | aesthetics | video), ``n_pairs`` (Compare2Score),
``epochs`` (2), ``batch_size`` (4), ``lr`` (2e-5), ``warmup`` (0.03), ``weight_decay`` (0),
``max_steps``, ``freeze_vision`` (False), ``gradient_checkpointing`` (False), ``dtype``
(bf16 on GPU, fp32 on CPU), ``output`` (a directory in the layout ``from_pretrained`` and the
scorers load), ``seed``. DeepSpeed (ZeRO-2/3) settings for the LMMs come from
:func:`deepspeed_config`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from vqpipe.models.mplug_owl2 import (
    IMAGE_TOKEN,
    MPLUGOwl2ForCausalLM,
    MPLUGOwl2ImageProcessor,
    PromptTokenizer,
)
from vqpipe.models.mplug_owl2.modeling import IGNORE_INDEX
from vqpipe.train.gamma import ray_train_context, read_table
from vqpipe.train.tasks import (
    compare2score_conversations,
    compare2score_pairs,
    qalign_conversations,
)

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)
EOS = "</s>"


def render(conversation: list[dict[str, str]], n_images: int) -> tuple[str, str]:
    """(prompt up to and including ``ASSISTANT:``, answer + ``</s>``) in vicuna_v1 form; the
    full text is ``prompt + " " + answer``."""
    question = conversation[0]["value"].replace(IMAGE_TOKEN, "").strip()
    images = " ".join([IMAGE_TOKEN] * n_images)
    prompt = f"{SYSTEM} USER: {images}\n{question} ASSISTANT:"
    return prompt, f"{conversation[1]['value']}{EOS}"


def encode_example(
    tokenizer: PromptTokenizer, conversation: list[dict[str, str]], n_images: int, eos_id: int
) -> tuple[list[int], list[int]]:
    """Token ids and labels (``-100`` except on the answer and its end-of-sequence). The answer
    is tokenised as SentencePiece does it after ``ASSISTANT:`` in one string ("▁The ...")."""
    prompt, answer = render(conversation, n_images)
    ids = tokenizer.encode_prompt(prompt)
    answer_ids = [*tokenizer.encode(answer.removesuffix(EOS)), eos_id]
    return ids + answer_ids, [IGNORE_INDEX] * len(ids) + answer_ids


def deepspeed_config(
    stage: int = 3,
    bf16: bool = True,
    batch_per_gpu: int = 32,
    grad_accum: int = 1,
    offload: bool = False,
) -> dict[str, Any]:
    """A DeepSpeed config for the LMMs (ZeRO-2/3, bf16) in the official recipe's spirit."""
    if stage not in (1, 2, 3):
        raise ValueError("ZeRO stage must be 1, 2 or 3")
    zero: dict[str, Any] = {
        "stage": stage,
        "overlap_comm": True,
        "contiguous_gradients": True,
        "reduce_bucket_size": "auto",
    }
    if stage == 3:
        zero.update(
            stage3_prefetch_bucket_size="auto",
            stage3_param_persistence_threshold="auto",
            stage3_gather_16bit_weights_on_model_save=True,
        )
    if offload:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    return {
        "train_micro_batch_size_per_gpu": batch_per_gpu,
        "gradient_accumulation_steps": grad_accum,
        "gradient_clipping": 1.0,
        "bf16": {"enabled": bool(bf16)},
        "fp16": {"enabled": False},
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
    }


def _examples(config: dict[str, Any], method: str) -> list[dict[str, Any]]:
    tables = []
    for spec in config["datasets"]:
        t = read_table(spec["table"])
        wanted = spec.get("split", "train")
        if wanted and "split" in t:
            t = t[t["split"] == wanted]
        tables.append(t)
    table = pd.concat(tables, ignore_index=True)
    if method == "qalign":
        return [
            {"images": [r["image"]], "conversations": r["conversations"]}
            for r in qalign_conversations(table, config.get("task", "quality"))
        ]
    pairs = compare2score_pairs(table, int(config.get("n_pairs", 1000)), int(config.get("seed", 0)))
    return compare2score_conversations(pairs)


def _batch(
    examples: list[dict[str, Any]],
    tokenizer: PromptTokenizer,
    processor: MPLUGOwl2ImageProcessor,
    eos_id: int,
    pad_id: int,
) -> dict[str, Any]:
    ids, labels, pixels = [], [], []
    for ex in examples:
        i, lab = encode_example(tokenizer, ex["conversations"], len(ex["images"]), eos_id)
        ids.append(i)
        labels.append(lab)
        for path in ex["images"]:
            with Image.open(path) as im:
                pixels.append(processor.to_uint8(im))
    width = max(map(len, ids))
    mask = [[1] * len(i) + [0] * (width - len(i)) for i in ids]
    ids = [i + [pad_id] * (width - len(i)) for i in ids]
    labels = [lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels]
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
        "images": processor.normalize(np.stack(pixels)),
    }


def save_model_dir(model: MPLUGOwl2ForCausalLM, source: Path, out: Path) -> Path:
    """Weights + config in the official layout, with the tokenizer and preprocessor files."""
    model.save_pretrained(out)
    for name in (
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "preprocessor_config.json",
    ):
        if (source / name).exists():
            shutil.copyfile(source / name, out / name)
    return out


def train_lmm(config: dict[str, Any], method: str) -> dict[str, Any] | None:
    """Supervised fine-tuning of the LMM on ``method``'s conversations (see module doc)."""
    from vqpipe.scoring.base import resolve_dtype

    seed = int(config.get("seed", 0))
    torch.manual_seed(seed)
    ctx = ray_train_context()
    device = torch.device(config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(config.get("dtype"), device)
    source = Path(config["checkpoint"])
    model = MPLUGOwl2ForCausalLM.from_pretrained(source, dtype=dtype, device=device).train()
    tokenizer = PromptTokenizer.from_pretrained(source, model.config.bos_token_id)
    processor = MPLUGOwl2ImageProcessor.from_pretrained(source, model.config.vision.image_size)
    if config.get("freeze_vision"):
        model.model.vision_model.requires_grad_(False)
    if config.get("gradient_checkpointing"):
        model.model.gradient_checkpointing = True
        model.model.vision_model.encoder.gradient_checkpointing = True
    examples = _examples(config, method)
    rng = np.random.default_rng(seed)
    rank, world = (ctx.get_world_rank(), ctx.get_world_size()) if ctx else (0, 1)
    train_model: torch.nn.Module = model
    if ctx is not None and world > 1:
        import ray.train.torch

        train_model = ray.train.torch.prepare_model(model, move_to_device=False)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=float(config.get("lr", 2e-5)),
        weight_decay=float(config.get("weight_decay", 0.0)),
    )
    batch_size = int(config.get("batch_size", 4))
    epochs = int(config.get("epochs", 2))
    per_epoch = math.ceil(len(examples) / world / batch_size)
    total = epochs * per_epoch
    if config.get("max_steps"):
        total = min(total, int(config["max_steps"]))
    warmup = max(1, int(float(config.get("warmup", 0.03)) * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1)))
        ),
    )
    eos_id = int(model.config.eos_token_id)
    pad_id = int(model.config.pad_token_id or 0)
    history: dict[str, Any] = {"step_loss": [], "epoch_loss": []}
    step, started = 0, time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(examples))[rank::world]
        losses = []
        for start in range(0, len(order), batch_size):
            batch = _batch(
                [examples[i] for i in order[start : start + batch_size]],
                tokenizer,
                processor,
                eos_id,
                pad_id,
            )
            out = train_model(
                input_ids=batch["input_ids"].to(device),
                images=batch["images"].to(device, dtype),
                attention_mask=batch["attention_mask"].to(device),
                labels=batch["labels"].to(device),
            )
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            losses.append(float(out.loss.detach()))
            history["step_loss"].append(losses[-1])
            step += 1
            if step >= total:
                break
        history["epoch_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        metrics = {"epoch": epoch, "loss": history["epoch_loss"][-1], "steps": step}
        if ctx is not None:
            import tempfile

            import ray.train

            if rank == 0:
                with tempfile.TemporaryDirectory() as tmp:
                    save_model_dir(model, source, Path(tmp))
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)
        if step >= total:
            break
    history["seconds"] = time.perf_counter() - started
    model.eval()
    if config.get("output") and rank == 0:
        out = save_model_dir(model, source, Path(config["output"]))
        args = {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool))}
        args.update(method=method, steps=step, examples=len(examples))
        (out / "training_args.json").write_text(json.dumps(args, indent=2))
        history["output"] = str(out)
    if ctx is not None:
        return None
    history["model"] = model
    return history


def train_qalign(config: dict[str, Any]) -> dict[str, Any] | None:
    """Q-Align level SFT (``train_loop_per_worker``)."""
    return train_lmm(config, "qalign")


def train_compare2score(config: dict[str, Any]) -> dict[str, Any] | None:
    """Compare2Score pair SFT (``train_loop_per_worker``)."""
    return train_lmm(config, "compare2score")
