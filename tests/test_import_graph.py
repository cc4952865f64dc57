"""The core's import graph: no cycles, and the engine never imports the command layer.

The graph is read from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` of a ``tracer_cli`` module, at module level and inside functions (a deferred
import is still a dependency), ``TYPE_CHECKING`` blocks included. ``from pkg import name`` counts
as an import of ``pkg.name`` when that is a module, else of ``pkg``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import tracer_cli

ROOT = Path(tracer_cli.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path) -> set[str]:
    """Dotted names ``module`` imports (absolute; relative imports resolved)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else \
                    module.split(".")[:-1]
                package = package[:len(package) - node.level + 1]
                base = ".".join([*package, *([base] if base else [])])
            for alias in node.names:
                names.add(f"{base}.{alias.name}")  # owner() falls back to ``base``
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the ``tracer_cli`` modules it imports."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in modules.items():
        targets = {owner(name) for name in _imported(module, path)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_deferred_imports():
    graph = import_graph()
    # tracer_cli.cli.finetune imports the engine inside its functions only (a fast --help).
    assert "tracer_cli.engine.run" in graph["tracer_cli.cli.finetune"]
    assert "tracer_cli.engine.kernels" in graph["tracer_cli.diagnostics"]


def test_the_core_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_engine_never_imports_the_command_layer():
    graph = import_graph()
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items()
                    if m.startswith("tracer_cli.engine") for d in deps
                    if d.startswith("tracer_cli.cli"))
    assert not upward, upward


def test_the_teacher_specification_does_not_import_the_engine():
    """The engine reads the specification (kinds, defaults); the kernels that turn a
    specification into a curve live in the engine and import it, not the other way round."""
    graph = import_graph()
    spec = [m for m in graph if m.endswith("teacher_spec")]
    assert spec
    for module in spec:
        assert not {d for d in graph[module] if d.startswith("tracer_cli.engine")}, module
