"""Tests for ``synth-colour`` (``tracer_plugins.datasets.synth.colour``): the colour of a shape as
a retention task, its labels, its determinism, and that the shipped pretraining knows it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tracer_cli.cli import app
from tracer_cli.errors import RecipeError
from tracer_plugins.datasets import synth
from tracer_plugins.datasets.synth.colour import colour_templates

ROOT = Path(__file__).resolve().parents[2]


def _arrays(factory, split: str = "test", **spec):
    bundle = factory({"size": 300, **spec}, split, None)
    data = bundle.dataset
    return bundle, np.asarray(data.images), np.asarray(data.labels), list(data.captions)


def test_labels_are_the_colour_the_caption_names(synth_factories):
    bundle, _, labels, captions = _arrays(synth_factories["synth-colour"])
    assert bundle.classnames == list(synth.COLOURS)
    assert bundle.info == {"domain": "photo", "split": "test", "task": "colour", "size": 300,
                           "image_size": 32, "seed": 0}
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(len(synth.COLOURS)))
    # The render caption names the drawn colour in most images: it must be the label's.
    named = [(label, [c for c in synth.COLOURS if f" {c} " in f" {caption} "])
             for label, caption in zip(labels, captions)]
    assert sum(bool(names) for _, names in named) > 100
    assert all(names == [synth.COLOURS[label]] for label, names in named if names)
    item = bundle.dataset[0]
    assert item["label"] == labels[0] and item["image"].shape == (3, 32, 32)


def test_deterministic_and_its_own_draw(synth_factories):
    colour = synth_factories["synth-colour"]
    _, images, labels, _ = _arrays(colour)
    _, again, labels_again, _ = _arrays(colour)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    for other in (_arrays(colour, "train")[1], _arrays(colour, seed=1)[1],
                  _arrays(synth_factories["synth-photo"])[1]):
        assert not np.array_equal(images, other)


def test_domains_and_prompts(synth_factories):
    bundle, _, _, captions = _arrays(synth_factories["synth-colour"], domain="cartoon")
    assert all(c.startswith("a cartoon of") for c in captions)
    assert bundle.templates == colour_templates("cartoon")
    templates = colour_templates()
    assert len(templates) == len(synth.SIZES) * len(synth.CLASSNAMES)
    assert all(t.count("{}") == 1 and t.startswith("a photo of a ") for t in templates)
    with pytest.raises(RecipeError, match="domain"):
        synth_factories["synth-colour"]({"domain": "sketch"}, "test", None)


@pytest.mark.slow
def test_shipped_pretraining_names_colours_zero_shot(tmp_path, monkeypatch):
    """The embedded CLIP (seed 0, unpacked from the shipped file) learnt colour words from its
    captions: zero-shot accuracy far above chance (1/8), so retention has something to lose."""
    monkeypatch.setenv("TRACER_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, [
        "eval", "--recipe", str(ROOT / "recipes" / "quickstart.toml"), "--set", "data.id=[]",
        "--set", "data.ood=[]", "--set", "data.retain[0].size=500", "--set", "run.device=cpu",
        "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["retain"] == ["synth-colour"] and doc["retain_change"] == 0
    assert doc["retain_accuracy"] > 0.9
