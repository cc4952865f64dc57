"""Fixtures shared by the plugin tests: the synth datasets as their plugin registers them."""

from __future__ import annotations

import pytest

from tracer_plugins.datasets.synth import registration


class _Registry:
    def __init__(self):
        self.factories = {}

    def add(self, name, factory):
        self.factories[name] = factory


@pytest.fixture(scope="module")
def synth_factories():
    """Name -> factory of every dataset the synth plugin's hook registers."""
    registry = _Registry()
    registration.tracer_register_datasets(registry=registry)
    return registry.factories
