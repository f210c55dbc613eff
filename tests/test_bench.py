"""vqpipe bench runs the benchmark scripts and writes bench.json + bench.md."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vqpipe.bench import to_markdown
from vqpipe.cli import main


def test_bench_runs_a_script_and_writes_the_table(tmp_path, capsys):
    code = main(["bench", "--quick", "--only", "thurstone", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    (entry,) = report["benchmarks"]
    assert entry["script"] == "thurstone.py" and entry["records"][0]["ratio"] > 1
    assert report["machine"]["cpus"] >= 1 and report["quick"] is True
    table = (tmp_path / "bench.md").read_text()
    assert "| thurstone.py | thurstone_map |" in table and "x |" in table
    assert table in capsys.readouterr().out


def test_failed_scripts_are_listed_not_hidden():
    report = {
        "date": "d",
        "git_commit": "abc",
        "quick": False,
        "machine": {"processor": "x86_64", "cpus": 2, "gpu": "NVIDIA H200"},
        "benchmarks": [
            {"script": "a.py", "error": ["boom"]},
            {
                "script": "b.py",
                "records": [
                    {
                        "figure": "f",
                        "images_per_s": 10.0,
                        "baseline_images_per_s": 2.0,
                        "ratio": 5.0,
                        "mfu": 0.25,
                    }
                ],
            },
            {
                "script": "learnability.py",
                "records": [{"figure": "g", "srcc": 0.8512, "minutes": 3}],
            },
        ],
    }
    text = to_markdown(report)
    assert "NVIDIA H200" in text and "| a.py | failed: boom |" in text
    assert "10.0 vs 2.0 images/s, MFU 25.0% | 5.00x |" in text
    assert "| learnability.py | g | SRCC 0.851 in 3 min |  |" in text


@pytest.mark.slow
def test_gpu_suite_dry_run_has_every_section_with_finite_numbers(tmp_path):
    """benchmarks/gpu_suite.sh --dry-run on the CPU: every section, FLOPs per image finite and
    > 0 for all three scorers (counted outside inference mode), MFU against the nominal CPU
    peak, GPU busy % null with a reason, and a job with a steady rate."""
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        # the script runs `python`: this interpreter (CI runs the slow tests without activating
        # the venv, so `python` on PATH would be another one)
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    done = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-2000:]
    assert "gpu_suite plan" in done.stderr
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    assert report["dry_run"] is True and report["problems"] == []
    sections = report["sections"]
    assert set(sections) == {"gamma", "qalign", "compare2score", "job"}

    def finite(x):
        return isinstance(x, (int, float)) and math.isfinite(x) and x > 0

    for name in ("gamma", "qalign", "compare2score"):
        s = sections[name]
        assert "error" not in s, s
        for key in ("images_per_s", "flops_per_image", "mfu", "host_path_ms_per_image"):
            assert finite(s[key]), (name, key, s[key])
        assert s["mfu"] < 1 and "nominal CPU peak" in s["peak_source"]
        assert s["gpu_busy_pct"] is None and s["gpu_busy"]["reason"]
        for size in ("1mp", "12mp"):
            assert finite(s["decode_per_core"][size]["decode_preprocess_images_per_s_per_core"])
    job = sections["job"]
    assert "error" not in job, job
    assert job["scored_rows"] == job["images"] and job["errors"] == 0
    assert finite(job["steady_images_per_s"]) and job["gpu_busy_pct"] is None
