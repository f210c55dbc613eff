"""The declared layers (docs/architecture.md) against every import of every module in vqpipe/:
no import from a lower layer to a higher one, no import cycle between modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vqpipe"

KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()
"""Imports left out of the cycle check, each with the change that removes it."""


def declared_layers() -> list[tuple[str, list[str]]]:
    """``(layer, module prefixes)``, lowest first, from the numbered list of
    docs/architecture.md (``N. **layer**: `prefix`, ... — what lives there``)."""
    layers = []
    for line in (ROOT / "docs" / "architecture.md").read_text().splitlines():
        match = re.match(r"\d+\. \*\*(?P<name>[^*]+)\*\*: (?P<prefixes>[^—]+) —", line)
        if match:
            layers.append((match["name"], re.findall(r"`(vqpipe[\w.]*)`", match["prefixes"])))
    return layers


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _under_type_checking(tree: ast.AST) -> set[int]:
    """ids of the nodes under ``if TYPE_CHECKING:`` (imports for type checkers only)."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                skipped.update(id(n) for n in ast.walk(child))
    return skipped


def _known(name: str) -> str | None:
    """The module ``name`` is, or the package it lies in (``vqpipe.x.y.Class`` → ``vqpipe.x.y``)."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name if name in MODULES else None


def imports(module: str, type_checking: bool = False) -> list[tuple[str, int]]:
    """The vqpipe modules ``module`` imports, with the line of each import (function-level
    imports included; those under ``if TYPE_CHECKING:`` only with ``type_checking``)."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = _under_type_checking(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped and not type_checking:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from pkg import sub` imports the module pkg.sub; `from mod import name`, mod
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names
            ]
        else:
            continue
        for target in targets:
            if target.split(".")[0] == "vqpipe" and (known := _known(target)):
                found.append((known, node.lineno))
    return sorted(set(found))


GRAPH = {module: imports(module) for module in MODULES}
"""What each module imports when it runs: the cycle check's graph."""
TYPED_GRAPH = {module: imports(module, type_checking=True) for module in MODULES}
"""With the imports for type checkers too: the layer check's graph."""


def layer_of(module: str, layers: list[tuple[str, list[str]]]) -> int | None:
    """The index of the layer whose longest prefix names ``module``."""
    best, best_len = None, -1
    for index, (_, prefixes) in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def where(module: str, line: int) -> str:
    return f"{MODULES[module].relative_to(ROOT)}:{line}"


def test_the_architecture_page_declares_layers():
    layers = declared_layers()
    assert len(layers) >= 8 and all(prefixes for _, prefixes in layers), layers
    prefixes = [p for _, ps in layers for p in ps]
    assert len(prefixes) == len(set(prefixes)), "a prefix in two layers"


def test_every_module_is_in_a_layer():
    layers = declared_layers()
    assert [m for m in MODULES if layer_of(m, layers) is None] == []


def test_no_import_from_a_lower_layer_to_a_higher_one():
    layers = declared_layers()
    wrong = []
    for module, targets in TYPED_GRAPH.items():
        low = layer_of(module, layers)
        for target, line in targets:
            high = layer_of(target, layers)
            if low is not None and high is not None and high > low:
                wrong.append(
                    f"{where(module, line)}: {module} ({layers[low][0]}) imports {target} "
                    f"({layers[high][0]})"
                )
    assert wrong == [], "\n".join(wrong)


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), or a module
    importing itself."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:  # the package is ~200 modules deep at most: recursion is fine
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target, _ in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1 or any(t == node for t, _ in graph[node]):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    graph = {
        module: [(t, line) for t, line in targets if (module, t) not in KNOWN_CYCLE_EDGES]
        for module, targets in GRAPH.items()
    }
    report = []
    for component in cycles(graph):
        members = set(component)
        edges = [
            f"  {where(module, line)}: imports {target}"
            for module in component
            for target, line in graph[module]
            if target in members
        ]
        report.append(" ↔ ".join(component) + "\n" + "\n".join(edges))
    assert report == [], "\n".join(report)


def test_the_known_exceptions_still_exist():
    """An exception whose import is gone is taken off the list (so it cannot hide a new one)."""
    edges = {(module, target) for module, targets in GRAPH.items() for target, _ in targets}
    assert KNOWN_CYCLE_EDGES - edges == set()


def test_the_checks_can_fail():
    """The cycle finder finds a cycle through three modules; the layer check sees a lower
    layer's import of a higher one."""
    graph = {"a": [("b", 1)], "b": [("c", 2)], "c": [("a", 3)], "d": [("a", 4)]}
    assert cycles(graph) == [["a", "b", "c"]]
    layers = [("low", ["vqpipe.errors"]), ("high", ["vqpipe.cli"])]
    assert layer_of("vqpipe.errors", layers) == 0 and layer_of("vqpipe.cli", layers) == 1
