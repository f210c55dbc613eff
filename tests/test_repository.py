"""The repository contract: two README set-up commands, CI runs them as written, lint clean."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def setup_commands() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    return dict(re.findall(r"<!-- setup:(\w) -->\n```bash\n(.+?)\n```", text))


def test_readme_has_exactly_two_setup_commands_at_the_top():
    commands = setup_commands()
    assert set(commands) == {"a", "b"}
    text = (ROOT / "README.md").read_text()
    setup = text.index("## Set up")
    assert text.index("```") > setup  # no code block before the set-up section
    assert text.count("<!-- setup:") == 2
    for command in commands.values():
        assert "\n" not in command
        # torch (exact build) is installed before anything that depends on it
        assert command.index('"torch===2.13.0"') < command.index("pip install -e")
    assert commands["a"].endswith("vqpipe demo")
    assert "pytest" in commands["b"] and "[dev" in commands["b"]


def test_ci_script_runs_the_readme_commands():
    script = ROOT / ".ci" / "run"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -euo pipefail" in text
    assert "setup:" in text and "README.md" in text
    extracted = subprocess.run(
        ["bash", "-c", f"source <(sed -n '/^readme_command()/,/^}}/p' {script}); readme_command b"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert extracted == setup_commands()["b"]


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff not installed")
def test_ruff_clean():
    for args in (["check", "."], ["format", "--check", "."]):
        result = subprocess.run(["ruff", *args], cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def test_the_storage_layer_imports_nothing_of_the_pipeline_or_the_commands():
    """vqpipe.storage sits under everything that reads or writes a quality table: it may use
    the filesystem helpers, the column names and the error classes, nothing above them
    (function-level imports included)."""
    import ast

    allowed = ("vqpipe.storage", "vqpipe.io.fs", "vqpipe.schema", "vqpipe.errors")
    found = []
    for path in sorted((ROOT / "vqpipe" / "storage").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            found += [
                f"{path.name}: {n}"
                for n in names
                if n.startswith("vqpipe") and not n.startswith(allowed)
            ]
    assert found == []


def test_a_long_module_says_why_it_is_one_module():
    """Modules stay small (~450 lines); one that is longer says why at its top."""
    import ast

    long = []
    for path in sorted((ROOT / "vqpipe").rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > 480:
            doc = ast.get_docstring(ast.parse(text)) or ""
            if "Why one module" not in doc:
                long.append(str(path.relative_to(ROOT)))
    assert long == [], long
