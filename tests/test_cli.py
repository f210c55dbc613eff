"""The command line as a user types it: fast, torch-free help with defaults and examples,
`vqpipe scorers`, --quiet / --verbose, the status line, and Ray's logs kept off the console."""

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vqpipe.cli import build_parser, main
from vqpipe.console import StatusLine, format_progress
from vqpipe.pipeline.runner import job_progress

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["demo", "score", "filter", "eval", "train", "bench", "scorers", "version"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_help_imports_no_torch_or_ray():
    """Every `--help` in a fresh interpreter, with what it imported checked afterwards."""
    code = f"""
import contextlib, io, sys
from vqpipe.cli import main
for argv in [["--help"]] + [[c, "--help"] for c in {COMMANDS!r}]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main(argv)
        except SystemExit as exc:
            assert exc.code == 0, (argv, exc.code)
    assert "examples:" in out.getvalue(), argv
heavy = sorted(m for m in ("torch", "ray", "pandas", "pyarrow", "transformers") if m in sys.modules)
assert not heavy, heavy
print("ok")
"""
    proc = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_option_has_help_with_its_default():
    parser = build_parser()
    commands = {"vqpipe": parser, **_subparsers(parser)}
    assert set(COMMANDS) <= set(commands)
    missing = []
    for name, sub in commands.items():
        assert sub.epilog and "examples:" in sub.epilog, name
        assert sub.formatter_class is argparse.RawDescriptionHelpFormatter, name
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            text = action.help or ""
            if not text:
                missing.append(f"{name} {action.dest}: no help")
            takes_value = action.nargs != 0
            optional = bool(action.option_strings)
            if takes_value and optional and not action.required and "default" not in text:
                missing.append(f"{name} {action.option_strings[0]}: no default in help")
    assert not missing, missing


def test_every_command_is_a_module_of_the_registry_that_imports_no_other_command():
    """`vqpipe --help` lists the modules of `COMMANDS` in its order; a command module imports
    the shared options and runtime, never `app` or another command (no cycles)."""
    import ast

    from vqpipe.cli import COMMANDS

    assert list(_subparsers(build_parser())) == list(COMMANDS)
    package = ROOT / "vqpipe" / "cli"
    shared = {"__init__", "__main__", "app", "options", "runtime"}
    assert {p.stem for p in package.glob("*.py")} - shared == set(COMMANDS)
    allowed = ("vqpipe.cli.options", "vqpipe.cli.runtime")
    found = []
    for name in COMMANDS:
        for node in ast.walk(ast.parse((package / f"{name}.py").read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                names = ["."]
            elif isinstance(node, ast.ImportFrom):  # `from vqpipe import cli` too
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            cli = [
                n for n in names if n.startswith(("vqpipe.cli", ".")) and not n.startswith(allowed)
            ]
            found += [f"{name}: {n}" for n in cli]
    assert found == []


def test_help_text_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    out = capsys.readouterr().out
    flat = " ".join(out.split())  # help lines wrap anywhere
    assert "(default: 64)" in flat and "(default: 50,000 for a listing" in flat
    assert "examples:" in out
    assert "vqpipe score s3://lake/images/" in out  # the epilog keeps its line breaks


def test_scorers_table(capsys):
    assert main(["scorers"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0]
    for column in ("NAME", "MEDIA", "SCORES", "DEFAULT CHECKPOINT", "DESCRIPTION"):
        assert column in header
    rows = {line.split()[0]: line for line in lines[1:] if line.strip() and "`" not in line}
    assert {"gamma", "qalign", "compare2score", "brightness"} <= set(rows)
    gamma = rows["gamma"]
    assert "bundled demo" in gamma and "0..1" in gamma and "image" in gamma
    assert "q-future/one-align" in rows["qalign"] and "image,video" in rows["qalign"]
    # aligned: each column starts at the header's offset in every row
    for column in ("MEDIA", "SCORES", "DEFAULT CHECKPOINT", "DESCRIPTION"):
        at = header.index(column)
        for line in rows.values():
            assert line[at - 2 : at] == "  " and line[at] != " ", (column, line)


def test_scorers_gamma_lists_its_keys(capsys):
    assert main(["scorers", "gamma"]) == 0
    out = capsys.readouterr().out
    keys = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "natural-quality" in keys["scene"]  # from the constructor's signature
    assert "false" in keys["compile"] and "bundled demo" in keys["checkpoint"]
    for pool_key in ("batch_size", "num_gpus", "num_cpus", "actors", "column"):
        assert pool_key in keys
    assert "64" in keys["batch_size"]
    assert "model" not in keys and "self" not in keys


def test_scorers_unknown_name_is_one_line(capsys):
    assert main(["scorers", "gama"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "did you mean 'gamma'" in err


@pytest.mark.parametrize(
    ("argv", "quiet", "verbose"),
    [
        (["score", "in", "--out", "o"], False, False),
        (["--quiet", "score", "in", "--out", "o"], True, False),
        (["score", "in", "--out", "o", "-q"], True, False),
        (["-v", "score", "in", "--out", "o"], False, True),
        (["train", "--method", "gamma", "--config", "c.yaml", "--verbose"], False, True),
        (["demo", "--quiet"], True, False),
    ],
)
def test_quiet_and_verbose_global_or_on_the_command(argv, quiet, verbose):
    args = build_parser().parse_args(argv)
    assert (args.quiet, args.verbose) == (quiet, verbose)


def test_quiet_and_verbose_together_is_an_error(capsys):
    assert main(["-q", "score", "in", "--out", "o", "-v"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_eta_from_the_rate_after_the_first_part():
    written = [{"rows": 100, "errors": 0}]
    first = job_progress(written, 1000, elapsed=40.0)  # 40 s of start-up before the first part
    assert first["eta_s"] is None and "ETA after warm-up" in format_progress(first)
    written.append({"rows": 100, "errors": 2})
    second = job_progress(written, 1000, elapsed=50.0)  # 100 rows in 10 s since then
    assert second["scoring_items_per_s"] == pytest.approx(10.0)
    assert second["eta_s"] == pytest.approx(80.0)  # 800 left at 10/s, not at 200/50 = 4/s
    assert second["items_per_s"] == pytest.approx(4.0)
    line = format_progress(second)
    assert line == "scored 200/1000, 2 errors, 10.0 items/s, ETA 80 s"
    done = job_progress([*written, {"rows": 800, "errors": 0}], 1000, elapsed=130.0)
    assert format_progress(done).startswith("scored 1000/1000, 2 errors")


def test_status_line_in_place_on_a_tty_and_lines_otherwise():
    tty = io.StringIO()
    with StatusLine(tty, tty=True) as status:
        status.update("starting")
        status.notice("a notice")
        status.update("scored 1/2")
    text = tty.getvalue()
    assert "\r\033[Kvqpipe: scored 1/2" in text and "vqpipe: a notice\n" in text
    assert text.endswith("\n")

    log = io.StringIO()
    status = StatusLine(log, tty=False, every_s=3600)
    status.update("first", force=True)
    status.update("skipped: within every_s")
    status.update("forced", force=True)
    status.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in log.getvalue()
    assert lines[0].startswith("vqpipe: first") and lines[1].startswith("vqpipe: forced")

    quiet = io.StringIO()
    with StatusLine(quiet, verbosity=0, tty=True) as status:
        status.update("x", force=True)
        status.notice("y")
    assert quiet.getvalue() == ""


RAY_PATTERNS = ("INFO", "WARNING", "core_worker", "logging_progress", "streaming_executor")


def _score(tmp_path: Path, out: str, *flags: str) -> subprocess.CompletedProcess:
    images = tmp_path / "corpus" / "images"
    if not images.exists():
        from vqpipe.data import make_image_dataset

        make_image_dataset(tmp_path / "corpus", n_contents=1, seed=3, size=(64, 48))
    argv = ["score", str(images), "--out", str(tmp_path / out), "--limit", "6"]
    argv += ["--scorer", "brightness"]
    return subprocess.run(
        [sys.executable, "-m", "vqpipe.cli", *argv, *flags],
        env={**_env(), "RAY_DISABLE_USAGE_STATS": "1"},
        capture_output=True,
        text=True,
        timeout=400,
    )


@pytest.mark.slow
def test_score_console_without_ray_logs_unless_verbose(tmp_path):
    quiet = _score(tmp_path, "a", "--json")  # the summary as JSON on stdout (else a table)
    assert quiet.returncode == 0, quiet.stderr
    assert json.loads(quiet.stdout)["scored_rows"] == 6
    lines = quiet.stderr.splitlines()
    assert lines and all(line.startswith("vqpipe: ") for line in lines), quiet.stderr
    assert not [p for p in RAY_PATTERNS if p in quiet.stderr], quiet.stderr
    assert any("scored 6/6, 0 errors" in line for line in lines)  # the plan's total: --limit

    verbose = _score(tmp_path, "b", "--verbose")
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "INFO" in verbose.stderr and "streaming_executor" in verbose.stderr
    assert "used up to" not in verbose.stderr  # no memory warning about our decode request

    silent = _score(tmp_path, "a", "--quiet")  # a resume with nothing to do, quiet
    assert silent.returncode == 0 and silent.stderr == "", silent.stderr


def test_small_job_records_in_the_bench_table():
    from vqpipe.bench import to_markdown

    record = {
        "benchmark": "small_job",
        "figure": "small job: 100 images, Gamma, local Ray",
        "seconds": 50.0,
        "target_s": 25.0,
        "ratio": 0.5,
    }
    report = {
        "date": "d",
        "git_commit": "abc",
        "quick": False,
        "machine": {"processor": "x86_64", "cpus": 2},
        "benchmarks": [{"script": "small_job.py", "records": [record]}],
    }
    row = "| small_job.py | small job: 100 images, Gamma, local Ray | 50.0 s (target <= 25 s) |"
    assert row + " 0.50x |" in to_markdown(report)


def test_fd2_output_goes_to_a_file_kept_only_on_failure(capfd):
    from vqpipe.console import NORMAL, VERBOSE, ray_output_kept_out

    with ray_output_kept_out(NORMAL, "test") as path:
        os.write(2, b"[E core_worker.cc:1] native noise\n")
    assert "native noise" not in capfd.readouterr().err and not os.path.exists(path)

    with pytest.raises(RuntimeError), ray_output_kept_out(NORMAL, "test") as path:
        os.write(2, b"INFO ray noise\n")
        raise RuntimeError("job failed")
    err = capfd.readouterr().err
    assert "ray noise" not in err and f"Ray's output of this run: {path}" in err
    assert "INFO ray noise" in Path(path).read_text()
    os.remove(path)

    with ray_output_kept_out(VERBOSE, "test") as path:
        os.write(2, b"shown\n")
    assert path is None and "shown" in capfd.readouterr().err
