"""The core's import graph: no cycles, and no import runs back up a layer.

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
    assert "tracer_cli.teacher.kernels" in graph["tracer_cli.commands.teacher_diagnostics"]


def test_the_core_has_no_import_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_engine_never_imports_the_command_layer():
    graph = import_graph()
    upward = sorted(f"{m} -> {d}" for m, deps in graph.items()
                    if m.startswith("tracer_cli.engine") for d in deps
                    if d.startswith("tracer_cli.cli"))
    assert not upward, upward


def test_the_teacher_specification_does_not_import_its_kernels_or_the_engine():
    """The engine reads the specification (kinds, defaults); the kernels that turn a
    specification into a curve import it, not the other way round."""
    graph = import_graph()
    spec = graph["tracer_cli.teacher.spec"]
    assert "tracer_cli.teacher.kernels" in graph and "tracer_cli.teacher.spec" in \
        graph["tracer_cli.teacher.kernels"]
    assert not {d for d in spec if d == "tracer_cli.teacher.kernels" or
                d.startswith("tracer_cli.engine")}, spec


# The layers, bottom up. A module may import its own layer and any layer below it, never one
# above. (The package root ``tracer_cli`` holds the hook marker; ``__main__`` runs the CLI.)
FOUNDATION = ("tracer_cli.errors", "tracer_cli.io", "tracer_cli.events")
# What each layer above the foundation must never import (a package and all its modules); the
# foundation imports nothing of tracer_cli but itself.
FORBIDDEN = {
    "sdk": ("tracer_cli.rundir", "tracer_cli.results", "tracer_cli.engine",
            "tracer_cli.commands", "tracer_cli.analysis", "tracer_cli.cli"),
    "rundir/results": ("tracer_cli.engine", "tracer_cli.commands", "tracer_cli.analysis",
                       "tracer_cli.cli"),
    "engine": ("tracer_cli.commands", "tracer_cli.analysis", "tracer_cli.cli"),
    "commands/analysis": ("tracer_cli.cli",),
}


def _within(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _layer(module: str) -> str | None:
    def under(*packages: str) -> bool:
        return _within(module, *packages)

    if module in FOUNDATION:
        return "foundation"
    # sdk/__init__ is the lazy door: it names the homes of the public names, in every layer.
    if (under("tracer_cli.sdk") and module != "tracer_cli.sdk") or \
            under("tracer_cli.recipe", "tracer_cli.teacher"):
        return "sdk"
    if under("tracer_cli.rundir", "tracer_cli.results"):
        return "rundir/results"
    if under("tracer_cli.engine"):
        return "engine"
    if under("tracer_cli.commands", "tracer_cli.analysis"):
        return "commands/analysis"
    return None


def _allowed(layer: str, target: str) -> bool:
    if layer == "foundation":
        return target in FOUNDATION
    return not _within(target, *FORBIDDEN[layer])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Every ``module -> target`` of ``graph`` that runs back up a layer."""
    found = []
    for module, targets in graph.items():
        layer = _layer(module)
        if layer is not None:
            found += [f"{module} -> {t}" for t in sorted(targets) if not _allowed(layer, t)]
    return sorted(found)


def test_the_layer_check_catches_an_upward_import():
    assert upward_imports({"tracer_cli.io": {"tracer_cli.errors"}}) == []
    assert upward_imports({"tracer_cli.io": {"tracer_cli.recipe"}}) == [
        "tracer_cli.io -> tracer_cli.recipe"]
    assert upward_imports({"tracer_cli.rundir.checksums": {"tracer_cli.engine.run"}})
    assert upward_imports({"tracer_cli.teacher.kernels": {"tracer_cli.results.metrics"}})
    assert upward_imports({"tracer_cli.commands.evaluate": {"tracer_cli.cli.common"}})
    assert upward_imports({"tracer_cli.engine.run": {"tracer_cli.analysis.stats"}})
    # the lazy door and the command line may import anything below them
    assert upward_imports({"tracer_cli.sdk": {"tracer_cli.engine.modes"},
                           "tracer_cli.cli.eval": {"tracer_cli.commands.evaluate"}}) == []


def test_no_import_runs_back_up_a_layer():
    """foundation (errors, io, events) < sdk submodules, recipe, teacher/ < rundir/, results/ <
    engine/ < commands/, analysis/ < cli/ (docs/architecture.md, "Layers")."""
    upward = upward_imports(import_graph())
    assert not upward, "imports running back up a layer: " + "; ".join(upward)


def test_no_two_modules_share_a_name():
    # A newcomer tells modules apart by name: ``cli/export.py`` is the command, its library is
    # ``commands/model_export.py``; ``cli/compare.py`` the command, ``analysis/groups.py`` its
    # reading and grouping of runs. (Packages' ``__init__.py`` excluded.)
    seen: dict[str, list[str]] = {}
    for module, path in _modules().items():
        if path.name != "__init__.py":
            seen.setdefault(path.stem, []).append(module)
    shared = {name: mods for name, mods in seen.items() if len(mods) > 1}
    assert not shared, f"modules sharing a name: {shared}"
