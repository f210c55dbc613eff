"""The fixed cost of a job with nothing to do: a `vqpipe score` resume that finds every input
written imports no torch, open_clip or Ray (checked in a fresh interpreter through the CLI),
while user mistakes still fail in one line before Ray starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.lake_data import image_bytes, write_shard
from vqpipe.cli import main

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "open_clip", "torchvision", "transformers", "ray")

CHILD = """
import json, sys
from vqpipe.cli import main
code = main({argv!r})
print("FIXED_COST " + json.dumps(
    {{"code": code, "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}
))
"""


def _fresh_cli(argv: list[str]) -> tuple[dict, subprocess.CompletedProcess]:
    """`vqpipe.cli.main(argv)` in a new interpreter: its exit code, the heavy modules it
    imported, and the process (for its stderr)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    code = CHILD.format(argv=argv, heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("FIXED_COST ")]
    assert lines, proc.stderr[-3000:]
    return json.loads(lines[-1].removeprefix("FIXED_COST ")), proc


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _pngs(root: Path, n: int = 3) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (36, 44, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _nested(root: Path) -> Path:
    """Images at three depths: the top level, two subfolders, one of them with a subfolder."""
    _pngs(root, n=1)
    for sub in ("a", "b", "b/c"):
        _pngs(root / sub, n=2)
    return root


def _shard(root: Path, n: int = 3) -> Path:
    samples = [(f"{i:06d}", {"png": image_bytes(i, "PNG")}) for i in range(n)]
    return write_shard(root / "shard-000000.tar", samples)


@pytest.mark.parametrize(
    ("corpus", "scorer"),
    [
        ("pngs", "gamma:device=cpu"),
        ("webdataset", "gamma:device=cpu"),
        ("pngs", "brightness"),
        ("nested", "brightness"),
    ],
)
def test_resume_with_nothing_to_do_imports_no_torch_or_ray(ray_local, tmp_path, corpus, scorer):
    """Nested folders too: the driver lists the subfolders as the listing tasks would."""
    make = {"pngs": _pngs, "webdataset": _shard, "nested": _nested}[corpus]
    source = make(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["score", str(source), "--out", str(out), "--scorer", scorer, "--quiet", "--json"]
    assert main(argv) == 0  # the first run scores (on the session's Ray)
    before = _files(out)
    assert any(name.endswith(".parquet") for name in before), before

    result, proc = _fresh_cli(argv)

    assert result["code"] == 0, proc.stderr[-3000:]
    assert result["heavy"] == [], result  # no torch / open_clip / Ray for nothing to do
    summary = json.loads(proc.stdout.split("FIXED_COST ")[0])
    assert summary["scored_rows"] == 0, summary
    if corpus == "nested":
        assert summary["already_done"] == 7, summary
    after = _files(out)
    new = {k: v for k, v in after.items() if before.get(k) != v}
    assert set(new) <= {"_job.json"}, new  # only the job record is rewritten
    assert set(after) == set(before)


def test_wrong_gamma_options_fail_in_one_line_before_ray(tmp_path):
    source = _pngs(tmp_path / "in", n=1)
    notes = tmp_path / "notes.safetensors"
    notes.write_text("these are not weights")
    for scorer, expected in (
        ("gamma:scenes=face-quality", "did you mean 'scene'"),
        ("gamma:scene=moon", "unknown Gamma scene"),
        (f"gamma:checkpoint={notes}", "not a safetensors"),
    ):
        out = tmp_path / "out"
        argv = ["score", str(source), "--out", str(out), "--scorer", scorer]
        result, proc = _fresh_cli(argv)
        err = proc.stderr.strip().splitlines()
        assert result["code"] == 2, (scorer, proc.stderr)
        assert len(err) == 1 and err[0].startswith("vqpipe: error: "), err
        assert expected in err[0], err
        assert "ray" not in result["heavy"], result  # refused before Ray started
        assert not out.exists()


def test_scorer_classes_import_no_torch():
    """What the driver reads of every registered scorer — its class, version, checkpoints,
    option checks and constructor options — loads no model code."""
    code = f"""
import sys
from vqpipe.pipeline.validate import scorer_options
from vqpipe.scoring import get_scorer_spec, list_scorers
for name in list_scorers():
    cls = get_scorer_spec(name).load()
    cls.check_options()
    print(name, cls.version, cls.default_checkpoint(), cls.bundled_checkpoint(), cls.score_range,
          cls.prob_labels, sorted(scorer_options(cls)))
print("HEAVY", sorted(m for m in {HEAVY!r} if m in sys.modules))
"""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert {line.split()[0] for line in lines[:-1]} >= {"gamma", "qalign", "compare2score"}
    assert lines[-1] == "HEAVY []", lines[-1]


WORKER_HEAVY = ("torch", "open_clip", "torchvision", "transformers", "pandas")


def test_numpy_scorer_actor_imports_no_torch():
    """A brightness scorer (numpy only) starts without torch, and the stages' module without
    pandas: its device and dtype are recorded as a torch scorer's on the CPU would be ("cpu",
    "float32"), from strings."""
    code = f"""
import json, sys
from vqpipe.pipeline.config import ScorerOptions
from vqpipe.pipeline.score_stage import ScoreStage
from vqpipe.scoring import create_scorer
stage = ScoreStage(ScorerOptions("brightness"))
meta = create_scorer("brightness", device="cpu").metadata()
print(json.dumps({{"runtime": json.loads(stage.runtime), "device": meta["device"],
                  "dtype": meta["dtype"], "heavy": sorted(m for m in {WORKER_HEAVY!r}
                  if m in sys.modules)}}))
"""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.splitlines()[-1])
    assert facts["heavy"] == [], facts
    assert (facts["device"], facts["dtype"]) == ("cpu", "float32")
    assert facts["runtime"]["device"] == "cpu" and facts["runtime"]["dtype"] == "float32"


def test_nested_resume_scores_a_file_added_in_a_subfolder(ray_local, tmp_path):
    """The driver's check stops at the first input left: a new file deep in the tree is
    scored by the resume (on Ray), and only it."""
    source = _nested(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["score", str(source), "--out", str(out), "--scorer", "brightness", "--quiet", "--json"]
    assert main(argv) == 0
    Image.new("RGB", (20, 20), (200, 10, 10)).save(source / "b" / "c" / "new.png")

    result, proc = _fresh_cli(argv)

    assert result["code"] == 0, proc.stderr[-3000:]
    assert "ray" in result["heavy"]
    summary = json.loads(proc.stdout.split("FIXED_COST ")[0])
    assert summary["scored_rows"] == 1, summary
