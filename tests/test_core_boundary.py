"""The core knows no built-in plugin: no module under ``tracer_cli`` imports ``tracer_plugins``
(statically or through ``importlib``), and none names the openclip plugin's code or file names;
what is specific to a backbone or task comes from its plugin through a declared capability
(``tracer_cli.sdk.contracts``)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.source import docstring_ids

CORE = Path(__file__).resolve().parents[1] / "tracer_cli"
PLUGIN_PACKAGE = "tracer_plugins"
# What only the openclip plugin may know: its helpers and the files of its export format.
OPENCLIP_SPECIFICS = ("register_tiny_configs", "open_clip_config.json",
                      "open_clip_model.safetensors", "get_model_config", "PreprocessCfg")


def _modules() -> list[Path]:
    return sorted(CORE.rglob("*.py"))


def plugin_imports(source: str) -> list[str]:
    """Every way ``source`` imports the built-in plugins: ``import tracer_plugins...``, ``from
    tracer_plugins... import``, and code strings naming the package (``importlib.import_module
    ("tracer_plugins.x")``, or load snippets written for users)."""
    tree = ast.parse(source)
    docs = docstring_ids(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] == PLUGIN_PACKAGE]
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] == PLUGIN_PACKAGE:
            found.append(node.module)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                id(node) not in docs and PLUGIN_PACKAGE in node.value:
            found.append(repr(node.value))
    return found


def openclip_specifics(source: str) -> list[str]:
    """The openclip plugin's helpers and file names that ``source`` uses in code (identifiers,
    attributes, imported names, non-docstring strings); prose in docstrings may name them."""
    tree = ast.parse(source)
    docs = docstring_ids(tree)
    used = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            used.add(node.id)
        elif isinstance(node, ast.Attribute):
            used.add(node.attr)
        elif isinstance(node, ast.ImportFrom):
            used.update(a.name for a in node.names)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            used.update(s for s in OPENCLIP_SPECIFICS if s in node.value)
    return sorted(used & set(OPENCLIP_SPECIFICS))


def test_the_scan_finds_each_form_of_import():
    assert plugin_imports("import tracer_plugins.backbones.openclip as oc\n") == [
        "tracer_plugins.backbones.openclip"]
    assert plugin_imports("from tracer_plugins.backbones import openclip\n") == [
        "tracer_plugins.backbones"]
    assert plugin_imports("import importlib\nimportlib.import_module('tracer_plugins.x')\n")
    assert plugin_imports('"""Built-ins live in ``tracer_plugins``."""\nimport os\n') == []
    assert openclip_specifics("from open_clip.transform import PreprocessCfg\n"
                              "f = 'DIR/open_clip_model.safetensors'\n") == [
        "PreprocessCfg", "open_clip_model.safetensors"]
    assert openclip_specifics('"""Fields of open_clip\'s ``PreprocessCfg``."""\n') == []


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(CORE)))
def test_core_module_imports_no_builtin_plugin(path: Path):
    source = path.read_text(encoding="utf-8")
    assert plugin_imports(source) == [], f"{path} imports the built-in plugins"
    named = openclip_specifics(source)
    assert not named, f"{path} uses the openclip plugin's specifics: {named}"
