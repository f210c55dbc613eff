"""The GPU suite behind ``benchmarks/gpu_suite.sh`` (``vqpipe bench`` skips ``_*`` files).

Each figure runs as its own subprocess with a share of the time budget, so one that fails or
runs long is recorded as such and the rest still run; the JSON is written after every step.
``--dry-run`` runs the same steps with CPU-sized settings (small configs, a few images): on a
machine without a GPU it shows that the suite would run and that its JSON has every section.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


class UtilisationSampler:
    """GPU utilisation and memory sampled every ``interval_s`` through NVML (``pynvml``), else
    ``nvidia-smi``; no samples on a machine without either."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, float]] = []  # (utilisation %, memory used GiB)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.source = "none"

    def _reader(self) -> Any:
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            self.source = "nvml"

            def read() -> tuple[float, float]:
                util = pynvml.nvmlDeviceGetUtilizationRates(handle).gpu
                return float(util), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**30

            return read
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            query = [
                "nvidia-smi",
                "--query-gpu=utilization.gpu,memory.used",
                "--format=csv,noheader,nounits",
                "-i",
                "0",
            ]

            def read() -> tuple[float, float]:
                util, mem = subprocess.check_output(query, text=True).strip().split(",")
                return float(util), float(mem) / 1024

            return read
        return None

    def _run(self) -> None:
        read = self._reader()
        while read is not None and not self._stop.wait(self.interval_s):
            try:
                self.samples.append(read())
            except Exception:
                return

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"source": self.source, "samples": 0}
        util = sorted(u for u, _ in self.samples)
        busy = [u for u in util if u > 0] or [0.0]
        return {
            "source": self.source,
            "samples": len(util),
            "mean_pct": round(sum(util) / len(util), 1),
            "median_pct": util[len(util) // 2],
            "mean_busy_pct": round(sum(busy) / len(busy), 1),
            "max_memory_gib": round(max(m for _, m in self.samples), 2),
        }


def _run(cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess | dict[str, Any]:
    """The finished command, or the record of its time-out."""
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=HERE.parent
        )
    except subprocess.TimeoutExpired:
        return {"command": cmd, "error": f"timed out after {timeout_s:.0f} s"}


def _run_json(cmd: list[str], timeout_s: float) -> dict[str, Any]:
    """Run one benchmark script with ``--json``; its records, or what went wrong."""
    started = time.perf_counter()
    done = _run(cmd, timeout_s)
    if isinstance(done, dict):
        return done
    seconds = round(time.perf_counter() - started, 1)
    if done.returncode != 0:
        return {"command": cmd, "seconds": seconds, "error": done.stderr.strip()[-2000:]}
    text = done.stdout
    start = text.find("[")
    try:
        records = json.loads(text[start:]) if start >= 0 else []
    except json.JSONDecodeError:
        return {
            "command": cmd,
            "seconds": seconds,
            "error": "no JSON records",
            "stdout": text[-2000:],
        }
    return {"command": cmd, "seconds": seconds, "records": records}


def _job(dry_run: bool, timeout_s: float, workdir: Path) -> dict[str, Any]:
    """A full ``vqpipe score`` job on one GPU: a synthetic corpus, Gamma ViT-B/16 (random
    weights, bf16 on CUDA) in one GPU actor, images/s from the job's own summary, utilisation
    sampled while it runs."""
    from vqpipe.data import make_image_dataset
    from vqpipe.models.gamma import GammaConfig, GammaModel
    from vqpipe.models.gamma_checkpoint import save_gamma

    contents = 2 if dry_run else 160  # 26 images each: 52 / 4,160 images
    make_image_dataset(
        workdir / "corpus", n_contents=contents, size=(96, 72) if dry_run else (512, 384)
    )
    config = (
        GammaConfig(clip_model="vqpipe-demo-ViT-16", n_moae_layers=2, adapter_hidden=64)
        if dry_run
        else GammaConfig()
    )
    checkpoint = save_gamma(GammaModel(config), workdir / "gamma-random.safetensors")
    batch = 16 if dry_run else 256
    cmd = [
        sys.executable, "-m", "vqpipe.cli", "score", str(workdir / "corpus" / "images"),
        "--out", str(workdir / "quality"),
        "--scorer", f"gamma:checkpoint={checkpoint},batch_size={batch}",
        "--num-gpus-per-actor", "0" if dry_run else "1",
        "--rows-per-file", "64" if dry_run else "512",
    ]  # fmt: skip
    with UtilisationSampler() as sampler:
        started = time.perf_counter()
        done = _run(cmd, timeout_s)
        wall = time.perf_counter() - started
    if isinstance(done, dict):
        return done
    if done.returncode != 0:
        return {"command": cmd, "error": done.stderr.strip()[-2000:]}
    summary = json.loads(done.stdout[done.stdout.find("{") :])
    job = json.loads((workdir / "quality" / "_job.json").read_text())
    return {
        "command": cmd,
        "images": summary["scored_rows"],
        "errors": summary["errors"],
        "job_seconds": summary["seconds"],
        "wall_seconds": round(wall, 1),
        "images_per_s_job": summary["items_per_s"],
        "images_per_s_wall": round(summary["scored_rows"] / wall, 2),
        "runtime": job["scorers"]["gamma"]["runtime"],
        "gpu_utilisation": sampler.summary(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default="gpu_suite.json", help="the one JSON (default: %(default)s)"
    )
    parser.add_argument(
        "--budget-s", type=float, default=480.0, help="whole suite (default: 8 min)"
    )
    parser.add_argument("--dry-run", action="store_true", help="CPU-sized settings: check it runs")
    args = parser.parse_args()
    import torch

    has_gpu = torch.cuda.is_available()
    if not has_gpu and not args.dry_run:
        print(
            "gpu_suite: no CUDA device here; use --dry-run to check the suite on a CPU",
            file=sys.stderr,
        )
        return 2
    py = sys.executable
    dev = (
        ["--device", "cpu", "--quick"] if args.dry_run else ["--device", "cuda", "--dtype", "bf16"]
    )
    gamma_batch = "8" if args.dry_run else "256"
    steps = [  # name, share of the budget, command
        (
            "gamma_vitb16_bf16_batch256",
            0.15,
            [py, str(HERE / "gamma_throughput.py"), *dev, "--batch", gamma_batch, "--json"],
        ),
        ("qalign_7b", 0.25, [py, str(HERE / "qalign_throughput.py"), *dev, "--json"]),
        ("compare2score_7b", 0.25, [py, str(HERE / "compare2score_throughput.py"), *dev, "--json"]),
    ]
    report: dict[str, Any] = {
        "suite": "gpu_suite",
        "dry_run": args.dry_run,
        "machine": torch.cuda.get_device_name(0) if has_gpu else platform.processor() or "cpu",
        "torch": torch.__version__,
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "figures": {},
    }
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(report, indent=2, default=str))

    began = time.perf_counter()
    for name, share, cmd in steps:
        left = args.budget_s - (time.perf_counter() - began)
        print(f"gpu_suite: {name} ...", file=sys.stderr, flush=True)
        report["figures"][name] = _run_json(cmd, max(30.0, min(share * args.budget_s, left - 60)))
        save()
    left = args.budget_s - (time.perf_counter() - began)
    print("gpu_suite: vqpipe_score_job ...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-suite-") as tmp:
        os.environ.setdefault("RAY_DISABLE_USAGE_STATS", "1")
        report["figures"]["vqpipe_score_job"] = _job(args.dry_run, max(60.0, left - 10), Path(tmp))
    report["seconds"] = round(time.perf_counter() - began, 1)
    save()
    failed = [k for k, v in report["figures"].items() if "error" in v]
    print(f"gpu_suite: wrote {out} in {report['seconds']} s; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
