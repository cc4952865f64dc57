"""``tracer --version``: the version of the package, as pyproject.toml declares it."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

from tracer_cli.cli import app

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]


def test_version_prints_the_declared_version_and_exits_0():
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"tracer {declared}\n"
