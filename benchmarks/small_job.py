"""Fixed cost of a small job: wall time per phase of `vqpipe score` for 100 images with Gamma
(bundled demo checkpoint, CPU) on local Ray, and of the same command again (a resume with
nothing to do, which must not start Ray).

    python benchmarks/small_job.py            # 100 images
    python benchmarks/small_job.py --quick    # 26 images
    python benchmarks/small_job.py --json     # the records `vqpipe bench` reads

Each run is a fresh interpreter running `vqpipe.cli.main(["score", ...])`, as a user's
command; the phases are timed by wrapping the job module's steps (imports of the CLI and the
job module, validation, the checkpoint identity in the signature, listing + resume check, the
checkpoint probe and preprocessor build (only when there is work), ``ray.init`` with the
``ray`` import, the cluster check, Ray Data execution — decode, score and part writes, with the
``ray.data`` import — the ``_job.json`` write, ``ray.shutdown``), the interpreter's start and
its exit (atexit handlers); ``seconds`` is the subprocess's wall time. Targets (quiet 2-core
machine): <= 25 s end to end, <= 5 s for the resume; ``ratio`` = target / measured (>= 1:
within it).

The same images in nested folders (two levels, listing tasks per subfolder) are scored too,
and the two resumes with nothing to do (flat, nested) are run interleaved, ``--repeats``
times each: their ``seconds`` is the minimum, ``median_s`` the median (neither starts Ray).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGETS_S = {"job": 25.0, "resume": 5.0, "resume_nested": 5.0}
MARK = "SMALL_JOB_PHASES "


def child(images: str, out: str, limit: int) -> None:
    """One `vqpipe score` in this process, with each phase timed; prints the phases."""
    phases: dict[str, float] = {"_started_at": time.time()}
    t0 = time.perf_counter()
    import vqpipe.cli
    from vqpipe.pipeline import job, runner

    phases["imports"] = time.perf_counter() - t0

    def timed(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name, None)
        if original is None:  # the job module changed: that phase is not measured
            return

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - start

        setattr(owner, name, wrapper)

    timed(job, "validate_job", "validation")
    timed(job, "check_checkpoints", "checkpoint probe + preprocessor")
    timed(job, "scorer_signature", "signature (checkpoint identity)")
    timed(job, "plan_work", "listing + resume check")
    timed(job, "resume_filter", "listing + resume check")
    timed(runner, "check_cluster_resources", "cluster check")
    timed(job, "check_output_writable", "output check")

    def time_ray() -> None:
        import ray

        timed(ray, "init", "ray.init")
        timed(ray, "shutdown", "ray.shutdown")

    original_start = getattr(runner, "start_ray", None)
    if original_start is None:
        time_ray()
    else:  # ray is imported where the job starts it (in ray.init's phase): a resume does not

        def start_ray(*args: Any, **kwargs: Any) -> Any:
            time_ray()
            return original_start(*args, **kwargs)

        runner.start_ray = start_ray

    marks: dict[str, float] = {}
    build = getattr(job, "build_dataset", None)
    if build is not None:

        def build_dataset(*args: Any, **kwargs: Any) -> Any:
            marks["execution_start"] = time.perf_counter()
            ds = build(*args, **kwargs)
            rows = ds.iter_rows

            def iter_rows(*a: Any, **k: Any) -> Any:
                yield from rows(*a, **k)
                marks["execution_end"] = time.perf_counter()

            ds.iter_rows = iter_rows
            return ds

        job.build_dataset = build_dataset
    run = job.run_job

    def run_job(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return run(*args, **kwargs)
        finally:
            marks["run_end"] = time.perf_counter()
            phases["run_job"] = marks["run_end"] - start

    job.run_job = run_job
    argv = ["score", images, "--out", out, "--limit", str(limit), "--quiet", "--json"]
    argv += ["--scorer", "gamma:device=cpu"]
    start = time.perf_counter()
    rc = vqpipe.cli.main(argv)
    phases["command"] = time.perf_counter() - start
    if "execution_end" in marks:
        phases["Ray Data execution"] = marks["execution_end"] - marks["execution_start"]
        phases["write (_job.json)"] = marks["run_end"] - marks["execution_end"]
    phases["_ended_at"] = time.time()
    print(MARK + json.dumps({"rc": rc, "phases": phases}), flush=True)


def _run_child(images: str, out: str, limit: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", images, out, str(limit)]
    start, spawned = time.perf_counter(), time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    wall, ended = time.perf_counter() - start, time.time()
    lines = [line for line in proc.stdout.splitlines() if line.startswith(MARK)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"small job failed: {proc.stderr.strip()[-2000:]}")
    record = json.loads(lines[-1][len(MARK) :])
    phases = record["phases"]
    phases["interpreter start"] = max(phases.pop("_started_at") - spawned, 0.0)
    phases["exit"] = max(ended - phases.pop("_ended_at"), 0.0)
    record["seconds"] = wall
    record["summary"] = json.loads(proc.stdout.split(MARK)[0] or "{}")
    return record


def _nested_copy(images: Path, nested: Path) -> str:
    """The images in folders two levels deep (``nested/<i % 4>/<i % 3>/``, and one at the
    top): a listing of one task per top-level folder, each listing its subtree."""
    for i, path in enumerate(sorted(images.iterdir())):
        folder = nested if i == 0 else nested / str(i % 4) / str(i % 3)
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / path.name)
    return str(nested)


def _resumes(jobs: dict[str, tuple[str, str]], n_images: int, repeats: int) -> dict[str, Any]:
    """Resumes with nothing to do, interleaved over ``jobs`` (name → images, out), each
    ``repeats`` times: per name, the fastest run's record with every run's seconds."""
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, (images, out) in jobs.items():
            record = _run_child(images, out, n_images)
            assert record["summary"]["scored_rows"] == 0, record["summary"]
            runs[name].append(record)
    best = {}
    for name, records in runs.items():
        fastest = min(records, key=lambda r: r["seconds"])
        fastest["all_s"] = [round(r["seconds"], 2) for r in records]
        fastest["median_s"] = round(statistics.median(r["seconds"] for r in records), 2)
        best[name] = fastest
    return best


def run(n_images: int, repeats: int = 3) -> list[dict[str, Any]]:
    from vqpipe.data import make_image_dataset

    with tempfile.TemporaryDirectory() as tmp:
        make_image_dataset(Path(tmp) / "corpus", n_contents=-(-n_images // 26), seed=11)
        images, out = str(Path(tmp) / "corpus" / "images"), str(Path(tmp) / "quality")
        for extra in sorted(Path(images).iterdir())[n_images:]:  # exactly n_images inputs
            extra.unlink()
        first = _run_child(images, out, n_images)
        assert first["summary"]["scored_rows"] == n_images, first["summary"]
        nested = _nested_copy(Path(images), Path(tmp) / "nested")
        nested_out = str(Path(tmp) / "quality-nested")
        nested_first = _run_child(nested, nested_out, n_images)
        assert nested_first["summary"]["scored_rows"] == n_images, nested_first["summary"]
        jobs = {"resume": (images, out), "resume_nested": (nested, nested_out)}
        resumes = _resumes(jobs, n_images, repeats)
        again, again_nested = resumes["resume"], resumes["resume_nested"]
    common = {
        "images": n_images,
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "load_1min": round(os.getloadavg()[0], 2),
        "scorer": "gamma (bundled demo checkpoint, CPU)",
    }
    records = []
    for key, figure, r in (
        ("job", f"small job: {n_images} images, Gamma, local Ray", first),
        ("resume", f"resume with nothing to do ({n_images} images)", again),
        (
            "resume_nested",
            f"resume with nothing to do ({n_images} images in nested folders)",
            again_nested,
        ),
    ):
        records.append(
            {
                "benchmark": "small_job",
                "figure": figure,
                "seconds": round(r["seconds"], 2),
                **({"median_s": r["median_s"], "all_s": r["all_s"]} if "all_s" in r else {}),
                "target_s": TARGETS_S[key],
                "ratio": round(TARGETS_S[key] / r["seconds"], 3),
                "phases_s": {k: round(v, 2) for k, v in r["phases"].items()},
                "ray_started": "ray.init" in r["phases"],
                **common,
            }
        )
    return records


ORDER = (
    "interpreter start",
    "imports",
    "validation",
    "checkpoint probe + preprocessor",
    "signature (checkpoint identity)",
    "listing + resume check",
    "ray.init",
    "cluster check",
    "output check",
    "Ray Data execution",
    "write (_job.json)",
    "ray.shutdown",
    "exit",
)


def print_records(records: list[dict[str, Any]]) -> None:
    for r in records:
        spread = f", median {r['median_s']:.1f} s of {len(r['all_s'])}" if "all_s" in r else ""
        print(
            f"{r['figure']}: {r['seconds']:.1f} s{spread} (target <= {r['target_s']:g} s, "
            f"ratio {r['ratio']:.2f}; {r['cpus']} CPUs, load {r['load_1min']})"
        )
        for name in ORDER:
            if name in r["phases_s"]:
                print(f"  {name:<34}{r['phases_s'][name]:7.2f} s")
        if not r["ray_started"]:
            print("  (Ray not started)")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="26 images instead of 100")
    parser.add_argument("--json", action="store_true", help="print the records as JSON")
    parser.add_argument(
        "--repeats", type=int, default=None, help="runs of each resume (default: 3, --quick 2)"
    )
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 3)
    records = run(26 if args.quick else 100, repeats)
    if args.json:
        print(json.dumps(records, indent=2))
    else:
        print_records(records)


if __name__ == "__main__":
    main()
