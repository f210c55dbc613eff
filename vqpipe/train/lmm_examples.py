"""The LMMs' training examples: official-format conversations of every dataset
(:mod:`vqpipe.train.tasks`), rendered in the vicuna_v1 template the official training uses and
tokenised with answer-only labels, and each epoch's order of them.

``"<system> USER: <|image|>\\n<question> ASSISTANT: <answer></s>"`` (images moved to the front
of the user turn); the loss covers the assistant tokens only. Per-dataset ``weight`` sets each
dataset's share of an epoch's examples (drawn with replacement when weights are given, a
permutation otherwise).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vqpipe.models.mplug_owl2 import IMAGE_TOKEN, PromptTokenizer
from vqpipe.models.mplug_owl2.modeling import IGNORE_INDEX
from vqpipe.prompts import SYSTEM
from vqpipe.train.config import dataset_setting, dataset_split
from vqpipe.train.settings import Settings
from vqpipe.train.tables import dataset_table, split_rows
from vqpipe.train.tasks import (
    compare2score_conversations,
    compare2score_pairs,
    qalign_conversations,
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


def training_examples(config: Settings, method: str) -> list[dict[str, Any]]:
    """Training conversations of every dataset, each with its sampling ``weight``."""
    out: list[dict[str, Any]] = []
    for spec in config.datasets:
        table = split_rows(
            dataset_table(spec, config.storage_options), dataset_split(config.raw, spec, method)
        )
        if table.empty:
            continue
        if method == "qalign":
            examples = [
                {"images": [r["image"]], "conversations": r["conversations"]}
                for r in qalign_conversations(table, config.task)
            ]
        else:
            pairs = compare2score_pairs(table, config.n_pairs, config.seed + len(out))
            examples = compare2score_conversations(pairs)
        weight = float(dataset_setting(spec, method, "weight")) / max(len(examples), 1)
        out.extend({**ex, "weight": weight} for ex in examples)
    if not out:
        raise ValueError("no training rows: check the dataset tables and split names")
    return out


def epoch_order(
    examples: list[dict[str, Any]], seed: int, weighted: bool, epoch: int, rank: int, world: int
) -> np.ndarray:
    """This worker's example indices for ``epoch`` (seeded by epoch, so resuming repeats it):
    drawn by ``weight`` with replacement when ``weighted``, else a permutation."""
    rng = np.random.default_rng([seed, epoch])
    n = len(examples)
    if weighted:
        p = np.array([ex["weight"] for ex in examples], np.float64)
        order = rng.choice(n, size=n, replace=True, p=p / p.sum())
    else:
        order = rng.permutation(n)
    per_worker = n // world if n >= world else 1  # equal step counts on every worker
    return np.resize(order, per_worker * world)[rank::world]
