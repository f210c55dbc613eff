"""Cascaded scoring on CPU (issue 29, item 1): Gamma on every row, Q-Align only in the band
that ``vqpipe cascade plan`` finds, against scoring every row with both.

    python benchmarks/cascade.py                     # 3 interleaved rounds
    python benchmarks/cascade.py --quick             # 1 round, a smaller corpus
    python benchmarks/cascade.py --json out.json     # also write the records (--json alone:
                                                     # print them instead of the table)

A synthetic corpus (:func:`vqpipe.data.make_image_dataset`, ``--size``) is split in two halves
at random. Half A is scored by both (the demo Gamma checkpoint, bundled; a random Q-Align of
``--qalign``'s shape), and :func:`vqpipe.rewards.cascade.plan_band` plans the band on
``gamma_score`` for a curation that keeps the rows whose ``qalign_score`` is in the top
``--keep-share`` of half A, to ``--target`` agreement. Half B is then scored per round by
both scorers on every row and by the cascade (``qalign:when=gamma_score between lo and hi``),
the jobs interleaved. Reported: the decision agreement on half B of the cascade's keep/drop
(Q-Align inside the band, the side of the band outside) with Q-Align's own, the share of rows
sent on, and the job wall clock of each (min and median over rounds, Ray's start-up left out:
it is up before the first job) with their ratio. Then the cost per share sent: cascades with
fixed central bands of half A's Gamma scores (sending about 50% and 25% on), in the same
rounds.

The Q-Align's weights are random: how well Gamma predicts it, and so how narrow the band
is, says nothing about the real models; the share sent on and the time saved per row sent are
what carry over.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vqpipe.console import NORMAL, ray_output_kept_out
from vqpipe.data import make_image_dataset
from vqpipe.pipeline.config import JobConfig, ScorerOptions
from vqpipe.pipeline.job import run_job
from vqpipe.rewards.cascade import cascade_decisions, decisions, plan_band
from vqpipe.storage import read_quality_table


def _corpus(
    root: Path, contents: int, seed: int, size: tuple[int, int] = (96, 72)
) -> tuple[Path, Path]:
    """The synthetic images split at random into two folders of (about) equal size."""
    make_image_dataset(root / "all", n_contents=contents, size=size, seed=seed)
    images = sorted((root / "all" / "images").iterdir())
    random.Random(seed).shuffle(images)
    halves = root / "a", root / "b"
    for k, image in enumerate(images):
        folder = halves[k % 2]
        folder.mkdir(exist_ok=True)
        shutil.copy(image, folder / image.name)
    return halves


def _table_folder(work: Path, job: str, round_: int) -> Path:
    """Where round ``round_`` of the job named ``job`` (``both``, ``sent 50%`` …) writes."""
    return work / f"{job.replace(' ', '-').replace('%', '')}-{round_}"


def _job(folder: Path, out: Path, qalign: dict[str, Any], when: str | None) -> float:
    scorers = [ScorerOptions("gamma", {"device": "cpu"}, batch_size=16)]
    spec = ScorerOptions("qalign", dict(qalign), batch_size=4)
    spec.when = when
    scorers.append(spec)
    config = JobConfig(input=str(folder), output=str(out), scorers=scorers, rows_per_file=64)
    start = time.perf_counter()
    run_job(config, notice=lambda _: None)
    return time.perf_counter() - start


def run(
    rounds: int,
    contents: int,
    keep_share: float,
    target: float,
    size: tuple[int, int] = (96, 72),
    qalign_config: str = "bench",
    shares: tuple[float, ...] = (0.5, 0.25),
) -> list[dict[str, Any]]:
    import ray

    from vqpipe.models.mplug_owl2.tiny import bench_config, make_tiny_checkpoint

    work = Path(tempfile.mkdtemp(prefix="vqpipe-cascade-"))
    try:
        half_a, half_b = _corpus(work, contents, seed=0, size=size)
        config = bench_config() if qalign_config == "bench" else None
        checkpoint = make_tiny_checkpoint(work / "qalign", seed=3, config=config)
        qalign = {"checkpoint": str(checkpoint), "device": "cpu"}
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        _job(half_a, work / "sample", qalign, None)
        sample = read_quality_table(str(work / "sample"))
        sample = sample[sample["gamma_score"].notna() & sample["qalign_score"].notna()]
        threshold = float(np.quantile(sample["qalign_score"], 1 - keep_share))
        band = plan_band(sample["gamma_score"], sample["qalign_score"], threshold, "above", target)
        when = f"gamma_score between {band.lo!r} and {band.hi!r}"
        jobs: dict[str, str | None] = {"both": None, "cascade": when}
        for share in shares:  # central bands of half A's Gamma scores: the cost per share sent
            lo, hi = map(
                float, np.quantile(sample["gamma_score"], [0.5 - share / 2, 0.5 + share / 2])
            )
            jobs[f"sent {share:.0%}"] = f"gamma_score between {lo!r} and {hi!r}"
        times: dict[str, list[float]] = {name: [] for name in jobs}
        for k in range(rounds):  # interleaved, the order turned each round
            order = list(jobs) if k % 2 == 0 else list(jobs)[::-1]
            for name in order:
                out = _table_folder(work, name, k)
                times[name].append(_job(half_b, out, qalign, jobs[name]))
        both = read_quality_table(str(_table_folder(work, "both", 0))).set_index("uri")
        cascade = (
            read_quality_table(str(_table_folder(work, "cascade", 0)))
            .set_index("uri")
            .loc[both.index]
        )
        ok = both["error"].isna().to_numpy()
        truth = decisions(both["qalign_score"].to_numpy()[ok], threshold)
        sent = ~cascade["qalign_skipped"].to_numpy(bool)[ok]
        decided = np.where(
            sent,
            decisions(cascade["qalign_score"].to_numpy()[ok], threshold),
            cascade_decisions(
                cascade["gamma_score"].to_numpy()[ok],
                cascade["qalign_score"].to_numpy()[ok],
                band.lo,
                band.hi,
                threshold,
            ),
        )
        agreement, share = float(np.mean(decided == truth)), float(np.mean(sent))
        record = {
            "figure": f"cascade vs both on all (job wall clock): agreement {agreement:.1%}, "
            f"{share:.1%} sent to Q-Align",
            "rows_plan": len(sample),
            "rows_apply": int(ok.sum()),
            "threshold": threshold,
            "keep_share": keep_share,
            "target": target,
            "band": [band.lo, band.hi],
            "plan_agreement": band.agreement,
            "plan_sent": band.sent,
            "agreement": agreement,
            "sent": share,
            "both_s": times["both"],
            "cascade_s": times["cascade"],
            "both_min_s": min(times["both"]),
            "cascade_min_s": min(times["cascade"]),
            "both_median_s": statistics.median(times["both"]),
            "cascade_median_s": statistics.median(times["cascade"]),
            "ratio_min": min(times["both"]) / min(times["cascade"]),
            "ratio_median": statistics.median(times["both"]) / statistics.median(times["cascade"]),
            "ratio": statistics.median(times["both"]) / statistics.median(times["cascade"]),
            "device": "cpu",
            "rounds": rounds,
            "image_size": list(size),
            "qalign": qalign_config,
        }
        records = [record]
        for name in jobs:
            if not name.startswith("sent "):
                continue
            out = read_quality_table(str(_table_folder(work, name, 0)))
            fixed = float(np.mean(~out["qalign_skipped"].to_numpy(bool)))
            records.append(
                {
                    "figure": f"cascade sending {fixed:.0%} on (a fixed band) vs both on all "
                    "(job wall clock)",
                    "sent": fixed,
                    "when": jobs[name],
                    "cascade_s": times[name],
                    "both_s": times["both"],
                    "ratio_min": min(times["both"]) / min(times[name]),
                    "ratio": statistics.median(times["both"]) / statistics.median(times[name]),
                    "device": "cpu",
                    "rounds": rounds,
                }
            )
        return records
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _table(r: dict[str, Any]) -> str:
    w, h = r["image_size"]
    lines = [
        f"{r['rows_apply']} rows of {w}x{h} images scored per job, {r['rounds']} rounds",
        f"plan on {r['rows_plan']} rows: band gamma_score in [{r['band'][0]:.4f}, "
        f"{r['band'][1]:.4f}], agreement {r['plan_agreement']:.1%}, sent {r['plan_sent']:.1%}",
        f"{'':<10}{'agreement':>10}{'sent on':>9}{'min s':>8}{'median s':>10}",
        f"{'both':<10}{1:>10.1%}{1:>9.1%}{r['both_min_s']:>8.1f}{r['both_median_s']:>10.1f}",
        f"{'cascade':<10}{r['agreement']:>10.1%}{r['sent']:>9.1%}{r['cascade_min_s']:>8.1f}"
        f"{r['cascade_median_s']:>10.1f}",
        f"cascade: {r['ratio_median']:.2f}x vs both (median; min {r['ratio_min']:.2f}x), "
        f"{r['sent']:.1%} of {r['rows_apply']} rows sent on, agreement {r['agreement']:.1%}",
    ]
    return "\n".join(lines)


def _fixed(r: dict[str, Any]) -> str:
    cascade, both = statistics.median(r["cascade_s"]), statistics.median(r["both_s"])
    return (
        f"fixed band sending {r['sent']:.1%} on: median {cascade:.1f} s vs {both:.1f} s → "
        f"{r['ratio']:.2f}x (min {r['ratio_min']:.2f}x)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, 2 contents")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--contents", type=int, default=4, help="synthetic contents (default 4)")
    parser.add_argument("--keep-share", type=float, default=0.5, help="curation keeps this top")
    parser.add_argument("--target", type=float, default=0.99, help="plan's agreement target")
    parser.add_argument(
        "--qalign",
        choices=("bench", "tiny"),
        default="bench",
        help="the random Q-Align: bench (448 px, a 4-layer LLM: decoding, preprocessing and "
        "the model weigh as the real one's do, relatively) or tiny (28 px; default bench)",
    )
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(96, 72),
        metavar=("W", "H"),
        help="synthetic image size (default 96 72; larger: decoding weighs as in real corpora)",
    )
    parser.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the records to PATH (alone: print them instead of the table)",
    )
    args = parser.parse_args()
    rounds, contents = (1, 2) if args.quick else (args.rounds, args.contents)
    with ray_output_kept_out(NORMAL, "cascade-bench"):  # Ray's lines to a log file
        records = run(rounds, contents, args.keep_share, args.target, tuple(args.size), args.qalign)
    if args.json == "-":
        print(json.dumps(records, indent=2))
        return
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(records, fh, indent=2)
    print(_table(records[0]))
    for r in records[1:]:
        print(_fixed(r))


if __name__ == "__main__":
    main()
