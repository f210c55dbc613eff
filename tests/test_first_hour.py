"""What a new user meets in the first hour: usage mistakes as one line with a "did you mean"
(exit 2, nothing of argparse's doubled prefix), Ctrl-C as one line (exit 130, no traceback,
no half-written output), and the Python API's names, warnings and messages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

import vqpipe
from vqpipe.cli import main
from vqpipe.errors import DemoCheckpointWarning

ROOT = Path(__file__).resolve().parents[1]


def _one_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("vqpipe: error: "), err
    assert "vqpipe: error: vqpipe" not in err[0], err  # argparse's prefix is not repeated
    return err[0]


def test_misspelled_command_suggests_the_right_one(capsys):
    line = _one_error(capsys, ["scroe", "./images"])
    assert "invalid choice: 'scroe'" in line
    assert "did you mean 'score'?" in line


def test_misspelled_option_is_named_before_required_ones(capsys, tmp_path):
    line = _one_error(capsys, ["score", str(tmp_path), "--ouput", str(tmp_path / "q")])
    assert "unrecognized arguments: --ouput" in line
    assert "did you mean --out?" in line
    assert "required" not in line
    assert line.startswith("vqpipe: error: score: "), line


def test_unknown_option_of_a_valid_command_and_a_bad_choice(capsys, tmp_path):
    line = _one_error(capsys, ["filter", str(tmp_path), "--out", "k.parquet", "--wehre", "x > 1"])
    assert "unrecognized arguments: --wehre" in line and "did you mean --where?" in line
    line = _one_error(capsys, ["pairs", "t", "--group", "g", "--score", "s", "--out", "o",
                               "--strategy", "bset-worst"])  # fmt: skip
    assert "did you mean 'best-worst'?" in line
    line = _one_error(capsys, ["score", str(tmp_path), "--out", "q", "--zzz"])
    assert "unrecognized arguments: --zzz" in line and "did you mean" not in line


def test_a_missing_required_option_is_still_reported(capsys):
    line = _one_error(capsys, ["pairs", "t", "--group", "g", "--score", "s"])
    assert "the following arguments are required: --out" in line


def test_abbreviations_and_run_together_flags_are_not_unknown(capsys, tmp_path):
    # `--ou` resolves to --out, `-qv` is two flags: the parser goes on to the input check
    line = _one_error(capsys, ["score", str(tmp_path / "none"), "--ou", "q", "-qv"])
    assert "input not found" in line or "exclude each other" in line, line


SLOW_PAIRS = """
import os, sys, time
from vqpipe.rewards import pairs

def run(self):
    os.makedirs(sys.argv[-1] + "/part-staging", exist_ok=True)  # what a write leaves half-way
    print("STARTED", flush=True)
    time.sleep(600)

pairs.PairsJob.run = run
from vqpipe.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_ctrl_c_in_pairs_is_one_line_and_leaves_no_output(tmp_path):
    """SIGINT to `vqpipe pairs` while it writes (on its own local Ray): one line, exit 130,
    no traceback, and the --out folder it created is gone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = tmp_path / "quality"
    table.mkdir()
    pq.write_table(
        pa.table({"uri": ["a", "b"], "prompt": ["p", "p"], "gamma_score": [0.1, 0.9]}),
        table / "part-0.parquet",
    )
    out = tmp_path / "pairs"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    argv = ["pairs", str(table), "--group", "prompt", "--score", "gamma_score", "--out", str(out)]
    job = subprocess.Popen(
        [sys.executable, "-c", SLOW_PAIRS, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert job.stdout.readline().strip() == "STARTED", job.stderr.read()[-3000:]
        assert out.exists()
        time.sleep(0.5)
        os.killpg(job.pid, signal.SIGINT)  # the terminal sends it to the whole group
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
    assert job.returncode == 130, err[-3000:]
    lines = err.strip().splitlines()
    progress = [line for line in lines if line.startswith("vqpipe: pairs: ")]  # before ^C
    assert [line for line in lines if line not in progress] == ["vqpipe: interrupted"], err
    assert "Traceback" not in err
    assert not out.exists()


def test_public_api_is_listed_and_import_stays_light():
    names = dir(vqpipe)
    for name in ("create_scorer", "list_scorers", "Scorer", "read_quality_table", "__version__"):
        assert name in names and name in vqpipe.__all__
    assert "Any" not in names and "annotations" not in names
    code = "import sys, vqpipe; dir(vqpipe); print('torch' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr[-2000:]


def test_unknown_scorer_suggests_the_closest_name():
    with pytest.raises(vqpipe.UnknownScorerError, match="did you mean 'gamma'"):
        vqpipe.create_scorer("gama")


def test_unknown_keyword_is_named_with_the_accepted_ones():
    with pytest.raises(TypeError) as info:
        vqpipe.create_scorer("gamma", scen="natural-quality")
    message = str(info.value)
    assert "'scen'" in message and "did you mean 'scene'" in message
    assert "exact_preprocessing" in message  # the accepted keywords are listed


def test_lower_better_and_the_demo_checkpoint_warning():
    with pytest.warns(DemoCheckpointWarning, match="demo"):
        scorer = vqpipe.create_scorer("gamma", device="cpu")
    assert scorer.higher_better and scorer.lower_better is False
    brightness = vqpipe.create_scorer("brightness", device="cpu")
    assert brightness.lower_better is (not brightness.higher_better)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DemoCheckpointWarning)  # a checkpoint of one's own: none
        vqpipe.create_scorer("gamma", device="cpu", model=scorer.model)


def test_after_ctrl_c_other_threads_print_to_stderr(capsys):
    """Ray's driver prints the raylet's `(raylet) … killed` lines to stdout from a thread of
    its own: once the job is interrupted they go to stderr (Ray's log file on the CLI)."""
    import threading

    from vqpipe.cli import _sigterm_interrupts

    with pytest.raises(KeyboardInterrupt), _sigterm_interrupts():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)  # the handler raises here
        finally:
            thread = threading.Thread(target=print, args=("(raylet) worker killed",))
            thread.start()
            thread.join()
            print("main thread")
    captured = capsys.readouterr()
    assert captured.out == "main thread\n"
    assert captured.err == "(raylet) worker killed\n"
    assert sys.stdout.__class__.__name__ != "_MainThreadOnly"  # restored
