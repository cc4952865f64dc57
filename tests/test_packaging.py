"""The wheel ships every package: pyproject.toml lists packages explicitly (the built-in plugins
live in ``plugins/`` under the import name ``tracer_plugins``), so a new subpackage that is not
listed works in an editable install and is missing from a regular one."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    found = set()
    for import_root, folder in (("tracer_cli", ROOT / "tracer_cli"),
                                ("tracer_plugins", ROOT / "plugins")):
        for init in folder.rglob("__init__.py"):
            parts = init.parent.relative_to(folder).parts
            found.add(".".join((import_root, *parts)))
    return found


def test_every_package_is_declared_in_pyproject():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = set(config["tool"]["setuptools"]["packages"])
    missing = sorted(_packages_on_disk() - declared)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"



def _declared(path: Path, folder: Path, package: str, package_data: dict) -> bool:
    """Whether a pattern of the deepest package above ``path`` that declares data matches it."""
    parts = path.relative_to(folder).parent.parts
    for depth in range(len(parts), -1, -1):
        patterns = package_data.get(".".join((package, *parts[:depth])))
        if patterns is not None:
            inside = path.relative_to(folder.joinpath(*parts[:depth]))
            return any(inside.match(pattern) for pattern in patterns)
    return False


def test_every_data_file_is_declared_in_pyproject():
    """Data files (the iWildCam English names, model configs, weights, recipes) are package data:
    one that no pattern of [tool.setuptools.package-data] matches is missing from a wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
        "setuptools"]
    roots = {"tracer_cli": "tracer_cli", **setuptools["package-dir"]}
    missing = [str(path.relative_to(ROOT))
               for package, folder in roots.items() for path in (ROOT / folder).rglob("*")
               if path.is_file() and path.suffix not in (".py", ".pyc")
               and not _declared(path, ROOT / folder, package, setuptools["package-data"])]
    assert not missing, f"add to [tool.setuptools.package-data] in pyproject.toml: {missing}"
