"""The embedded default job: synthetic corpus → scoring math on local Ray Data → Parquet → metrics.

Until the model scorers are wired into the pipeline, the demo drives the scoring math with an
*oracle* built from the synthetic MOS and rating std (no network, no checkpoint):

* **Compare2Score path** — anchors are chosen from the train split (:func:`select_anchors`);
  each test image is "compared" with every anchor by Thurstone's Case V law,
  ``P(test ≻ anchor) = Φ((q_t − q_a) / sqrt(σ_t² + σ_a²))``, its row/column is added to the
  anchor matrix and the batch is solved with one :func:`thurstone_map` call.
* **Q-Align path** — level logits are the log-density of the rating distribution
  ``N(mos, std)`` at the five level centres, turned into a score by :func:`level_score`.

The result is a quality table (Parquet) and SRCC/KRCC/PLCC against the MOS: a check that the
math, Ray and Parquet plumbing of a fresh install work end to end.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from vqpipe.data.synthetic import make_image_dataset
from vqpipe.eval import krcc, plcc, srcc
from vqpipe.scoring import LEVEL_SCORES, level_score, select_anchors, thurstone_map


def oracle_comparison_matrix(
    test_mos: np.ndarray, test_std: np.ndarray, anchor_mos: np.ndarray, anchor_std: np.ndarray
) -> np.ndarray:
    """(B, m+1, m+1) preference matrices: anchors first, the test image last (Case V oracle)."""

    def prefer(q_i, s_i, q_j, s_j):
        return stats.norm.cdf((q_i - q_j) / np.sqrt(s_i**2 + s_j**2))

    m = len(anchor_mos)
    anchors = prefer(anchor_mos[:, None], anchor_std[:, None], anchor_mos[None], anchor_std[None])
    np.fill_diagonal(anchors, 0.5)
    p = prefer(test_mos[:, None], test_std[:, None], anchor_mos[None], anchor_std[None])  # [B, m]
    full = np.full((len(test_mos), m + 1, m + 1), 0.5)
    full[:, :m, :m] = anchors
    full[:, m, :m] = p  # test row: P(test ≻ anchor_j)
    full[:, :m, m] = 1 - p  # test column
    return full


def oracle_level_logits(mos: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(B, 5) level logits: log N(level centre; mos, std) on the 1..5 scale."""
    centres = np.asarray(LEVEL_SCORES)
    return stats.norm.logpdf(centres[None, :], loc=mos[:, None], scale=std[:, None])


class OracleScoringStage:
    """Ray Data stage: one batch of MOS rows → Thurstone and level scores (batched)."""

    def __init__(self, anchor_mos: np.ndarray, anchor_std: np.ndarray) -> None:
        self.anchor_mos = np.asarray(anchor_mos, dtype=np.float64)
        self.anchor_std = np.asarray(anchor_std, dtype=np.float64)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        mos = batch["mos"].astype(np.float64)
        std = batch["std"].astype(np.float64)
        matrices = oracle_comparison_matrix(mos, std, self.anchor_mos, self.anchor_std)
        q = thurstone_map(matrices)  # [B, m+1], one batched solve
        return {
            "uri": batch["path"],
            "mos": mos,
            "thurstone_score": q[:, -1],
            "level_score": level_score(oracle_level_logits(mos, std)),
        }


def run_demo(
    out_dir: str | os.PathLike = "vqpipe-demo",
    n_contents: int = 8,
    seed: int = 0,
    num_cpus: int | None = None,
) -> dict[str, Any]:
    """Build the synthetic corpus, score it on local Ray Data, write Parquet, return metrics."""
    import ray

    started = time.perf_counter()
    out = Path(out_dir).resolve()
    table = make_image_dataset(out / "corpus", n_contents=n_contents, seed=seed)
    anchors = select_anchors(table[table["split"] == "train"], alpha=5, beta=1)
    test = table[table["split"] != "train"][["path", "mos", "std"]].reset_index(drop=True)

    if not ray.is_initialized():
        # Connects to a cluster when RAY_ADDRESS is set (ray job submit), else starts local Ray.
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
    stage = OracleScoringStage(anchors["mos"].to_numpy(), anchors["std"].to_numpy())
    quality_dir = out / "quality_table"
    (
        ray.data.from_pandas(test)
        .map_batches(stage, batch_format="numpy", batch_size=64)
        .write_parquet(str(quality_dir), mode="overwrite")
    )
    scored = pd.read_parquet(quality_dir).sort_values("uri").reset_index(drop=True)

    metrics = {
        name: {
            "srcc": srcc(scored[name], scored["mos"]),
            "krcc": krcc(scored[name], scored["mos"]),
            "plcc": plcc(scored[name], scored["mos"]),
        }
        for name in ("thurstone_score", "level_score")
    }
    summary = {
        "corpus": str(out / "corpus"),
        "quality_table": str(quality_dir),
        "images": len(table),
        "scored": len(scored),
        "anchors": anchors["path"].map(lambda p: Path(p).name).tolist(),
        "metrics": metrics,
        "seconds": round(time.perf_counter() - started, 2),
    }
    (out / "demo_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable lines for the CLI."""
    lines = [
        f"corpus: {summary['images']} synthetic images in {summary['corpus']}",
        f"anchors (train split, 5 MOS intervals): {', '.join(summary['anchors'])}",
        f"quality table: {summary['scored']} rows in {summary['quality_table']}",
        f"{'oracle score':<18}{'SRCC':>8}{'KRCC':>8}{'PLCC':>8}",
    ]
    for name, m in summary["metrics"].items():
        lines.append(f"{name:<18}{m['srcc']:>8.4f}{m['krcc']:>8.4f}{m['plcc']:>8.4f}")
    lines.append(f"done in {summary['seconds']} s")
    return "\n".join(lines)
