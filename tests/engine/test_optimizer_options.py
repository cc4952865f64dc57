"""Optimizer and schedule keys, train.epochs, and tower locking, on tiny runs."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.engine import checkpoint
from tracer_cli.engine.step import check_tower_locks, phased_schedules
from tracer_cli.engine.run import finetune
from tracer_cli.errors import RecipeError, UsageError
from tracer_cli.events import Reporter
from tracer_cli.recipe import TrainConfig


def _recipe(path: Path, *sets: str) -> recipe_mod.Recipe:
    return recipe_mod.load(path, ["run.eval=false", *sets])


def _run(recipe: recipe_mod.Recipe, out: Path, **kwargs):
    return finetune(recipe, output_dir=out, reporter=Reporter(), **kwargs)


def _theta0(recipe: recipe_mod.Recipe) -> dict[str, torch.Tensor]:
    from tracer_cli.engine.run import pretrained_backbone

    return {k: v.clone() for k, v in pretrained_backbone(recipe).model.state_dict().items()}


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if torch.is_tensor(a[k]) and a[k].is_floating_point()
            and not torch.equal(a[k], b[k])}


# --------------------------------------------------------------------------- optimizer, schedule


def test_betas_and_eps_reach_the_optimizer(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "train.steps=1", "train.warmup_steps=0", "train.beta1=0.8",
                     "train.beta2=0.95", "train.eps=1e-6")
    state = checkpoint.load(_run(recipe, tmp_path).run_dir / "last.pt")
    groups = state["optimizer"]["param_groups"]
    assert groups and all(g["betas"] == (0.8, 0.95) and g["eps"] == 1e-6 for g in groups)


@pytest.mark.parametrize("schedule, expected", [
    # warm-up (t + 1)/2 over 2 steps, then over the 4 remaining steps:
    ("cosine", [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]),
    ("constant", [0.5, 1.0, 1.0, 1.0, 1.0, 1.0]),
    ("linear", [0.5, 1.0, 1.0, 0.75, 0.5, 0.25]),
])
def test_schedules_follow_their_curves_after_the_warmup(schedule, expected):
    train = TrainConfig(steps=6, warmup_steps=2, schedule=schedule, method="flyp")
    backbone, head = phased_schedules(train, 1.0)
    assert [backbone(t) for t in range(6)] == pytest.approx(expected)
    assert [head(t) for t in range(6)] == pytest.approx(expected)


def test_lpft_phases_use_the_chosen_schedule():
    train = TrainConfig(steps=6, lp_steps=2, warmup_steps=0, schedule="linear", method="lpft")
    backbone, head = phased_schedules(train, 0.5)
    assert [backbone(t) for t in range(6)] == pytest.approx([0, 0, 1.0, 0.75, 0.5, 0.25])
    assert [head(t) for t in range(6)] == pytest.approx([1.0, 0.5, 0.5, 0.375, 0.25, 0.125])


def test_the_logged_rate_follows_a_linear_schedule(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "train.steps=3", "train.warmup_steps=1",
                     "train.schedule=linear", "train.checkpoint_every=0")
    run_dir = _run(recipe, tmp_path).run_dir
    lrs = [r["lr"] for r in rundir.read_metrics(run_dir) if "lr" in r]
    assert lrs == pytest.approx([1e-4, 1e-4, 0.5e-4])


# --------------------------------------------------------------------------- epochs


def test_epochs_set_the_steps_the_lock_records_them_and_resume_keeps_them(tiny_recipe, tmp_path):
    """synth-photo-narrow at size 70 and batch 16: 4 whole batches per epoch (6 examples
    dropped), so 2 epochs are 8 steps; the teacher kernel and the schedule span those 8."""
    sets = ["train.epochs=2", "data.train.size=70", "train.checkpoint_every=4",
            "train.warmup_steps=1"]
    raw = recipe_mod.apply_overrides(recipe_mod.read_toml(tiny_recipe), ["run.eval=false", *sets])
    raw["train"].pop("steps")
    full = _run(recipe_mod.from_dict(raw), tmp_path / "full")
    assert full.steps == 8
    lock = tomllib.loads((full.run_dir / "recipe.lock.toml").read_text())
    assert lock["train"]["steps"] == 8 and lock["lock"]["epochs"] == 2
    lrs = [r["lr"] for r in rundir.read_metrics(full.run_dir) if "lr" in r]
    assert lrs[-1] == pytest.approx(1e-4 * 0.5 * (1 + math.cos(math.pi * 6 / 7)))

    _run(recipe_mod.from_dict(raw), tmp_path / "split", stop_after=4)
    resumed = _run(recipe_mod.from_dict(raw), tmp_path / "split", resume="auto")
    end, again = (checkpoint.load(r.run_dir / "last.pt") for r in (full, resumed))
    for key, value in end["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    # The checkpoint's recipe reads back (tracer eval --checkpoint) as the run of 8 steps.
    saved = recipe_mod.resolved_tables(end["recipe"])
    assert recipe_mod.from_dict(saved).train.steps == 8


# --------------------------------------------------------------------------- tower locking


def test_a_locked_text_tower_keeps_its_weights_and_leaves_the_optimizer(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "train.steps=2", "train.lock_text=true")
    state = checkpoint.load(_run(recipe, tmp_path).run_dir / "last.pt")
    moved = _changed(_theta0(recipe), state["state_dict"])
    assert moved and all(k.startswith("visual.") or k == "logit_scale" for k in moved)
    assert any(k.startswith("visual.") for k in moved)
    # AdamW holds exactly the parameters that still need gradients: the image tower and the
    # logit scale (open_clip's lock leaves it trainable).
    from tracer_cli.engine.run import pretrained_backbone

    model = pretrained_backbone(recipe).model
    trainable = sum(1 for n, _ in model.named_parameters()
                    if n.startswith("visual.") or n == "logit_scale")
    held = sum(len(g["params"]) for g in state["optimizer"]["param_groups"])
    assert held == trainable


def test_unlocked_text_layers_train_and_the_rest_stays(tiny_recipe, tmp_path):
    """Two unlocked groups of open_clip's text groups: the last block with ln_final, and the
    projection."""
    recipe = _recipe(tiny_recipe, "train.steps=2", "train.lock_text=true",
                     "train.lock_text_unlocked_layers=2", "train.lock_image=true",
                     "model.freeze_bn_stats=false", "train.lock_image_freeze_bn_stats=true")
    theta0 = _theta0(recipe)
    state = checkpoint.load(_run(recipe, tmp_path).run_dir / "last.pt")
    moved = _changed(theta0, state["state_dict"])
    last = max(int(k.split(".")[2]) for k in theta0 if k.startswith("transformer.resblocks."))
    assert "text_projection" in moved and "ln_final.weight" in moved
    assert any(k.startswith(f"transformer.resblocks.{last}.") for k in moved)
    assert all(k.startswith((f"transformer.resblocks.{last}.", "ln_final.", "text_projection",
                             "logit_scale")) for k in moved)  # image tower, BN stats included


def test_a_locked_image_tower_still_updates_bn_statistics_unless_frozen(tiny_recipe, tmp_path):
    """open_clip's lock_image_tower stops gradients; the BatchNorm running statistics still move
    unless lock_image_freeze_bn_stats is set."""
    recipe = _recipe(tiny_recipe, "train.steps=1", "train.lock_image=true",
                     "model.freeze_bn_stats=false")
    theta0 = _theta0(recipe)
    state = checkpoint.load(_run(recipe, tmp_path).run_dir / "last.pt")
    visual = {k for k in _changed(theta0, state["state_dict"]) if k.startswith("visual.")}
    assert visual and all(k.endswith(("running_mean", "running_var")) for k in visual)


def test_a_vit_image_tower_unlocks_its_last_groups(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "model.arch=tracer-tiny-vit", "model.freeze_bn_stats=false",
                     "train.steps=1", "train.warmup_steps=0", "train.lock_image=true",
                     "train.lock_image_unlocked_groups=1")
    theta0 = _theta0(recipe)
    state = checkpoint.load(_run(recipe, tmp_path).run_dir / "last.pt")
    visual = {k for k in _changed(theta0, state["state_dict"]) if k.startswith("visual.")}
    assert visual == {"visual.proj"}


def test_a_resnet_image_tower_cannot_be_partly_locked(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "train.lock_image=true", "train.lock_image_unlocked_groups=1")
    with pytest.raises(RecipeError) as err:
        _run(recipe, tmp_path)
    assert err.value.key == "train.lock_image_unlocked_groups"


def test_a_backbone_without_the_capability_is_refused():
    with pytest.raises(UsageError, match=r"cannot lock its text tower \(lock_text_tower\)"):
        check_tower_locks(object(), TrainConfig(lock_text=True))
    check_tower_locks(object(), TrainConfig())  # nothing locked: nothing needed
