"""The synth plugin's hook: registers the world's ten datasets (the ``synth`` entry point)."""

from __future__ import annotations

from tracer_cli.sdk import hookimpl
from tracer_plugins.datasets.synth.classification import (
    domain_factory, synth_photo_narrow, synth_world)
from tracer_plugins.datasets.synth.colour import synth_colour
from tracer_plugins.datasets.synth.retrieval import synth_captions
from tracer_plugins.datasets.synth.vqa import synth_vqa


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("synth-world", synth_world)
    registry.add("synth-photo", domain_factory("photo"))
    registry.add("synth-photo-narrow", synth_photo_narrow)
    registry.add("synth-sketch", domain_factory("sketch"))
    registry.add("synth-cartoon", domain_factory("cartoon"))
    registry.add("synth-noisy", domain_factory("noisy"))
    registry.add("synth-mono", domain_factory("mono"))
    registry.add("synth-colour", synth_colour)
    registry.add("synth-captions", synth_captions)
    registry.add("synth-vqa", synth_vqa)
