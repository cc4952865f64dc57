"""Tests for the synth plugin's registration (``tracer_plugins.datasets.synth.registration``)."""

from __future__ import annotations

from tracer_plugins.datasets.synth import registration


def test_registers_every_dataset(synth_factories):
    assert sorted(synth_factories) == sorted(["synth-world", "synth-photo", "synth-photo-narrow",
                                              "synth-sketch", "synth-cartoon", "synth-noisy",
                                              "synth-mono", "synth-colour", "synth-captions",
                                              "synth-vqa"])


def test_hook_loads_through_the_plugin_host():
    from tracer_cli.sdk.host import PluginHost

    host = PluginHost(load_entry_points=False, plugins=(registration,))
    assert "synth-photo-narrow" in host.datasets.names()
