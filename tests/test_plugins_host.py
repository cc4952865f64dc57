"""The plugin host: registries, errors, and `tracer plugins list`."""

from __future__ import annotations

import inspect
import json

import pytest

from tracer_cli import hookimpl
from tracer_cli.cli import app
from tracer_cli.errors import UsageError
from tracer_cli.sdk.host import KINDS, PluginError, PluginHost
from tracer_cli.sdk import hookspecs

BUILTIN_DATASETS = {"synth-world", "synth-photo", "synth-photo-narrow", "synth-sketch",
                    "synth-cartoon", "synth-noisy", "imagefolder", "csv", "hf", "webdataset"}


class _Plugin:
    @hookimpl
    def tracer_register_tasks(self, registry):
        registry.add("my-task", lambda options: options)


def test_builtins_load_through_entry_points():
    host = PluginHost()
    assert BUILTIN_DATASETS <= set(host.datasets.names())
    assert "openclip" in host.backbones and "classification" in host.tasks
    entry = host.datasets.get("synth-photo")
    assert entry.distribution == "tracer-clip" and entry.plugin == "synth"


def test_object_plugin_on_a_fresh_host():
    host = PluginHost(load_entry_points=False, plugins=(_Plugin(),))
    assert host.tasks.names() == ["my-task"]
    assert host.tasks.get("my-task").factory({"a": 1}) == {"a": 1}
    assert host.listing()["tasks"][0]["distribution"] == "(not installed)"


def test_unknown_name_lists_close_matches():
    host = PluginHost()
    with pytest.raises(UsageError, match=r"unknown dataset 'synth-skech': did you mean "
                                         r"'synth-sketch'"):
        host.datasets.get("synth-skech")
    with pytest.raises(UsageError, match="known: "):
        host.tasks.get("zzz")


def test_bad_names_and_failing_hooks_are_plugin_errors():
    class BadName:
        @hookimpl
        def tracer_register_datasets(self, registry):
            registry.add("My_Data", lambda *a: None)

    class Broken:
        @hookimpl
        def tracer_register_backbones(self, registry):
            raise RuntimeError("boom")

    with pytest.raises(PluginError, match="lowercase-kebab"):
        PluginHost(load_entry_points=False, plugins=(BadName(),))
    with pytest.raises(PluginError, match="failed in tracer_register_backbones: RuntimeError"):
        PluginHost(load_entry_points=False, plugins=(Broken(),))


def test_blocking_a_builtin_by_name(monkeypatch):
    monkeypatch.setenv("TRACER_DISABLE_PLUGINS", "hf, files")
    names = set(PluginHost().datasets.names())
    assert "hf" not in names and "csv" not in names and "synth-photo" in names


def test_every_hookspec_is_documented():
    specs = [f for n, f in inspect.getmembers(hookspecs, inspect.isfunction)
             if n.startswith("tracer_")]
    assert {f.__name__ for f in specs} == {f"tracer_register_{k}" for k in KINDS}
    for f in specs:
        doc = inspect.getdoc(f) or ""
        assert "Called" in doc and "registry.add" in doc, f.__name__


def test_plugins_list_json(runner):
    result = runner.invoke(app, ["plugins", "list", "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert set(doc) == {"backbones", "datasets", "tasks", "loggers"}
    row = next(r for r in doc["datasets"] if r["name"] == "synth-world")
    assert set(row) == {"name", "plugin", "distribution", "version"}
    human = runner.invoke(app, ["plugins", "list"])
    assert "synth-photo-narrow" in human.stdout and "tracer-clip" in human.stdout
