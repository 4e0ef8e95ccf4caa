"""The shape of the house, kept: layers that import one way, no cycles, modules and functions small enough
to read at once (the refactoring issue's targets, checked on every run rather than once)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gemmacli"
#: schema -> engine (and models beside it) -> jobs -> cli: a module may import its own layer or lower ones.
LAYERS = {"schema": 0, "engine": 1, "models": 1, "jobs": 2, "cli": 3}
MAX_LINES = 500
MAX_COMPLEXITY = 20
COMPLEXITY_EXEMPT = {"gemmacli/models/fuse.py"}  # graph pattern matching, one long walk per pattern


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(path: Path, known: dict[str, Path]) -> set[str]:
    """Modules of the package imported at module level (imports inside functions are late on purpose;
    TYPE_CHECKING blocks never run)."""
    out = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
        out |= {n for n in names if n in known}
    return out


def test_layers_import_one_way_and_nothing_imports_in_a_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    upward = [(m, d) for m, deps in graph.items() for d in deps
              if m.count(".") and d.count(".") and m.split(".")[1] in LAYERS and d.split(".")[1] in LAYERS
              and LAYERS[d.split(".")[1]] > LAYERS[m.split(".")[1]]]
    assert upward == []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            assert state.get(dep) != 1, f"import cycle: {' -> '.join([*path, dep])}"
            if dep not in state:
                visit(dep, [*path, dep])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_no_module_is_over_500_lines() -> None:
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_no_function_is_over_complexity_20() -> None:
    radon = pytest.importorskip("radon.complexity")
    complex_ = []
    for path in PACKAGE.rglob("*.py"):
        relative = str(path.relative_to(PACKAGE.parent))
        if relative in COMPLEXITY_EXEMPT:
            continue
        for block in radon.cc_visit(path.read_text(encoding="utf-8")):
            if block.complexity > MAX_COMPLEXITY:
                complex_.append(f"{relative}:{block.lineno} {block.name} ({block.complexity})")
    assert complex_ == []
