"""Prompt tokenisation exactly as the official mPLUG-Owl2 code does it.

The prompt is split on ``<|image|>``; each chunk is tokenised on its own as
``[BOS] + sentencepiece.encode(chunk)`` (LLaMA's dummy-prefix behaviour, so the chunk after
an image starts with 29871 "▁"); BOS is kept only at the front and −200 marks each image.
We call ``sentencepiece`` on ``tokenizer.model`` directly (transformers 5.x's LLaMA tokenizer
no longer adds the dummy prefix to chunks that start with a space); a ``tokenizer.json``
without ``tokenizer.model`` is read with the ``tokenizers`` library instead.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

IMAGE_TOKEN = "<|image|>"
IMAGE_TOKEN_INDEX = -200


class PromptTokenizer:
    """``encode_prompt(text) -> list[int]`` with −200 for each ``<|image|>``."""

    def __init__(self, encode: Callable[[str], list[int]], bos_id: int = 1) -> None:
        self._encode = encode
        self.bos_id = int(bos_id)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, bos_id: int = 1) -> PromptTokenizer:
        directory = Path(directory)
        if (directory / "tokenizer.model").exists():
            import sentencepiece

            sp = sentencepiece.SentencePieceProcessor(model_file=str(directory / "tokenizer.model"))
            sp_bos = sp.bos_id()
            return cls(lambda text: list(sp.encode(text)), sp_bos if sp_bos >= 0 else bos_id)
        if (directory / "tokenizer.json").exists():
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
            return cls(lambda text: tok.encode(text, add_special_tokens=False).ids, bos_id)
        raise FileNotFoundError(f"no tokenizer.model or tokenizer.json in {directory}")

    def encode(self, text: str) -> list[int]:
        """Token ids of one chunk, without BOS."""
        return list(self._encode(text)) if text else []

    def encode_prompt(self, prompt: str) -> list[int]:
        """``[BOS] + chunk₀ + [−200] + chunk₁ + ...`` (the official ``tokenizer_image_token``;
        like it, a prompt that starts with an image keeps a BOS at the front of every chunk)."""
        chunks = [[self.bos_id, *self.encode(c)] if c else [] for c in prompt.split(IMAGE_TOKEN)]
        strip = 1 if chunks[0] else 0
        ids = [self.bos_id] if strip else []
        for i, chunk in enumerate(chunks):
            if i:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(chunk[strip:])
        return ids

    def first_piece(self, word: str) -> int:
        """The id the official code reads for a word: its first piece
        (``tokenizer(word).input_ids[1]``)."""
        ids = self.encode(word)
        if not ids:
            raise ValueError(f"{word!r} tokenises to nothing")
        return ids[0]
