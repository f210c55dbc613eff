"""Batched Thurstone MAP (vqpipe) vs a per-matrix scipy loop, side by side in one process.

    python benchmarks/thurstone.py            # B = 4096 matrices of 6×6
    python benchmarks/thurstone.py --quick    # smaller scipy sample

Prints one line with the ratio; ``--json`` prints a machine-readable record instead.
The scipy baseline solves the same constrained objective with SLSQP, one matrix at a time
(as a per-image scorer would); its per-matrix time is measured on a random subset and
scaled to B. Target: ≥ 50×.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
from scipy import optimize, stats

from vqpipe.scoring import thurstone_map


def make_matrices(batch: int, n: int, seed: int = 0) -> np.ndarray:
    """Compare2Score-like matrices: noisy Case V preferences, P_ij = 1 − P_ji."""
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, n)) * 1.5
    P = stats.norm.cdf(q[:, :, None] - q[:, None, :])
    P = np.clip(P + rng.normal(scale=0.05, size=P.shape), 0.0, 1.0)
    upper = np.triu(P, 1)
    P = upper + np.transpose(1 - upper, (0, 2, 1)) * np.tril(np.ones((n, n)), -1)
    P[:, np.arange(n), np.arange(n)] = 0.5
    return P


def scipy_map(P: np.ndarray) -> np.ndarray:
    def negative_objective(q):
        return -(P * stats.norm.logcdf(q[:, None] - q[None, :])).sum() + 0.5 * (q**2).sum()

    result = optimize.minimize(
        negative_objective,
        np.zeros(P.shape[0]),
        method="SLSQP",
        constraints=[{"type": "eq", "fun": np.sum}],
        options={"ftol": 1e-12, "maxiter": 500},
    )
    return result.x


def run(batch: int = 4096, n: int = 6, scipy_sample: int = 256, repeats: int = 5) -> dict:
    P = make_matrices(batch, n)
    thurstone_map(P[:8])  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        ours = thurstone_map(P)
        times.append(time.perf_counter() - start)
    batched_s = min(times)

    rng = np.random.default_rng(1)
    sample = rng.choice(batch, size=min(scipy_sample, batch), replace=False)
    start = time.perf_counter()
    reference = np.stack([scipy_map(P[i]) for i in sample])
    per_matrix_s = (time.perf_counter() - start) / len(sample)
    loop_s = per_matrix_s * batch
    return {
        "benchmark": "thurstone_map",
        "batch": batch,
        "n": n,
        "batched_s": batched_s,
        "scipy_loop_s_estimated": loop_s,
        "scipy_per_matrix_ms": per_matrix_s * 1e3,
        "scipy_sample": len(sample),
        "ratio": loop_s / batched_s,
        "max_abs_diff_vs_scipy": float(np.abs(ours[sample] - reference).max()),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="scipy on 32 matrices, 2 repeats")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    record = run(scipy_sample=32, repeats=2) if args.quick else run()
    if args.json:
        print(json.dumps(record))
        return
    r = record
    print(
        f"thurstone_map B={r['batch']} n={r['n']}: batched {r['batched_s'] * 1e3:.1f} ms"
        f" vs scipy loop {r['scipy_loop_s_estimated']:.1f} s ({r['scipy_per_matrix_ms']:.2f}"
        f" ms/matrix) → {r['ratio']:.0f}x vs per-matrix scipy"
        f" (max |Δq| {r['max_abs_diff_vs_scipy']:.1e})"
    )


if __name__ == "__main__":
    main()
