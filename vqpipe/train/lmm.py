"""Q-Align and Compare2Score fine-tuning of the native mPLUG-Owl2, as
``train_loop_per_worker``-style functions (plain PyTorch, or Ray Train via
:func:`vqpipe.train.trainer.fit`).

Each example is an official-format conversation (:mod:`vqpipe.train.tasks`) rendered with the
vicuna_v1 template the official training uses — ``"<system> USER: <|image|>\\n<question>
ASSISTANT: <answer></s>"`` (images moved to the front of the user turn) — and the loss covers
the assistant tokens only. Config keys: ``checkpoint`` (required: a model directory with
weights, tokenizer and preprocessor), ``datasets`` (unified MOS tables; images local or fsspec
URIs), ``task`` (Q-Align), ``n_pairs`` and ``anchors`` (Compare2Score), ``deepspeed`` (a
:func:`deepspeed_config` dict or ``{"stage": 2 | 3, "offload": bool}``: ZeRO through
DeepSpeed, on GPUs), ``output`` (a directory in the layout ``from_pretrained`` and the scorers
load, with ``training_args.json``) and the optimisation keys. Every key with its kind, default
and meaning is in :data:`vqpipe.train.config.KEYS`, the one place defaults are defined
(rendered into ``docs/training.md``).

Per-dataset ``weight`` sets each dataset's share of an epoch's examples (drawn with
replacement when weights are given, a permutation otherwise).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vqpipe.models.mplug_owl2 import (
    IMAGE_TOKEN,
    MPLUGOwl2ForCausalLM,
    MPLUGOwl2ImageProcessor,
    PromptTokenizer,
)
from vqpipe.models.mplug_owl2.modeling import IGNORE_INDEX
from vqpipe.train.config import dataset_setting, dataset_split, setting
from vqpipe.train.data import dataset_name, dataset_table, load_image, split_rows
from vqpipe.train.loop import (
    STATE_FILE,
    EarlyStopping,
    dataset_shard,
    end_epoch,
    load_state,
    rank_and_world,
    ray_train_context,
    resume_directory,
    trainer_state,
    write_training_args,
)
from vqpipe.train.tasks import (
    compare2score_conversations,
    compare2score_pairs,
    qalign_conversations,
)

DEEPSPEED_DIR = "deepspeed"
"""Checkpoint subdirectory with DeepSpeed's sharded optimizer state (one file per rank)."""

SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant "
    "gives helpful, detailed, and polite answers to the human's questions."
)
EOS = "</s>"


def batch_size_of(config: dict[str, Any], method: str = "qalign") -> int:
    return int(setting(config, method, "batch_size"))


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
    """Training conversations of every dataset, each with its sampling ``weight``."""
    out: list[dict[str, Any]] = []
    for spec in config["datasets"]:
        table = split_rows(
            dataset_table(spec, config.get("storage_options")),
            dataset_split(config, spec, method),
        )
        if table.empty:
            continue
        if method == "qalign":
            examples = [
                {"images": [r["image"]], "conversations": r["conversations"]}
                for r in qalign_conversations(table, setting(config, "qalign", "task"))
            ]
        else:
            seed = int(setting(config, "common", "seed")) + len(out)
            pairs = compare2score_pairs(
                table, int(setting(config, "compare2score", "n_pairs")), seed
            )
            examples = compare2score_conversations(pairs)
        weight = float(dataset_setting(spec, method, "weight")) / max(len(examples), 1)
        out.extend({**ex, "weight": weight} for ex in examples)
    if not out:
        raise ValueError("no training rows: check the dataset tables and split names")
    return out


def epoch_order(
    examples: list[dict[str, Any]], config: dict[str, Any], epoch: int, rank: int, world: int
) -> np.ndarray:
    """This worker's example indices for ``epoch`` (seeded by epoch, so resuming repeats it)."""
    rng = np.random.default_rng([int(setting(config, "common", "seed")), epoch])
    n = len(examples)
    if any("weight" in spec for spec in config["datasets"]):
        p = np.array([ex["weight"] for ex in examples], np.float64)
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    else:
        order = rng.permutation(n)
    per_worker = n // world if n >= world else 1  # equal step counts on every worker
    return np.resize(order, per_worker * world)[rank::world]


def _load_visual(
    path: str, processor: MPLUGOwl2ImageProcessor, config: dict[str, Any]
) -> np.ndarray:
    """uint8 [T, 3, S, S]: one image (T = 1), or a video's frames at 1 fps (official Q-Align
    video recipe) capped evenly at ``max_frames`` (8)."""
    from vqpipe.io.fs import read_bytes
    from vqpipe.io.media_types import media_type_from_name
    from vqpipe.media.decode import decode_video, even_subset

    options = config.get("storage_options")
    if media_type_from_name(path) != "video":
        return processor.to_uint8(load_image(path, options))[None]
    frames, _ = decode_video(read_bytes(path, options), float(setting(config, "lmm", "video_fps")))
    keep = even_subset(len(frames), int(setting(config, "lmm", "max_frames")))
    return np.stack([processor.to_uint8(frames[i]) for i in keep])


def _pack(arrays: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, *arrays)
    return buf.getvalue()


def _unpack(data: bytes) -> list[np.ndarray]:
    with np.load(io.BytesIO(data)) as npz:
        return [npz[f"arr_{i}"] for i in range(len(npz.files))]


def decode_lmm_batch(
    batch: dict[str, np.ndarray], checkpoint: str, options: dict[str, Any]
) -> dict[str, np.ndarray]:
    """Ray Data media stage of the LMM loops: each row's images (or video frames) → uint8
    arrays packed as ``.npz`` bytes in ``visuals``; a failure leaves ``error`` set instead."""
    from vqpipe.scorers._owl2 import checkpoint_processor

    processor = checkpoint_processor(checkpoint, options.get("storage_options"))
    visuals = np.full(len(batch["images"]), b"", dtype=object)
    errors = np.full(len(batch["images"]), "", dtype=object)
    for i, paths in enumerate(batch["images"]):
        try:
            visuals[i] = _pack([_load_visual(p, processor, options) for p in json.loads(paths)])
        except Exception as exc:  # an unreadable image must not end the run
            errors[i] = f"{type(exc).__name__}: {exc}"
    return {**batch, "visuals": visuals, "error": errors}


def lmm_training_stream(config: dict[str, Any], method: str) -> Any:
    """The examples' visual inputs as a Ray Dataset (read, decode and preprocess in Ray Data
    workers; split across the training workers). The weighted plan of epoch 0 is drawn once
    on the driver; Ray Data streams it again each epoch."""
    import pandas as pd
    import ray.data

    examples = _examples(config, method)
    order = epoch_order(examples, config, 0, 0, 1)
    rows = pd.DataFrame(
        {"index": order, "images": [json.dumps(examples[i]["images"]) for i in order]}
    )
    keys = ("storage_options", "video_fps", "max_frames")
    return ray.data.from_pandas(rows).map_batches(
        decode_lmm_batch,
        batch_size=16,
        fn_kwargs={
            "checkpoint": str(config["checkpoint"]),
            "options": {k: config[k] for k in keys if k in config},
        },
        num_cpus=0.5,
    )


def _stream_batches(
    shard: Any,
    examples: list[dict[str, Any]],
    batch_size: int,
    make_batch: Any,
) -> Any:
    """Batches of a Ray Data shard: rows that failed to load keep their place with blank
    images and no loss (all labels ignored), so every worker runs the same steps."""
    for rows in shard.iter_batches(batch_size=batch_size, batch_format="numpy"):
        chosen = [examples[int(i)] for i in rows["index"]]
        visuals = [
            _unpack(v) if not e else None
            for v, e in zip(rows["visuals"], rows["error"], strict=True)
        ]
        batch = make_batch(chosen, visuals)
        failed = [i for i, v in enumerate(visuals) if v is None]
        if failed:
            batch["labels"][failed] = IGNORE_INDEX
            if len(failed) == len(visuals):  # keep one row's labels, count it for nothing
                batch["labels"][0] = batch["kept_labels"][0]
                batch["loss_scale"] = 0.0
        yield batch


def _batch(
    examples: list[dict[str, Any]],
    tokenizer: PromptTokenizer,
    processor: MPLUGOwl2ImageProcessor,
    eos_id: int,
    pad_id: int,
    config: dict[str, Any] | None = None,
    loaded: list[list[np.ndarray] | None] | None = None,
) -> dict[str, Any]:
    """Right-padded ids / labels / mask and the visual inputs: one normalised tensor
    [N, 3, S, S] for images, a list of [T, 3, S, S] per placeholder when videos are present.
    ``loaded``: each example's uint8 visuals already decoded (None: blank images)."""
    ids, labels, visuals = [], [], []
    size = processor.crop_size
    for k, ex in enumerate(examples):
        i, lab = encode_example(tokenizer, ex["conversations"], len(ex["images"]), eos_id)
        ids.append(i)
        labels.append(lab)
        if loaded is None:
            visuals.extend(_load_visual(str(p), processor, config or {}) for p in ex["images"])
        elif loaded[k] is None:
            visuals.extend(np.zeros((1, 3, size, size), np.uint8) for _ in ex["images"])
        else:
            visuals.extend(loaded[k])
    width = max(map(len, ids))
    mask = [[1] * len(i) + [0] * (width - len(i)) for i in ids]
    ids = [i + [pad_id] * (width - len(i)) for i in ids]
    labels = [lab + [IGNORE_INDEX] * (width - len(lab)) for lab in labels]
    if all(len(v) == 1 for v in visuals):
        images: Any = processor.normalize(np.concatenate(visuals))
    else:
        images = [processor.normalize(v) for v in visuals]
    return {
        "input_ids": torch.tensor(ids),
        "labels": torch.tensor(labels),
        "kept_labels": torch.tensor(labels),
        "attention_mask": torch.tensor(mask),
        "images": images,
        "loss_scale": 1.0,
    }


def save_model_dir(
    model: MPLUGOwl2ForCausalLM,
    source: Path,
    out: Path,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Weights + config in the official layout, with the tokenizer and preprocessor files."""
    model.save_pretrained(out, state_dict=state_dict)
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


def validation_anchors(config: dict[str, Any], directory: Path) -> Any:
    """Compare2Score validation anchors: ``config["anchors"]``, else five selected from the
    first dataset's training rows (Eq. 4) and written under ``directory``."""
    from vqpipe.scorers.anchor_sets import load_anchor_set, write_anchor_set

    if config.get("anchors"):
        return load_anchor_set(config["anchors"])
    spec = config["datasets"][0]
    rows = split_rows(
        dataset_table(spec, config.get("storage_options")),
        dataset_split(config, spec, "compare2score"),
    )
    return write_anchor_set(rows.reset_index(drop=True), directory / "anchors")


def validate_lmm(
    model: MPLUGOwl2ForCausalLM,
    method: str,
    config: dict[str, Any],
    source: Path,
    anchors: Any = None,
) -> dict[str, float]:
    """SRCC / PLCC of the method's scorer (built on the in-training model) on each table's
    ``val`` split, against the oriented MOS."""
    from vqpipe.eval.metrics import plcc, srcc
    from vqpipe.scorers.compare2score import Compare2ScoreScorer
    from vqpipe.scorers.qalign import QAlignScorer
    from vqpipe.train.tasks import oriented_mos

    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    if method == "qalign":
        scorer: Any = QAlignScorer(
            source, device=device, dtype=dtype, task=setting(config, "qalign", "task"), model=model
        )
    else:
        scorer = Compare2ScoreScorer(
            source, device=device, dtype=dtype, anchors=anchors, model=model
        )
    processor = scorer.processor
    out: dict[str, float] = {}
    try:
        for spec in config["datasets"]:
            table = dataset_table(spec, config.get("storage_options"))
            val = split_rows(table, "val")
            if "split" not in table or val.empty:
                continue
            items = [_load_visual(str(p), processor, config) for p in val["path"]]
            with torch.no_grad():
                pred = scorer.predict_items(items, batch_size_of(config, method))["score"]
            target = oriented_mos(val)
            name = dataset_name(val, "val")
            out[f"val_srcc/{name}"] = srcc(pred, target)
            out[f"val_plcc/{name}"] = plcc(pred, target)
    finally:
        model.train()
    for name in ("val_srcc", "val_plcc"):  # the mean over datasets, for early stopping too
        values = [v for k, v in out.items() if k.startswith(f"{name}/")]
        if values:
            out[name] = float(np.nanmean(values))
    return out


def _deepspeed_settings(config: dict[str, Any], method: str) -> dict[str, Any]:
    """The DeepSpeed config of ``config["deepspeed"]``: a full DeepSpeed dict, or
    ``{"stage", "bf16", "offload", "grad_accum"}`` filled in by :func:`deepspeed_config`."""
    ds = dict(config["deepspeed"]) if isinstance(config["deepspeed"], dict) else {}
    if "zero_optimization" in ds:
        return ds
    return deepspeed_config(
        stage=int(ds.get("stage", 2)),
        bf16=bool(ds.get("bf16", True)),
        batch_per_gpu=batch_size_of(config, method),
        grad_accum=int(ds.get("grad_accum", 1)),
        offload=bool(ds.get("offload", False)),
    )


def _deepspeed_engine(
    model: torch.nn.Module, optimizer: Any, schedule: Any, settings: dict[str, Any], device: Any
) -> Any:
    """``deepspeed.initialize`` on the process group Ray Train set up (or a one-process gloo /
    nccl group outside it). On CPU DeepSpeed runs with its CPU accelerator and gloo."""
    import os

    if device.type == "cpu":
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise ImportError(
            "config['deepspeed'] needs DeepSpeed: pip install 'vqpipe[train]'"
        ) from exc
    if not torch.distributed.is_initialized():
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        for key, value in (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)):
            os.environ.setdefault(key, str(value))
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
        deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl")
    engine, _, _, _ = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=schedule, config=settings
    )
    return engine


def _full_state_dict(model: torch.nn.Module, engine: Any) -> dict[str, torch.Tensor] | None:
    """Full weights for saving: gathered from ZeRO-3 partitions (a collective: every rank
    calls it), else None (the model's own state dict)."""
    if engine is not None and engine.zero_optimization_stage() == 3:
        return engine._zero3_consolidated_16bit_state_dict()
    return None


def train_lmm(config: dict[str, Any], method: str) -> dict[str, Any] | None:
    """Supervised fine-tuning of the LMM on ``method``'s conversations (see module doc)."""
    import tempfile

    from vqpipe.models.devices import resolve_dtype

    seed = int(setting(config, "common", "seed"))
    torch.manual_seed(seed)
    ctx = ray_train_context()
    rank, world = rank_and_world(ctx)
    device = torch.device(config.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    if ctx is not None and device.type == "cuda":
        import ray.train.torch

        device = ray.train.torch.get_device()
    dtype = resolve_dtype(config.get("dtype"), device)
    settings = _deepspeed_settings(config, method) if config.get("deepspeed") else None
    if settings is not None and settings.get("bf16", {}).get("enabled"):
        dtype = torch.bfloat16  # DeepSpeed's bf16 mode holds the weights in bf16
    source = Path(config["checkpoint"])
    opened = contextlib.ExitStack()  # the resume directory stays until DeepSpeed has read it
    resume = opened.enter_context(resume_directory(config, ctx))
    weights = resume if resume is not None else source
    model = MPLUGOwl2ForCausalLM.from_pretrained(weights, dtype=dtype, device=device).train()
    state = load_state(resume) if resume is not None else None
    tokenizer = PromptTokenizer.from_pretrained(source, model.config.bos_token_id)
    processor = MPLUGOwl2ImageProcessor.from_pretrained(source, model.config.vision.image_size)
    if config.get("freeze_vision"):
        model.model.vision_model.requires_grad_(False)
    if config.get("freeze_patch_embed"):
        model.model.vision_model.embeddings.patch_embed.requires_grad_(False)
    if config.get("gradient_checkpointing"):
        model.model.gradient_checkpointing = True
        model.model.vision_model.encoder.gradient_checkpointing = True
    examples = _examples(config, method)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params,
        lr=float(setting(config, "common", "lr")),
        weight_decay=float(setting(config, "common", "weight_decay")),
    )
    batch_size = batch_size_of(config, method)
    epochs = int(setting(config, "lmm", "epochs"))
    shard = dataset_shard(ctx)
    per_epoch = math.ceil(len(epoch_order(examples, config, 0, rank, world)) / batch_size)
    total = epochs * per_epoch
    if config.get("max_steps"):
        total = min(total, int(config["max_steps"]))
    warmup = max(1, int(float(setting(config, "lmm", "warmup")) * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(total - warmup, 1)))
        ),
    )
    step, start_epoch = 0, 0
    if state is not None:
        if "optimizer" in state:  # under DeepSpeed the moments are in its own checkpoint
            optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        step, start_epoch = int(state["step"]), int(state["epoch"]) + 1
    engine = _deepspeed_engine(model, optimizer, schedule, settings, device) if settings else None
    if engine is not None and resume is not None and (resume / DEEPSPEED_DIR).exists():
        engine.load_checkpoint(str(resume / DEEPSPEED_DIR))  # every rank: its ZeRO shard
    opened.close()
    train_model: torch.nn.Module = engine if engine is not None else model
    if engine is None and world > 1:
        import ray.train.torch

        train_model = ray.train.torch.prepare_model(model, move_to_device=False)
    anchors = None
    scratch = tempfile.TemporaryDirectory()
    if method == "compare2score" and setting(config, "common", "validate"):
        anchors = validation_anchors(config, Path(scratch.name))
    eos_id = int(model.config.eos_token_id)
    pad_id = int(model.config.pad_token_id or 0)
    history: dict[str, Any] = {"step_loss": [], "epoch_loss": [], "val": []}
    if state is not None:
        history["resumed_from_step"] = step
    stopper = EarlyStopping(config.get("early_stop_patience"))
    started = time.perf_counter()
    for epoch in range(start_epoch, epochs):
        if shard is not None:
            batches: Any = _stream_batches(
                shard,
                examples,
                batch_size,
                lambda chosen, loaded: _batch(
                    chosen, tokenizer, processor, eos_id, pad_id, config, loaded
                ),
            )
        else:
            order = epoch_order(examples, config, epoch, rank, world)
            batches = (
                _batch(
                    [examples[i] for i in order[start : start + batch_size]],
                    tokenizer,
                    processor,
                    eos_id,
                    pad_id,
                    config,
                )
                for start in range(0, len(order), batch_size)
            )
        losses = []
        for batch in batches:
            images = batch["images"]
            images = (
                [v.to(device, dtype) for v in images]
                if isinstance(images, list)
                else images.to(device, dtype)
            )
            out = train_model(
                input_ids=batch["input_ids"].to(device),
                images=images,
                attention_mask=batch["attention_mask"].to(device),
                labels=batch["labels"].to(device),
            )
            loss = out.loss * batch["loss_scale"]
            if engine is not None:
                engine.backward(loss)
                engine.step()  # clips, steps the optimizer and the schedule
            else:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                schedule.step()
            losses.append(float(out.loss.detach()))
            history["step_loss"].append(losses[-1])
            step += 1
            if step >= total:
                break
        history["epoch_loss"].append(float(np.mean(losses)) if losses else float("nan"))
        metrics: dict[str, Any] = {"epoch": epoch, "loss": history["epoch_loss"][-1], "steps": step}
        if setting(config, "common", "validate"):
            metrics.update(validate_lmm(model, method, config, source, anchors))
            history["val"].append({k: v for k, v in metrics.items() if k.startswith("val")})
        stop = step >= total or stopper.update(metrics)
        weights_now = _full_state_dict(model, engine)
        # under ZeRO the moments are sharded: the base optimizer's state is not them
        state_now = trainer_state(optimizer if engine is None else None, schedule, epoch, step)

        def save(directory: Path, weights_now=weights_now, state_now=state_now) -> None:
            if engine is not None:  # collective: each rank writes its optimizer shard
                engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag="state")
            if rank == 0:
                save_model_dir(model, source, directory, weights_now)
                torch.save(state_now, directory / STATE_FILE)

        last = stop or epoch == epochs - 1
        end_epoch(metrics, config, ctx, save, last=last, all_ranks=engine is not None)
        if stop:
            break
    scratch.cleanup()
    history["seconds"] = time.perf_counter() - started
    model.eval()
    final_weights = _full_state_dict(model, engine)  # collective under ZeRO-3: every rank
    if config.get("output") and rank == 0:
        out_dir = save_model_dir(model, source, Path(config["output"]), final_weights)
        write_training_args(
            out_dir / "training_args.json",
            config,
            method=method,
            steps=step,
            examples=len(examples),
        )
        history["output"] = str(out_dir)
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
