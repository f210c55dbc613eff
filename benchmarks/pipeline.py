"""Scoring-job throughput, side by side in one run: the full Ray Data pipeline vs a decode-only
Ray Data pass over the same inputs vs a plain single-process loop (decode + score).

    python benchmarks/pipeline.py            # 2,080 generated images, Gamma demo checkpoint
    python benchmarks/pipeline.py --quick    # 312 images
    python benchmarks/pipeline.py --scorer brightness   # a scorer that is never the bottleneck

Prints one line per figure with its ratio; ``--json`` prints the record. The decode-only pass
runs the same decode + preprocessing stage and discards the result; the target is pipeline
>= 0.8x decode-only when the scorer is not the bottleneck (a GPU pool); on a CPU-only machine
``--scorer brightness`` shows the pipeline's own overhead, since Gamma on CPU shares the cores
with decoding.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa


def run(
    n_contents: int, batch_size: int, scorer_name: str = "gamma", actor_cpus: float | None = None
) -> dict:
    import ray

    from vqpipe.data import make_image_dataset
    from vqpipe.io.readers import ReadOptions, read_tables
    from vqpipe.media.decode import MediaLimits, decode_image
    from vqpipe.pipeline.config import JobConfig, ScorerOptions
    from vqpipe.pipeline.decode_stage import decode_batch
    from vqpipe.pipeline.job import run_job
    from vqpipe.pipeline.stages import DECODE_CPUS, DECODE_MEMORY
    from vqpipe.scoring import create_scorer

    with tempfile.TemporaryDirectory() as tmp:
        make_image_dataset(Path(tmp) / "corpus", n_contents=n_contents, seed=7)
        images = str(Path(tmp) / "corpus" / "images")
        options = {"device": "cpu"} if scorer_name == "gamma" else {}
        spec = ScorerOptions(scorer_name, options, batch_size=batch_size, num_cpus=actor_cpus)
        if not ray.is_initialized():
            ray.init(include_dashboard=False, log_to_driver=False)
        read = ReadOptions(spec=images)  # the job's own listing of the folder
        listing = pa.concat_tables(read_tables("files", images, read, {})).to_pandas()
        n = len(listing)

        def pipeline_pass() -> float:
            start = time.perf_counter()
            summary = run_job(
                JobConfig(input=images, output=f"{tmp}/out", scorers=[spec], resume=False)
            )
            assert summary["scored_rows"] == n and summary["errors"] == 0
            return time.perf_counter() - start

        def decode_pass() -> float:
            start = time.perf_counter()
            ds = ray.data.from_pandas(
                [listing.iloc[i : i + 256] for i in range(0, n, 256)]
            ).map_batches(
                decode_batch,
                fn_kwargs={
                    "scorers": [spec],
                    "storage_options": {},
                    "video_fps": 1.0,
                    "limits": MediaLimits(),
                },
                batch_size=256,
                batch_format="numpy",
                num_cpus=DECODE_CPUS,
                memory=DECODE_MEMORY,
            )
            rows = sum(len(b["uri"]) for b in ds.iter_batches(batch_size=256, batch_format="numpy"))
            assert rows == n
            return time.perf_counter() - start

        # Each pass twice, the second timed: steady state, with Ray's worker processes (and
        # their imports) already started — a nightly job pays that start once.
        cold_pipeline_s = pipeline_pass()
        decode_pass()
        pipeline_s = pipeline_pass()
        decode_s = decode_pass()

        scorer = create_scorer(scorer_name, **options)
        start = time.perf_counter()
        pending, scores = [], []
        for uri in listing["uri"]:
            image, _ = decode_image(Path(uri).read_bytes())
            pending.append(scorer.preprocess(image)["pixels"][None])  # [T = 1, ...]
            if len(pending) == batch_size:
                scores.append(scorer.predict_items(pending, batch_size)["score"])
                pending = []
        if pending:
            scores.append(scorer.predict_items(pending, batch_size)["score"])
        loop_s = time.perf_counter() - start
        assert sum(len(s) for s in scores) == n

    return {
        "benchmark": "pipeline",
        "images": n,
        "pipeline_images_per_s": n / pipeline_s,
        "decode_only_images_per_s": n / decode_s,
        "single_process_images_per_s": n / loop_s,
        "ratio_vs_decode_only": decode_s / pipeline_s,
        "cold_pipeline_images_per_s": n / cold_pipeline_s,
        "ratio_vs_single_process": loop_s / pipeline_s,
        "cpus": int(ray.cluster_resources().get("CPU", 0)),
        "machine": platform.processor() or platform.machine(),
        "actor_cpus": actor_cpus,
        "scorer": scorer_name
        + (" (bundled demo checkpoint, CPU)" if scorer_name == "gamma" else ""),
        "scores_mean": float(np.concatenate(scores).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="312 images instead of 2,080")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--scorer",
        default="gamma",
        help="gamma, or brightness: a scorer that is never the bottleneck",
    )
    parser.add_argument(
        "--actor-cpus",
        type=float,
        default=None,
        help="CPUs reserved per scorer actor (a GPU actor needs little: e.g. 0.25)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    record = run(12 if args.quick else 80, args.batch_size, args.scorer, args.actor_cpus)
    if args.json:
        print(json.dumps(record))
        return
    r = record
    print(
        f"pipeline {r['pipeline_images_per_s']:.1f} images/s on {r['images']} images "
        f"({r['cpus']} CPUs): {r['ratio_vs_decode_only']:.2f}x a decode-only pass "
        f"({r['decode_only_images_per_s']:.1f}/s), {r['ratio_vs_single_process']:.2f}x a "
        f"single-process loop ({r['single_process_images_per_s']:.1f}/s); scorer {r['scorer']}"
    )


if __name__ == "__main__":
    main()
