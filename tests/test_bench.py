"""vqpipe bench runs the benchmark scripts and writes bench.json + bench.md."""

import json

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
