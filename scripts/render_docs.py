"""Regenerate the generated blocks of README.md and docs/*.md from their sources.

A generated block is written between ``<!-- generated: KIND ARGS -->`` and
``<!-- end generated -->``; ``tests/test_docs.py`` fails when a block differs from what this
script writes. Kinds:

- ``bench FILE``: the table of a ``vqpipe bench`` report (``bench.json``), as
  :func:`vqpipe.bench.to_markdown` writes it (the performance tables come from the benchmark
  JSON, never by hand).
- ``records FILE KEY,KEY,...``: a table of the records a benchmark script wrote with
  ``--json`` (a list of dicts), one column per key, numbers to 3 significant digits.
- ``training-keys``: every training key and default, from ``vqpipe/train/config.py``.

    python scripts/render_docs.py           # rewrite the blocks in place
    python scripts/render_docs.py --check   # exit 1 and name the stale blocks
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(
    r"(<!-- generated: (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.S
)


def render(spec: str, root: Path = ROOT) -> str:
    """The Markdown of one block, from its ``KIND ARGS`` spec."""
    kind, *args = spec.split()
    if kind == "bench":
        from vqpipe.bench import to_markdown

        return to_markdown(json.loads((root / args[0]).read_text()))
    if kind == "records":
        return records_table(json.loads((root / args[0]).read_text()), args[1].split(","))
    if kind == "training-keys":
        from vqpipe.train.config import markdown

        return markdown()
    raise ValueError(f"unknown generated block kind {kind!r}")


def records_table(records: list[dict], keys: list[str]) -> str:
    """A Markdown table of ``records``, one row each, the columns ``keys``."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
    lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in records]
    return "\n".join(lines) + "\n"


def regenerate(text: str, root: Path = ROOT) -> str:
    """``text`` with every generated block re-rendered."""
    return BLOCK.sub(lambda m: m.group(1) + render(m.group("spec"), root) + m.group(4), text)


def documents(root: Path = ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only report stale blocks")
    args = parser.parse_args(argv)
    stale = []
    for path in documents():
        text = path.read_text()
        new = regenerate(text)
        if new != text:
            stale.append(path.relative_to(ROOT))
            if not args.check:
                path.write_text(new)
    for path in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {path}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
