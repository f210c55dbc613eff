"""Training examples for each method, built from the unified MOS table.

* **Q-Align**: level SFT conversations in the official LLaVA-style JSON format (MOS → level by
  the equal-interval rule on the dataset's own scale; DMOS flipped first).
* **Compare2Score**: image pairs inside one dataset labelled with the σ rule, as two-image
  conversations whose prompt is the one the scorer asks at inference.
* **Gamma**: :func:`vqpipe.train.data.mixed_table` (MOS normalised to [0, 1] + scene prompt).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from vqpipe.eval.evaluate import oriented_mos
from vqpipe.prompts import COMPARE_QUESTION, QALIGN_TASKS, qalign_question
from vqpipe.quality_math.comparison import comparison_level_index
from vqpipe.quality_math.levels import LEVELS, mos_to_level

COMPARISON_ANSWERS = (
    "inferior to",
    "worse than",
    "similar to",
    "better than",
    "superior to",
)
"""How each comparison level reads in the answer, inferior .. superior."""


def qalign_levels(table: pd.DataFrame) -> np.ndarray:
    """Level words (bad..excellent) of each row by Q-Align's equal-interval rule."""
    index = mos_to_level(oriented_mos(table), table["scale_low"], table["scale_high"])
    return np.asarray(LEVELS, dtype=object)[index]


def qalign_conversations(table: pd.DataFrame, task: str = "quality") -> list[dict[str, Any]]:
    """Official Q-Align SFT records: ``{"id", "image", "conversations", "gt_score"}`` with
    ``human: "How would you rate the quality of this image?\\n<|image|>"`` and
    ``gpt: "The quality of the image is good."``."""
    what, medium = QALIGN_TASKS[task]
    levels = qalign_levels(table)
    records = []
    for path, mos, level in zip(table["path"], oriented_mos(table), levels, strict=True):
        records.append(
            {
                "id": f"{path}->{mos}",
                "image": str(path),
                "conversations": [
                    {
                        "from": "human",
                        "value": f"{qalign_question(task)}\n<|image|>",
                    },
                    {"from": "gpt", "value": f"The {what} of the {medium} is {level}."},
                ],
                "gt_score": float(mos),
            }
        )
    return records


def compare2score_pairs(table: pd.DataFrame, n_pairs: int, seed: int = 0) -> pd.DataFrame:
    """``n_pairs`` random ordered pairs drawn inside each dataset (in proportion to its
    size), labelled with the σ rule: ``first`` (anchor), ``second``, ``level``, ``answer``."""
    if "std" not in table or table["std"].isna().any():
        raise ValueError("Compare2Score pairs need the rating std of every image (σ rule)")
    rng = np.random.default_rng(seed)
    table = table.reset_index(drop=True)
    q = oriented_mos(table)
    parts = []
    for name, rows in table.groupby("dataset", sort=True):
        idx = rows.index.to_numpy()
        k = max(1, round(n_pairs * len(idx) / len(table)))
        if len(idx) < 2:
            continue
        a = rng.integers(0, len(idx), k)
        b = (a + rng.integers(1, len(idx), k)) % len(idx)  # never the same image twice
        first, second = idx[a], idx[b]
        level = comparison_level_index(
            q[second], q[first], table["std"].to_numpy()[second], table["std"].to_numpy()[first]
        )
        parts.append(
            pd.DataFrame(
                {
                    "dataset": name,
                    "first": table["path"].to_numpy()[first],
                    "second": table["path"].to_numpy()[second],
                    "level": level,
                }
            )
        )
    if not parts:
        raise ValueError("no dataset has two images to pair")
    pairs = pd.concat(parts, ignore_index=True)
    pairs["answer"] = [
        f"The quality of the second image is {COMPARISON_ANSWERS[i]} the first image."
        for i in pairs["level"]
    ]
    pairs.attrs["seed"] = seed
    return pairs


def compare2score_conversations(pairs: pd.DataFrame) -> list[dict[str, Any]]:
    """Two-image SFT records with the inference prompt (anchor first, test second)."""
    question = f"<|image|> <|image|> {COMPARE_QUESTION} "
    return [
        {
            "id": f"{a}|{b}",
            "images": [str(a), str(b)],
            "conversations": [
                {"from": "human", "value": question},
                {"from": "gpt", "value": answer},
            ],
        }
        for a, b, answer in zip(pairs["first"], pairs["second"], pairs["answer"], strict=True)
    ]
