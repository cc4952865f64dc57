"""``train.method``: what each baseline trains, leaves alone, saves, evaluates and exports.

Runs are real (tiny recipe, random weights, a few steps); the assertions are about which
parameters moved, what the head starts as, and that resume / eval / WiSE-FT / export read a head
run like any other.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.engine import checkpoint
from tracer_cli.engine.run import finetune
from tracer_cli.errors import RecipeError
from tracer_cli.events import Reporter

NO_TEACHER = ["teacher.kind=none", "distill.lambda_sd=0", "distill.crd=0", "distill.fd=0",
              "distill.icl=0", "distill.xkd=0", "distill.lambda_fn=0"]


def _recipe(path: Path, method: str, *sets: str) -> recipe_mod.Recipe:
    raw = recipe_mod.read_toml(path)
    raw.pop("teacher", None)
    raw.pop("distill", None)  # the method's own defaults
    raw["train"]["method"] = method
    raw = recipe_mod.apply_overrides(raw, list(sets))
    return recipe_mod.from_dict(raw)


def _run(recipe: recipe_mod.Recipe, out: Path, **kwargs):
    return finetune(recipe, output_dir=out, reporter=Reporter(), **kwargs)


def _theta0(recipe: recipe_mod.Recipe) -> dict[str, torch.Tensor]:
    from tracer_cli.engine.run import pretrained_backbone

    return {k: v.clone() for k, v in pretrained_backbone(recipe).model.state_dict().items()}


def _changed(a: dict, b: dict, prefix: str = "") -> list[str]:
    return [k for k in a if k.startswith(prefix) and torch.is_tensor(a[k])
            and a[k].is_floating_point() and not torch.equal(a[k], b[k])]


# --------------------------------------------------------------------------- recipes


def test_method_defaults_fill_only_unset_keys(tiny_recipe):
    tracer = _recipe(tiny_recipe, "tracer")
    assert (tracer.teacher.kind, tracer.distill.lambda_sd, tracer.distill.fd,
            tracer.distill.lambda_fn) == ("wma", 0.9, 2000.0, 0.05)
    carot = _recipe(tiny_recipe, "carot")
    assert (carot.teacher.kind, carot.teacher.resolved_update_every(), carot.distill.lambda_sd,
            carot.distill.lambda_orth, carot.distill.crd) == ("ema", 500, 1.5, 0.2, 0.0)
    assert _recipe(tiny_recipe, "carot", "teacher.update_every=10",
                   "distill.lambda_sd=0.5").distill.lambda_sd == 0.5
    for method in ("flyp", "ft", "lp", "lpft", "zeroshot"):
        r = _recipe(tiny_recipe, method)
        assert r.teacher.kind == "none" and r.distill.lambda_sd == 0 and r.distill.lambda_fn == 0
    # A recipe without train.method is a TRACER recipe, and its lock file says so.
    raw = recipe_mod.read_toml(tiny_recipe)
    assert recipe_mod.from_dict(raw).to_dict()["train"]["method"] == "tracer"


@pytest.mark.parametrize("method,sets,key", [
    ("ft", ["teacher.kind=wma"], "teacher.kind"),
    ("lp", ["distill.lambda_sd=0.5"], "distill.lambda_sd"),
    ("zeroshot", ["distill.lambda_fn=0.05"], "distill.lambda_fn"),
    ("ft", ["train.lp_steps=2"], "train.lp_steps"),
    ("lpft", ["train.lp_steps=3"], "train.lp_steps"),  # must be < train.steps (3)
])
def test_methods_refuse_keys_they_would_ignore(tiny_recipe, method, sets, key):
    with pytest.raises(RecipeError) as err:
        _recipe(tiny_recipe, method, *sets)
    assert err.value.key == key


def test_unknown_method_lists_the_methods(tiny_recipe):
    with pytest.raises(RecipeError) as err:
        _recipe(tiny_recipe, "swa")
    assert err.value.key == "train.method"
    assert "zeroshot, lp, ft, lpft, flyp, carot, tracer" in str(err.value)


# --------------------------------------------------------------------------- training


def test_zeroshot_trains_nothing_and_saves_theta0(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "zeroshot")
    result = _run(recipe, tmp_path)
    state = checkpoint.load(result.run_dir / "last.pt")
    assert result.steps == 0 and state["step"] == 0
    assert not _changed(_theta0(recipe), state["state_dict"])
    models = result.summary["eval"]["models"]
    assert models["student"] == models["zeroshot"]
    assert "teacher" not in models and "head" not in state


def test_lp_moves_only_the_head(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "lp", "train.head_lr=1e-2")
    result = _run(recipe, tmp_path)
    state = checkpoint.load(result.run_dir / "last.pt")
    assert not _changed(_theta0(recipe), state["state_dict"])  # BatchNorm statistics included
    assert _changed(state["head_init"], state["head"]) == ["linear.weight", "linear.bias"]
    assert state["head"]["_extra_state"]["classnames"][0] == "circle"


def test_ft_trains_the_image_tower_and_leaves_the_text_tower(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "ft")
    result = _run(recipe, tmp_path)
    state = checkpoint.load(result.run_dir / "last.pt")
    theta0, theta = _theta0(recipe), state["state_dict"]
    moved = _changed(theta0, theta)
    assert moved and all(k.startswith("visual.") for k in moved)
    assert any(k.startswith("visual.") for k in moved)
    assert _changed(state["head_init"], state["head"])


def test_ft_head_starts_as_the_zero_shot_head(tiny_recipe):
    """At step 0 the head predicts exactly what zero-shot evaluation predicts."""
    from tracer_cli.engine.data import eval_loader
    from tracer_cli.engine.build import build_dataset, build_task
    from tracer_cli.engine.run import pretrained_backbone

    recipe = _recipe(tiny_recipe, "ft")
    backbone, task = pretrained_backbone(recipe), build_task(recipe)
    bundle = build_dataset(recipe.data.id[0], "data.id[0]", "test", backbone.preprocess_eval)
    sets = {"id": (bundle, eval_loader(bundle.dataset, 48))}
    cpu = torch.device("cpu")
    train = build_dataset(recipe.data.train, "data.train", "train", backbone.preprocess_eval)
    head = task.make_head(backbone, backbone.model, train, cpu, contextlib.nullcontext)
    zero = task.evaluate(backbone, backbone.model, sets, cpu, contextlib.nullcontext)["id"]
    tuned = task.evaluate(backbone, backbone.model, sets, cpu, contextlib.nullcontext,
                          head=head.eval())["id"]
    torch.testing.assert_close(tuned["logits"], zero["logits"], rtol=1e-5, atol=1e-5)


def test_lpft_probes_then_finetunes_and_resumes_exactly(tiny_recipe, tmp_path):
    sets = ["train.steps=4", "train.lp_steps=2", "train.checkpoint_every=2", "run.eval=false"]
    recipe = _recipe(tiny_recipe, "lpft", *sets)
    full = _run(recipe, tmp_path / "full")
    theta0 = _theta0(recipe)
    probe = checkpoint.load(full.run_dir / "checkpoints" / "step_2.pt")
    assert not _changed(theta0, probe["state_dict"])  # still probing
    assert _changed(probe["head_init"], probe["head"])
    end = checkpoint.load(full.run_dir / "last.pt")
    assert _changed(theta0, end["state_dict"], "visual.")

    part = _recipe(tiny_recipe, "lpft", *sets)
    _run(part, tmp_path / "split", stop_after=2)
    resumed = _run(part, tmp_path / "split", resume="auto")
    again = checkpoint.load(resumed.run_dir / "last.pt")
    for key, value in end["state_dict"].items():
        assert torch.equal(value, again["state_dict"][key]), key
    for key, value in end["head"].items():
        if torch.is_tensor(value):
            assert torch.equal(value, again["head"][key]), key


def test_the_logged_learning_rate_is_the_one_the_step_used(tiny_recipe, tmp_path):
    """metrics.jsonl's lr (and lr_head) at step t is the rate step t trained with, as the
    reference logs it: warm-up (t)/warmup_steps, then cosine; not the next step's rate."""
    recipe = _recipe(tiny_recipe, "lpft", "train.steps=4", "train.lp_steps=2",
                     "train.warmup_steps=2", "train.head_lr=1e-2", "run.eval=false")
    result = _run(recipe, tmp_path)
    train = [r for r in rundir.read_metrics(result.run_dir) if "lr" in r]
    # Probing: backbone frozen (0), head warm-up over min(2, 2) steps; then both warm up again.
    assert [r["lr"] for r in train] == pytest.approx([0.0, 0.0, 0.5e-4, 1e-4])
    assert [r["lr_head"] for r in train] == pytest.approx([0.5e-2, 1e-2, 0.5e-4, 1e-4])


def test_head_method_refused_by_a_task_without_a_head(tiny_recipe, tmp_path):
    from tracer_cli.engine import loop
    from tracer_cli.errors import UsageError

    class NoHead:
        objective = "contrastive"

    recipe = _recipe(tiny_recipe, "ft")
    with pytest.raises(UsageError, match="has none"):
        loop.build_head(recipe, NoHead(), None, None, None)


# --------------------------------------------------------------------------- eval, WiSE, export


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory):
    from tests.conftest import TINY_RECIPE

    base = tmp_path_factory.mktemp("ft")
    path = base / "tiny.toml"
    path.write_text(TINY_RECIPE)
    recipe = _recipe(path, "ft", "train.steps=3", "train.lr=1e-3")
    return _run(recipe, base / "runs")


def test_eval_reads_the_run_through_its_head(ft_run, runner):
    from tracer_cli.cli import app

    result = runner.invoke(app, ["eval", str(ft_run.run_dir), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    student = ft_run.summary["eval"]["models"]["student"]
    for name, metrics in doc["datasets"].items():
        assert metrics["accuracy"] == student[name]["accuracy"]
        assert metrics["nll"] == pytest.approx(student[name]["nll"], rel=1e-6)
    assert doc["model"]["head"] is True


@pytest.mark.numerics
def test_wise_alpha_zero_is_zero_shot_for_a_head_run(ft_run, runner, tmp_path):
    from tests.conftest import assert_clear_of_ties
    from tracer_cli.cli import app

    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", str(ft_run.run_dir), "--wise-alpha", "0", "--json",
                                 "--save-predictions", "--output-dir", str(out)])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    zero = ft_run.summary["eval"]["models"]["zeroshot"]
    at0 = next(e for e in doc["wise"] if e["alpha"] == 0)
    for name, metrics in at0["datasets"].items():
        # Two computations (the head initialised from the text features vs the text features
        # themselves) agree to float32 rounding; with every prediction clear of a tie, accuracy
        # is equal exactly.
        with np.load(out / "predictions" / f"{name}.npz") as saved:
            assert_clear_of_ties(saved["logits"])
        assert metrics["accuracy"] == zero[name]["accuracy"]
        assert metrics["nll"] == pytest.approx(zero[name]["nll"], rel=1e-4)


def test_export_carries_the_head(ft_run, runner, tmp_path):
    from safetensors.torch import load_file

    from tracer_cli.cli import app

    out = tmp_path / "export"
    result = runner.invoke(app, ["export", str(ft_run.run_dir), "--format", "safetensors",
                                 "--output", str(out)])
    assert result.exit_code == 0, result.stderr
    config = json.loads((out / "head.json").read_text())
    assert config["kind"] == "linear" and config["outputs"] == 10
    assert config["classnames"][:2] == ["circle", "square"]
    tensors = load_file(str(out / "head.safetensors"))
    state = checkpoint.load(ft_run.run_dir / "last.pt")["head"]
    assert torch.equal(tensors["linear.weight"], state["linear.weight"])
    card = json.loads((out / "model_card.json").read_text())
    assert card["details"]["head"]["weights"] == "head.safetensors"
    assert card["method"].startswith("FT")


def test_eval_zeroshot_false_skips_only_the_pretrained_evaluation(tiny_recipe, tmp_path):
    recipe = _recipe(tiny_recipe, "flyp", "train.steps=2", "run.eval_zeroshot=false")
    result = _run(recipe, tmp_path)
    assert set(result.summary["eval"]["models"]) == {"student"}
    assert not (result.run_dir / "eval" / "zeroshot.json").exists()
    # A zeroshot run has nothing else to report: it evaluates the pretrained model regardless.
    zero = _run(_recipe(tiny_recipe, "zeroshot", "run.eval_zeroshot=false"), tmp_path / "z")
    assert zero.summary["eval"]["models"]["student"] == zero.summary["eval"]["models"]["zeroshot"]
