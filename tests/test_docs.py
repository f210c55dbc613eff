"""README and docs/ as a map that stays true: every command in them parses as the program
that runs it would parse it, every link and anchor resolves, generated tables equal their
sources, README stays short and has a table of contents, no development-log language."""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 700

# Programs we do not own: their commands are not run here, but every repository path they
# name must exist.
EXTERNAL = {
    ".",
    "aws",
    "cd",
    "curl",
    "docker",
    "duckdb",
    "echo",
    "eksctl",
    "export",
    "git",
    "helm",
    "hf",
    "img2dataset",
    "kubectl",
    "pip",
    "python3",
    "sed",
    "source",
}
FENCED = r"^( *)```.*?^\1```"
METADATA_KEYS = {"vqpipe.job", "vqpipe.filter"}  # Parquet key-value metadata, not Python
REPO_DIRS = ("infra/", "configs/", "benchmarks/", "pipelines/", "scripts/", "docs/", "notebooks/")


def _render_docs():
    spec = importlib.util.spec_from_file_location("render_docs", ROOT / "scripts/render_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _blocks(text: str) -> list[tuple[str, str]]:
    """``(language, body)`` of every fenced code block."""
    found = re.findall(r"^( *)```(\w*)\n(.*?)^\1```", text, re.S | re.M)
    return [(lang, textwrap.dedent(body)) for _, lang, body in found]


def _commands(body: str) -> list[list[str]]:
    """The simple commands of a shell block: continuations joined, comments dropped, split at
    ``&&``, ``||``, ``|``, ``;`` and ``&``; leading ``VAR=value`` assignments dropped."""
    commands: list[list[str]] = []
    pending = ""
    for line in body.replace("\\\n", " ").splitlines():
        pending += line
        try:
            shlex.split(pending, comments=True)
        except ValueError:  # a quoted string goes on to the next line
            pending += "\n"
            continue
        lexer = shlex.shlex(pending, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        lexer.commenters = ""  # as in bash, "#" starts a comment only at a word's start
        pending = ""
        current: list[str] = []
        for token in lexer:
            if token.startswith("#"):
                break
            if token and set(token) <= set(";&|"):
                commands.append(current)
                current = []
            else:
                current.append(token)
        commands.append(current)
    out = []
    for argv in commands:
        while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):
            argv = argv[1:]
        if argv:
            out.append(argv)
    return out


def _all_commands() -> list[tuple[str, list[str], bool]]:
    """Every command of the shell blocks, and every inline code span that is a command
    (starts with ``vqpipe``, ``python`` or ``bash`` and is not cut short with an ellipsis)."""
    found = []
    for path in DOCS:
        text = path.read_text()
        for lang, body in _blocks(text):
            if lang in ("bash", "sh", "shell"):
                found += [(path.name, argv, False) for argv in _commands(body)]
        prose = re.sub(FENCED, "", text, flags=re.S | re.M)
        for span in re.findall(r"`([^`]+)`", prose.replace("\n", " ")):
            if re.match(r"(vqpipe|python|bash) ", span) and not re.search(r"…|\.\.\.| \| ", span):
                found += [(path.name, argv, True) for argv in _commands(span)]
    return found


def _python_target(argv: list[str]) -> list[str] | None:
    """``[script or -m module, *args]`` of a python command, ``ray job submit -- python ...``
    included; None for anything else."""
    if argv[:3] == ["ray", "job", "submit"] and "--" in argv:
        argv = argv[argv.index("--") + 1 :]
    if argv and argv[0] == "python":
        return argv[1:]
    return None


def test_readme_is_a_short_map_with_a_table_of_contents():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    contents = text.split("## Contents", 1)[1].split("\n## ", 1)[0]
    anchors = re.findall(r"\]\(#([^)]+)\)", contents)
    headings = {_slug(h) for h in re.findall(r"^#{2,4} (.+)$", text, re.M)}
    assert len(anchors) >= 10 and set(anchors) <= headings, set(anchors) - headings
    # the real-weights quickstart comes right after the set-up commands
    assert text.index("## Set up") < text.index("## Real weights") < text.index("## Status")
    for hub_id in ("q-future/one-align", "q-future/Compare2Score", "gamma_weight.pth"):
        assert hub_id in text.split("## Status")[0]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    heading = re.sub(r"`", "", heading.strip().lower())
    heading = re.sub(r"[^\w\- ]", "", heading)
    return heading.replace(" ", "-")


def test_every_link_and_anchor_resolves():
    broken = []
    for path in DOCS:
        text = re.sub(FENCED, "", path.read_text(), flags=re.S | re.M)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            file, _, anchor = target.partition("#")
            where = (path.parent / file).resolve() if file else path
            if not where.exists():
                broken.append(f"{path.name}: {target}")
                continue
            if anchor and where.suffix == ".md":
                headings = {_slug(h) for h in re.findall(r"^#+ (.+)$", where.read_text(), re.M)}
                if anchor not in headings:
                    broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_no_development_log_language():
    pattern = re.compile(r"\b(issue|session) \d+|filled by|next issues?\b", re.I)
    found = [
        f"{path.name}: {m.group(0)}" for path in DOCS for m in pattern.finditer(path.read_text())
    ]
    assert not found, "\n".join(found)


def test_generated_blocks_equal_their_sources():
    render_docs = _render_docs()
    blocks = 0
    for path in DOCS:
        text = path.read_text()
        blocks += len(render_docs.BLOCK.findall(text))
        assert render_docs.regenerate(text) == text, f"{path.name}: run scripts/render_docs.py"
    assert blocks >= 1
    assert "<!-- generated: bench " in (ROOT / "README.md").read_text()


def test_python_blocks_are_python():
    for path in DOCS:
        for lang, body in _blocks(path.read_text()):
            if lang == "python":
                ast.parse(body, filename=path.name)


def _options(parser) -> dict[str, object]:
    """``{subcommand: its parser}`` of an argparse parser."""
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_vqpipe_command_parses():
    """A command in a code block parses whole; a command quoted inline in the prose may be a
    fragment, so its subcommand and every option it names must exist."""
    from vqpipe.cli import build_parser
    from vqpipe.errors import UserError

    failures = []
    commands = [(n, argv, inline) for n, argv, inline in _all_commands() if argv[0] == "vqpipe"]
    assert len(commands) >= 40
    top = build_parser()
    subcommands = _options(top)
    for name, argv, inline in commands:
        where = f"{name}: {shlex.join(argv)}"
        if inline:
            sub = next((a for a in argv[1:] if not a.startswith("-")), None)
            if sub is not None and sub not in subcommands:
                failures.append(where)
                continue
            known = set(top._option_string_actions)
            if sub is not None:
                known |= set(subcommands[sub]._option_string_actions)
            flags = [a.split("=", 1)[0] for a in argv[1:] if a.startswith("-")]
            failures += [f"{where} ({flag})" for flag in flags if flag not in known]
            continue
        try:
            build_parser().parse_args(argv[1:])
        except SystemExit as exc:
            if exc.code != 0:
                failures.append(where)
        except UserError as exc:
            failures.append(f"{where}: {exc}")
    assert not failures, "\n".join(failures)


# One interpreter parses every python command: argparse is stopped right after a successful
# parse, so scripts never run; a script that never parses its arguments is an error.
_PARSE_ONLY = r"""
import argparse, json, os, runpy, sys
class Parsed(Exception):
    pass
real = argparse.ArgumentParser.parse_known_args
def parse_known_args(self, *a, **k):
    result = real(self, *a, **k)
    raise Parsed()
argparse.ArgumentParser.parse_known_args = parse_known_args
failures = []
for target in json.loads(sys.argv[1]):
    sys.argv = list(target)
    try:
        if target[0] == "-m":
            sys.argv = target[1:]
            runpy.run_module(target[1], run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, os.path.dirname(os.path.abspath(target[0])))
            runpy.run_path(target[0], run_name="__main__")
        failures.append(" ".join(target) + ": never parsed its arguments")
    except Parsed:
        pass
    except SystemExit as exc:
        if exc.code not in (0, None):
            failures.append(" ".join(target) + f": exit {exc.code}")
print(json.dumps(failures))
"""


def test_every_python_command_parses():
    targets = []
    for _, argv, _ in _all_commands():
        target = _python_target(argv)
        if target and target[:2] != ["-m", "pytest"]:
            if target[0] != "-m":
                assert (ROOT / target[0]).is_file(), target[0]
            targets.append(target)
    assert len(targets) >= 5
    unique = [list(t) for t in dict.fromkeys(tuple(t) for t in targets)]
    result = subprocess.run(
        [sys.executable, "-c", _PARSE_ONLY, json.dumps(unique)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


def test_every_other_command_is_a_known_program_with_paths_that_exist():
    unknown, missing = [], []
    for name, argv, _ in _all_commands():
        program = argv[0]
        if program in ("vqpipe", "python") or _python_target(argv) is not None:
            continue
        if program == "ray":
            pass  # `ray up/down/dashboard/start`: paths checked below
        elif program == "bash":
            if not (ROOT / argv[1]).is_file():
                missing.append(f"{name}: {argv[1]}")
            continue
        elif program not in EXTERNAL:
            unknown.append(f"{name}: {shlex.join(argv)}")
            continue
        for token in argv[1:]:
            if token.startswith(REPO_DIRS) and not (ROOT / token.rstrip(".,;")).exists():
                missing.append(f"{name}: {token}")
    assert not unknown and not missing, "\n".join(unknown + missing)


def _named_code() -> list[tuple[str, str]]:
    """``(document, name)`` for every inline code span that names a repository path or a
    dotted ``vqpipe.`` object."""
    found = []
    for path in DOCS:
        prose = re.sub(FENCED, "", path.read_text(), flags=re.S | re.M)
        for span in re.findall(r"`([^`\n]+)`", prose):
            name = re.match(r"[\w./-]+", span)
            if name and re.match(r"(vqpipe|tests|benchmarks|scripts|pipelines|configs)[./]", span):
                if name.group(0) in METADATA_KEYS:
                    continue
                found.append((path.name, name.group(0).rstrip(".")))
    return found


def test_every_path_and_python_name_in_the_docs_exists():
    import importlib

    missing = []
    names = _named_code()
    assert len(names) >= 50
    for doc, name in names:
        if "/" in name:
            if not (ROOT / name).exists() and not list(ROOT.glob(name)):
                missing.append(f"{doc}: {name}")
            continue
        parts = name.split(".")
        for cut in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:cut]))
            except ImportError:
                continue
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                missing.append(f"{doc}: {name}")
            break
        else:
            missing.append(f"{doc}: {name}")
    assert not missing, "\n".join(missing)
