"""Tiny random mPLUG-Owl2 checkpoints in the official directory layout (tests, smoke runs).

``make_tiny_checkpoint(dir)`` writes ``config.json`` (official field names, small sizes),
``model.safetensors`` (official keys, random weights), a LLaMA-style SentencePiece
``tokenizer.model`` (unk 0, bos 1, eos 2, byte fallback) trained on the prompt vocabulary, and
``preprocessor_config.json``. Same seed → same files.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import torch

from vqpipe.models.mplug_owl2.config import MPLUGOwl2Config
from vqpipe.models.mplug_owl2.processor import CLIP_MEAN, CLIP_STD

_CORPUS = """USER: How would you rate the quality of this image?
ASSISTANT: The quality of the image is excellent.
USER: How would you rate the aesthetics of this image?
ASSISTANT: The aesthetics of the image is good.
USER: How would you rate the quality of this video?
ASSISTANT: The quality of the video is fair.
The quality of the image is poor. The quality of the image is bad.
USER: Compared with the first image, what is your quality rating for second image?
ASSISTANT: The quality of the second image is superior to the first image.
The quality of the second image is better than the first image.
The quality of the second image is similar to the first image.
The quality of the second image is worse than the first image.
The quality of the second image is inferior to the first image.
excellent good fair poor bad superior better similar worse inferior
A chat between a curious human and an artificial intelligence assistant.
"""


_WORDS = "excellent good fair poor bad superior better similar worse inferior"


def tiny_config(image_size: int = 28, patch_size: int = 14, **overrides: Any) -> MPLUGOwl2Config:
    """A few-layer config with the official structure (65 → 5 visual tokens per image)."""
    grid = image_size // patch_size
    data: dict[str, Any] = {
        "vocab_size": 320,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 512,
        "visual_config": {
            "visual_model": {
                "hidden_size": 32,
                "intermediate_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": image_size,
                "patch_size": patch_size,
            },
            "visual_abstractor": {
                "num_learnable_queries": 4,
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 48,
                "encoder_hidden_size": 32,
                "grid_size": grid,
            },
        },
    }
    data.update(overrides)
    return MPLUGOwl2Config.from_dict(data)


def bench_config(vocab: int = 32000) -> MPLUGOwl2Config:
    """448 px with a narrow ViT, a 4-layer 256-wide LLM and a LLaMA-sized vocabulary."""
    return tiny_config(
        image_size=448,
        vocab_size=vocab,
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        max_position_embeddings=2048,
        visual_config={
            "visual_model": {
                "hidden_size": 64,
                "intermediate_size": 128,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "image_size": 448,
                "patch_size": 14,
            },
            "visual_abstractor": {
                "num_learnable_queries": 64,
                "hidden_size": 64,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "intermediate_size": 176,
                "encoder_hidden_size": 64,
                "grid_size": 32,
            },
        },
    )


def train_tiny_tokenizer(directory: str | os.PathLike, vocab_size: int = 400) -> Path:
    """A LLaMA-like SentencePiece BPE model (``<unk>``=0, ``<s>``=1, ``</s>``=2, byte
    fallback, dummy prefix) on the prompt vocabulary → ``directory/tokenizer.model``."""
    import sentencepiece

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_CORPUS.splitlines() * 4 + [_WORDS] * 200),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        split_digits=True,
        allow_whitespace_only_pieces=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = directory / "tokenizer.model"
    path.write_bytes(model.getvalue())
    return path


def make_tiny_checkpoint(
    directory: str | os.PathLike,
    seed: int = 0,
    std: float = 0.2,
    dtype: torch.dtype = torch.float32,
    config: MPLUGOwl2Config | None = None,
) -> Path:
    """Write a complete tiny checkpoint directory and return its path."""
    from vqpipe.models.mplug_owl2.modeling import MPLUGOwl2ForCausalLM

    directory = Path(directory)
    tokenizer = train_tiny_tokenizer(directory)
    import sentencepiece

    vocab = sentencepiece.SentencePieceProcessor(model_file=str(tokenizer)).get_piece_size()
    config = config or tiny_config(vocab_size=vocab)
    model = MPLUGOwl2ForCausalLM.from_config(config, dtype=dtype, seed=seed, std=std)
    model.save_pretrained(directory)
    size = config.vision.image_size
    processor = {
        "crop_size": size,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "image_mean": list(CLIP_MEAN),
        "image_std": list(CLIP_STD),
        "resample": 3,
        "size": size,
    }
    with open(directory / "preprocessor_config.json", "w", encoding="utf-8") as fh:
        json.dump(processor, fh, indent=2)
    return directory
