"""One specification per teacher kind: the recipe, the engine, distill-check and export agree."""

from __future__ import annotations

import inspect

import pytest

from tracer_cli import recipe as recipe_mod
from tracer_cli.teacher import spec as ts
from tracer_cli.engine.teachers import TEACHER_KINDS


def _recipe(**teacher):
    return recipe_mod.from_dict({"data": {"train": "synth-photo-narrow"},
                                 "train": {"method": "tracer"}, "teacher": teacher})


@pytest.mark.parametrize("kind", ["wma", "ema", "static"])
def test_engine_params_are_what_the_teacher_takes(kind):
    spec = ts.TeacherSpec.from_config(_recipe(kind=kind).teacher)
    accepted = set(inspect.signature(TEACHER_KINDS[kind].__init__).parameters)
    assert set(spec.engine_params()) <= accepted - {"self", "student", "total_steps"}


def test_defaults_are_written_once():
    cfg = _recipe(kind="ema").teacher
    spec = ts.TeacherSpec.from_config(cfg)
    assert spec.update_every == ts.EMA_UPDATE_EVERY == cfg.resolved_update_every()
    assert (spec.momentum_start, spec.momentum_end, spec.momentum_warmup) == (
        ts.EMA_MOMENTUM_START, ts.EMA_MOMENTUM_END, ts.EMA_MOMENTUM_WARMUP)
    ema = inspect.signature(TEACHER_KINDS["ema"].__init__).parameters
    assert ema["update_every"].default == ts.EMA_UPDATE_EVERY
    assert ema["momentum_end"].default == ts.EMA_MOMENTUM_END
    carot = recipe_mod.METHOD_DEFAULTS["carot"]["teacher"]
    assert carot["momentum_start"] == ts.EMA_MOMENTUM_START
    wma = ts.TeacherSpec.from_config(_recipe(kind="wma").teacher)
    assert (wma.beta, wma.update_every) == (ts.WMA_BETA, 1)


def test_labels_and_words():
    ema = ts.TeacherSpec.from_config(_recipe(kind="ema", update_every=50).teacher)
    assert ema.label == "ema m=0.05→0.9 over 20%, k=50"
    assert ema.words == "EMA teacher m=0.05→0.9 every 50 steps"
    assert ts.TeacherSpec("wma", 1, beta=0.2).label == "wma β=0.2, k=1"
    static = ts.TeacherSpec.from_config(_recipe(kind="static", update_every=7).teacher)
    assert static == ts.TeacherSpec("static") and static.params() == {}
    assert static.words == "static teacher θ₀"


def test_teacher_kinds_are_listed_once():
    """``TeacherKind`` is the one list: the recipe accepts it, the spec's tables and the engine's
    classes cover exactly its kinds."""
    import typing

    kinds = set(typing.get_args(ts.TeacherKind))
    assert kinds == set(ts.KIND_KEYS) == set(ts.DEFAULT_UPDATE_EVERY) == set(TEACHER_KINDS)
    hints = typing.get_type_hints(recipe_mod.TeacherConfig)
    assert set(typing.get_args(hints["kind"])) == kinds
