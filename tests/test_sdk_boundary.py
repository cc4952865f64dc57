"""One door for plugin authors: the built-in plugins (``plugins/``, package ``tracer_plugins``)
and the example plugin (``examples/``) import tracer only through ``tracer_cli.sdk``, and that
module's ``__all__`` is exactly what they use plus the documented protocols a third party
implements."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tracer_cli.sdk as sdk

from tests.source import docstring_ids

ROOT = Path(__file__).resolve().parents[1]
PLUGIN_TREES = (ROOT / "plugins", ROOT / "examples")
CORE = "tracer_cli"
SDK = "tracer_cli.sdk"
# Public for third parties although no built-in plugin imports them: the protocols a task, a
# logger and an export format satisfy (named in the hook documentation and the README).
FOR_THIRD_PARTIES = {"Task", "Logger", "ExportFormat"}


def _plugin_files() -> list[Path]:
    return sorted(p for tree in PLUGIN_TREES for p in tree.rglob("*.py"))


def _is_core(module: str) -> bool:
    return module == CORE or module.startswith(CORE + ".")


def core_imports(source: str) -> list[str]:
    """Every way ``source`` reaches the core other than ``from tracer_cli.sdk import <public
    name>`` or ``import tracer_cli.sdk``: other modules (``import tracer_cli.x``, ``from
    tracer_cli import x``, a submodule of the SDK) and code strings naming a core module
    (``importlib.import_module("tracer_cli.x")``, ``resources.files("tracer_cli.recipes")``)."""
    tree = ast.parse(source)
    docs = docstring_ids(tree)
    public = set(sdk.__all__)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if _is_core(a.name) and a.name != SDK]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and \
                _is_core(node.module):
            if node.module != SDK:
                found.append(node.module)
            else:
                found += [f"{SDK}.{a.name}" for a in node.names if a.name not in public]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                id(node) not in docs and _is_core(node.value.strip()) and \
                node.value.strip() != SDK:
            found.append(repr(node.value))
    return found


def sdk_names_used(source: str) -> set[str]:
    """The names ``source`` imports from ``tracer_cli.sdk`` (or reads as ``sdk.<name>``)."""
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module == SDK:
            used.update(a.name for a in node.names)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id == "sdk":
            used.add(node.attr)
    return used


def test_the_scan_finds_each_way_into_the_core():
    assert core_imports("from tracer_cli.errors import UsageError\n") == ["tracer_cli.errors"]
    assert core_imports("from tracer_cli import hookimpl\n") == ["tracer_cli"]
    assert core_imports("import tracer_cli.commands.model_export as ex\n") == [
        "tracer_cli.commands.model_export"]
    assert core_imports("import tracer_cli\n") == ["tracer_cli"]
    assert core_imports("import tracer_cli.sdk.contracts\n") == ["tracer_cli.sdk.contracts"]
    assert core_imports("from tracer_cli.sdk import contracts\n") == ["tracer_cli.sdk.contracts"]
    assert core_imports("from tracer_cli.sdk.options import Options\n") == [
        "tracer_cli.sdk.options"]
    assert core_imports("import importlib\nimportlib.import_module('tracer_cli.rundir')\n") == [
        "'tracer_cli.rundir'"]
    assert core_imports("from importlib import resources\n"
                        "resources.files('tracer_cli.recipes')\n") == ["'tracer_cli.recipes'"]
    # The door itself, relative imports inside a plugin package, and prose are fine.
    assert core_imports("from tracer_cli.sdk import Options, hookimpl\n"
                        "import tracer_cli.sdk\nimport tracer_cli.sdk as sdk\n"
                        "from .common import options_for\n") == []
    assert core_imports('"""Raises :class:`tracer_cli.errors.UsageError`."""\nimport os\n') == []
    assert sdk_names_used("from tracer_cli.sdk import Options\nimport tracer_cli.sdk as sdk\n"
                          "x = sdk.DatasetBundle\n") == {"Options", "DatasetBundle"}


@pytest.mark.parametrize("path", _plugin_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_plugins_import_the_core_only_through_the_sdk(path):
    assert core_imports(path.read_text("utf-8")) == [], (
        f"{path.relative_to(ROOT)} reaches into the core; import it from tracer_cli.sdk (add a "
        f"well-named public name there if a plugin really needs it)")


def test_every_public_name_resolves_to_its_declared_home():
    assert len(sdk.__all__) == len(set(sdk.__all__))
    assert set(sdk.__all__) == set(sdk._HOME_OF)
    for name in sdk.__all__:
        module = __import__(sdk._HOME_OF[name], fromlist=[name])
        assert getattr(sdk, name) is getattr(module, name), name
    with pytest.raises(AttributeError, match="tracer_cli.sdk.__all__"):
        getattr(sdk, "no_such_name")


def test_the_type_checking_imports_match_the_lazy_table():
    """``sdk/__init__.py`` names each public name twice (imports for type checkers, the table
    ``__getattr__`` loads from); they must agree."""
    tree = ast.parse(Path(sdk.__file__).read_text("utf-8"))
    block = next(n for n in tree.body if isinstance(n, ast.If) and
                 getattr(n.test, "id", None) == "TYPE_CHECKING")
    declared = {(n.module, a.name) for n in block.body if isinstance(n, ast.ImportFrom)
                for a in n.names}
    assert declared == {(module, name) for name, module in sdk._HOME_OF.items()}


def test_no_public_name_hides_a_submodule_of_the_sdk():
    submodules = {p.stem for p in Path(sdk.__file__).parent.glob("*.py")}
    assert not submodules & set(sdk.__all__)


def test_the_sdk_is_lean():
    """Every public name is used by a built-in or the example plugin, or is one of the few
    protocols documented for third parties; and every name a plugin imports is public."""
    used = set().union(*(sdk_names_used(p.read_text("utf-8")) for p in _plugin_files()))
    assert used <= set(sdk.__all__)
    assert set(sdk.__all__) - used == FOR_THIRD_PARTIES


def test_every_public_name_is_documented():
    readme = (ROOT / "README.md").read_text("utf-8")
    for name in sdk.__all__:
        assert f"``{name}``" in sdk.__doc__ or f":class:`{name}`" in sdk.__doc__, name
        assert f"`{name}`" in readme, f"README's plugin section does not list {name}"


def test_importing_the_sdk_and_its_torch_free_parts_does_not_import_torch():
    """The recipe loader and the command line read the SDK's options and task metrics; the
    SDK's names load on first use, so these stay free of torch (a fast ``tracer --help``)."""
    code = ("import sys, tracer_cli.sdk, tracer_cli.sdk.options, tracer_cli.sdk.task_metrics, "
            "tracer_cli.sdk.hookspecs, tracer_cli.recipe, tracer_cli.sdk.host\n"
            "from tracer_cli.sdk import Options, hookimpl, TaskMetrics\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
