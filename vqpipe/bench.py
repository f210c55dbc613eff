"""``vqpipe bench``: run every script in ``benchmarks/`` and collect one table.

Each script prints its records with ``--json`` (``--quick`` for the small settings); we run
them in subprocesses, one after another, and write ``bench.json`` (records + machine + git
commit + date) and ``bench.md`` (a markdown table: figure, result, ratio vs its side-by-side
baseline). On a GPU machine the records carry the GPU name, images/s per GPU and MFU.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO


def find_benchmarks(directory: str | os.PathLike | None = None) -> Path:
    """``benchmarks/`` of the working directory, else of the source checkout."""
    candidates = [Path(directory)] if directory else []
    candidates += [Path.cwd() / "benchmarks", Path(__file__).resolve().parents[1] / "benchmarks"]
    for path in candidates:
        if path.is_dir() and any(path.glob("*.py")):
            return path
    raise FileNotFoundError("no benchmarks/ directory found; pass --dir")


def _parse_json(stdout: str) -> Any:
    for i, line in enumerate(stdout.splitlines()):
        if line.startswith(("{", "[")):
            return json.loads("\n".join(stdout.splitlines()[i:]))
    raise ValueError("no JSON in the benchmark's output")


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpus"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def git_commit(cwd: Path) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=cwd,
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.CalledProcessError):
        return None


def run_benchmarks(
    directory: str | os.PathLike | None = None,
    quick: bool = False,
    only: Sequence[str] | None = None,
    timeout_s: float = 3600,
    progress: TextIO | None = None,
) -> dict[str, Any]:
    """Run the scripts (``only``: names without ``.py``) and return the collected record;
    ``progress``: a stream for a line per script (``[3/18] host_path.py …``)."""
    from vqpipe.console import Progress

    bench_dir = find_benchmarks(directory)
    scripts = sorted(p for p in bench_dir.glob("*.py") if not p.name.startswith("_"))
    if only:
        scripts = [p for p in scripts if p.stem in set(only)]
    results = []
    shown = Progress("bench", len(scripts), "scripts", progress, every_s=0, quiet=not progress)
    for i, script in enumerate(scripts, 1):
        shown.step(f"[{i}/{len(scripts)}] {script.name} …")
        cmd = [sys.executable, str(script), "--json"] + (["--quick"] if quick else [])
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, cwd=bench_dir.parent
        )
        entry: dict[str, Any] = {"script": script.name, "command": " ".join(cmd[1:])}
        if proc.returncode != 0:
            entry["error"] = proc.stderr.strip().splitlines()[-1:] or ["failed"]
        else:
            data = _parse_json(proc.stdout)
            entry["records"] = data if isinstance(data, list) else [data]
        results.append(entry)
        shown.advance(1, f"{script.name} " + ("failed" if "error" in entry else "ok"))
    shown.close()
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(bench_dir.parent),
        "machine": machine(),
        "quick": quick,
        "benchmarks": results,
    }


def _ratio(record: dict[str, Any]) -> tuple[str, float] | None:
    for key in ("ratio", "ratio_vs_decode_only"):
        if key in record:
            return key, float(record[key])
    return None


def to_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    where = m.get("gpu") or f"{m['processor']}, {m['cpus']} CPUs"
    lines = [
        f"Benchmarks of commit {report['git_commit']} on {where}, {report['date']}"
        + (" (quick settings)" if report["quick"] else ""),
        "",
        "| script | figure | result | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for entry in report["benchmarks"]:
        if "error" in entry:
            lines.append(f"| {entry['script']} | failed: {entry['error'][0]} | | |")
            continue
        for r in entry["records"]:
            figure = r.get("figure") or r.get("benchmark") or entry["script"]
            result = ""
            if "images_per_s" in r:
                result = (
                    f"{r['images_per_s']:.1f} vs {r.get('baseline_images_per_s', 0):.1f} images/s"
                )
                if r.get("mfu") is not None:
                    result += f", MFU {r['mfu']:.1%}"
            elif "pipeline_images_per_s" in r:
                result = f"{r['pipeline_images_per_s']:.1f} images/s"
            elif "seconds" in r and "target_s" in r:
                result = f"{r['seconds']:.1f} s (target <= {r['target_s']:g} s)"
            elif "cores_per_gpu" in r:
                result = f"{r['cores_per_gpu']:.0f} cores per GPU (projected)"
            elif "projected_images_per_s_per_gpu" in r:
                result = f"{r['projected_images_per_s_per_gpu']:,.0f} images/s per GPU (projected)"
            elif "srcc" in r:
                result = f"SRCC {r['srcc']:.3f} in {r['minutes']} min"
            ratio = _ratio(r)
            shown = f"{ratio[1]:.2f}x" if ratio else ""
            lines.append(f"| {entry['script']} | {figure} | {result} | {shown} |")
    return "\n".join(lines) + "\n"


def write_bench(report: dict[str, Any], out_dir: str | os.PathLike) -> tuple[Path, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    (out / "bench.md").write_text(to_markdown(report))
    return out / "bench.json", out / "bench.md"
