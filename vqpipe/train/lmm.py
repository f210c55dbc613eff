"""Q-Align and Compare2Score fine-tuning of the native mPLUG-Owl2 on the training skeleton
(:func:`vqpipe.train.loop.run_training`), as ``train_loop_per_worker``-style functions (plain
PyTorch, or Ray Train via :func:`vqpipe.train.trainer.fit`).

The parts, one module each: the conversations, their vicuna_v1 rendering and each epoch's
order (:mod:`vqpipe.train.lmm_examples`); media and collation, local or streamed by Ray Data
(:mod:`vqpipe.train.lmm_media`); DeepSpeed ZeRO (:mod:`vqpipe.train.zero`); here the
per-method object :class:`LMMTraining` (model, AdamW, the step, validation through the
method's scorer, checkpoints in the layout ``from_pretrained`` and the scorers load, with
``training_args.json`` beside the ``output``).

Config keys: ``checkpoint`` (required: a model directory with weights, tokenizer and
preprocessor), ``datasets`` (unified MOS tables; images local or fsspec URIs), ``task``
(Q-Align), ``n_pairs`` and ``anchors`` (Compare2Score), ``deepspeed`` (a
:func:`~vqpipe.train.zero.deepspeed_config` dict or ``{"stage": 2 | 3, "offload": bool}``:
ZeRO through DeepSpeed, on GPUs) and the optimisation keys. Every key with its kind, default
and meaning is in :data:`vqpipe.train.config.KEYS`, the one place defaults are defined
(rendered into ``docs/training.md``); the loop reads them as a typed
:class:`~vqpipe.train.settings.LMMSettings`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from vqpipe.models.mplug_owl2 import (
    MPLUGOwl2ForCausalLM,
    MPLUGOwl2ImageProcessor,
    PromptTokenizer,
)
from vqpipe.train.config import dataset_split
from vqpipe.train.lmm_examples import (
    encode_example,
    epoch_order,
    render,
    training_examples,
)
from vqpipe.train.lmm_media import Collator, decode_lmm_batch, lmm_training_stream
from vqpipe.train.loop import (
    STATE_FILE,
    Run,
    dataset_means,
    run_training,
    stream_batches,
    write_training_args,
)
from vqpipe.train.settings import LMMSettings, settings
from vqpipe.train.tables import dataset_name, dataset_table, split_rows
from vqpipe.train.zero import (
    DEEPSPEED_DIR,
    deepspeed_config,
    deepspeed_engine,
    deepspeed_settings,
    full_state_dict,
)

__all__ = [  # the parts in their own modules, imported from here by callers and tests
    "decode_lmm_batch",
    "deepspeed_config",
    "encode_example",
    "epoch_order",
    "lmm_training_stream",
    "render",
]


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


def validation_anchors(config: LMMSettings, directory: Path) -> Any:
    """Compare2Score validation anchors: ``anchors``, else five selected from the first
    dataset's training rows (Eq. 4) and written under ``directory``."""
    from vqpipe.scorers.anchor_sets import load_anchor_set, write_anchor_set

    if config.anchors:
        return load_anchor_set(config.anchors)
    spec = config.datasets[0]
    rows = split_rows(
        dataset_table(spec, config.storage_options),
        dataset_split(config.raw, spec, "compare2score"),
    )
    return write_anchor_set(rows.reset_index(drop=True), directory / "anchors")


def validate_lmm(
    model: MPLUGOwl2ForCausalLM,
    method: str,
    config: LMMSettings,
    source: Path,
    anchors: Any = None,
) -> dict[str, float]:
    """SRCC / PLCC of the method's scorer (built on the in-training model) on each table's
    ``val`` split, against the oriented MOS."""
    from vqpipe.eval.evaluate import oriented_mos
    from vqpipe.eval.metrics import plcc, srcc
    from vqpipe.scorers.compare2score import Compare2ScoreScorer
    from vqpipe.scorers.qalign import QAlignScorer
    from vqpipe.train.lmm_media import load_visual

    dtype = next(model.parameters()).dtype
    device = next(model.parameters()).device
    if method == "qalign":
        scorer: Any = QAlignScorer(
            source, device=device, dtype=dtype, task=config.task, model=model
        )
    else:
        scorer = Compare2ScoreScorer(
            source, device=device, dtype=dtype, anchors=anchors, model=model
        )
    processor = scorer.processor
    out: dict[str, float] = {}
    try:
        for spec in config.datasets:
            table = dataset_table(spec, config.storage_options)
            val = split_rows(table, "val")
            if "split" not in table or val.empty:
                continue
            items = [
                load_visual(
                    str(p), processor, config.video_fps, config.max_frames, config.storage_options
                )
                for p in val["path"]
            ]
            with torch.no_grad():
                pred = scorer.predict_items(items, config.batch_size)["score"]
            target = oriented_mos(val)
            name = dataset_name(val, "val")
            out[f"val_srcc/{name}"] = srcc(pred, target)
            out[f"val_plcc/{name}"] = plcc(pred, target)
    finally:
        model.train()
    return dataset_means(out)


class LMMTraining:
    """Q-Align / Compare2Score SFT as the training skeleton's :class:`~vqpipe.train.loop.Method`:
    mPLUG-Owl2 (vision tower optionally frozen), AdamW with gradient clipping 1.0 (or a
    DeepSpeed engine), the causal-LM loss on the answer tokens, validation through the
    method's scorer on the in-training model."""

    cosine = True

    def __init__(self, config: LMMSettings, method: str) -> None:
        self.settings, self.method = config, method
        self.ds = (
            deepspeed_settings(config.deepspeed, config.batch_size) if config.deepspeed else None
        )
        self.sharded = self.ds is not None
        self.engine: Any = None
        self.source = Path(config.checkpoint)

    def setup(self, run: Run, resume: Path | None) -> tuple[torch.optim.Optimizer, int]:
        from vqpipe.scorers.base import resolve_dtype

        config, self.run = self.settings, run
        dtype = resolve_dtype(config.dtype, run.device)
        if self.ds is not None and self.ds.get("bf16", {}).get("enabled"):
            dtype = torch.bfloat16  # DeepSpeed's bf16 mode holds the weights in bf16
        self.dtype = dtype
        weights = resume if resume is not None else self.source
        model = MPLUGOwl2ForCausalLM.from_pretrained(weights, dtype=dtype, device=run.device)
        self.model = model.train()
        tokenizer = PromptTokenizer.from_pretrained(self.source, model.config.bos_token_id)
        processor = MPLUGOwl2ImageProcessor.from_pretrained(
            self.source, model.config.vision.image_size
        )
        if config.freeze_vision:
            model.model.vision_model.requires_grad_(False)
        if config.freeze_patch_embed:
            model.model.vision_model.embeddings.patch_embed.requires_grad_(False)
        if config.gradient_checkpointing:
            model.model.gradient_checkpointing = True
            model.model.vision_model.encoder.gradient_checkpointing = True
        self.examples = training_examples(config, self.method)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=config.lr, weight_decay=config.weight_decay
        )
        eos_id, pad_id = int(model.config.eos_token_id), int(model.config.pad_token_id or 0)
        self.collate = Collator(tokenizer, processor, eos_id, pad_id, config)
        self.shard = run.shard()
        self.anchors, self.scratch = None, tempfile.TemporaryDirectory()
        if self.method == "compare2score" and config.validate:
            self.anchors = validation_anchors(config, Path(self.scratch.name))
        order = self._order(0)
        return self.optimizer, -(-len(order) // config.batch_size)

    def _order(self, epoch: int) -> Any:
        c, run = self.settings, self.run
        return epoch_order(self.examples, c.seed, c.weighted, epoch, run.rank, run.world)

    def attach(self, schedule: Any, resume: Path | None) -> None:
        self.schedule = schedule
        self.train_model: torch.nn.Module = self.model
        if self.ds is not None:
            self.engine = deepspeed_engine(
                self.model, self.optimizer, schedule, self.ds, self.run.device
            )
            if resume is not None and (resume / DEEPSPEED_DIR).exists():
                self.engine.load_checkpoint(str(resume / DEEPSPEED_DIR))  # every rank: its shard
            self.train_model = self.engine
        elif self.run.world > 1:
            import ray.train.torch

            self.train_model = ray.train.torch.prepare_model(self.model, move_to_device=False)

    def batches(self, epoch: int) -> Iterable[dict[str, Any]]:
        size = self.settings.batch_size
        if self.shard is not None:
            return stream_batches(
                self.shard, size, lambda rows: self.collate.streamed(self.examples, rows)
            )
        order = self._order(epoch)
        return (
            self.collate([self.examples[i] for i in order[start : start + size]])
            for start in range(0, len(order), size)
        )

    def step(self, batch: dict[str, Any]) -> float:
        device, dtype = self.run.device, self.dtype
        images = batch["images"]
        images = (
            [v.to(device, dtype) for v in images]
            if isinstance(images, list)
            else images.to(device, dtype)
        )
        out = self.train_model(
            input_ids=batch["input_ids"].to(device),
            images=images,
            attention_mask=batch["attention_mask"].to(device),
            labels=batch["labels"].to(device),
        )
        loss = out.loss * batch["loss_scale"]
        if self.engine is not None:
            self.engine.backward(loss)
            self.engine.step()  # clips, steps the optimizer and the schedule
        else:
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            self.optimizer.step()
            self.schedule.step()
        return float(out.loss.detach())

    def validate(self) -> dict[str, float]:
        return validate_lmm(self.model, self.method, self.settings, self.source, self.anchors)

    def saver(self, state: dict[str, Any]) -> Callable[[Path], None]:
        weights = full_state_dict(self.model, self.engine, keep=self.run.rank == 0)

        def save(directory: Path) -> None:
            if self.engine is not None:  # collective: each rank writes its optimizer shard
                self.engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag="state")
            if self.run.rank == 0:
                save_model_dir(self.model, self.source, directory, weights)
                torch.save(state, directory / STATE_FILE)

        return save

    def finish(self, history: dict[str, Any], run: Run) -> MPLUGOwl2ForCausalLM:
        self.scratch.cleanup()
        self.model.eval()
        weights = full_state_dict(self.model, self.engine, keep=run.rank == 0)  # collective
        config = self.settings
        if config.output and run.rank == 0:
            out = save_model_dir(self.model, self.source, Path(config.output), weights)
            write_training_args(
                out / "training_args.json",
                config.raw,
                method=self.method,
                steps=history["steps"],
                examples=len(self.examples),
            )
            history["output"] = str(out)
        return self.model


def train_lmm(config: dict[str, Any], method: str) -> dict[str, Any] | None:
    """Supervised fine-tuning of the LMM on ``method``'s conversations (see module doc)."""
    return run_training(LMMTraining(settings(method, config), method))


def train_qalign(config: dict[str, Any]) -> dict[str, Any] | None:
    """Q-Align level SFT (``train_loop_per_worker``)."""
    return train_lmm(config, "qalign")


def train_compare2score(config: dict[str, Any]) -> dict[str, Any] | None:
    """Compare2Score pair SFT (``train_loop_per_worker``)."""
    return train_lmm(config, "compare2score")
