"""Hostile inputs through the real CLI: each one exits 2 with one error line naming the key or
file, before any training starts; none ends in a traceback or a generic message."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import TINY_RECIPE
from tracer_cli.cli import app


def _one_line(result) -> str:
    """The single error line of a run that must have exited 2."""
    assert result.exit_code == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] == lines[-1], result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    return errors[0]


@pytest.fixture
def recipe(tmp_path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE)
    return path


def _finetune(runner, recipe: Path, *args: str):
    out = recipe.parent / "runs"
    return runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(out), *args])


@pytest.mark.parametrize("override, fragments", [
    ("train.lr=1e300", ["'train.lr'", "1e+300", "float32"]),
    ("distill.fd=-1e39", ["'distill.fd'", "float32"]),
    ("run.name=" + "x" * 300, ["'run.name'", "300 bytes", "255"]),
    ("a." * 100 + "b=1", ["101 parts", "64 levels"]),
    ("train.extra=" + "[" * 200 + "]" * 200, ["train.extra", "64 levels"]),
])
def test_out_of_range_overrides(runner, recipe, override, fragments):
    line = _one_line(_finetune(runner, recipe, "--set", override))
    assert all(f in line for f in fragments), line
    assert not (recipe.parent / "runs").exists()  # refused before the run directory was made


@pytest.mark.parametrize("key, hint", [("lr", False), ("weight_decay", False),
                                       ("grad_clip", True)])
def test_negative_values_carry_their_own_hint(runner, recipe, key, hint):
    line = _one_line(_finetune(runner, recipe, "--set", f"train.{key}=-1"))
    assert f"'train.{key}': got -1; must be >= 0" in line
    assert ("0 disables" in line) is hint and ("grad_clip" in line) is (key == "grad_clip")


def test_deeply_nested_recipe_names_the_file(runner, recipe):
    recipe.write_text(TINY_RECIPE + "\n[" + ".".join(["a"] * 1200) + "]\nx = 1\n")
    line = _one_line(_finetune(runner, recipe))
    assert f"recipe file '{recipe}' nests tables or arrays more than 64 levels" in line


@pytest.mark.parametrize("what", ["directory", "device"])
def test_recipe_that_is_not_a_file(runner, tmp_path, what):
    path = tmp_path if what == "directory" else Path(os.devnull)
    kind = "a directory" if what == "directory" else "not a regular file"
    line = _one_line(runner.invoke(app, ["finetune", str(path)]))
    assert f"recipe file '{path}' is {kind}" in line and "does not exist" not in line


def test_csv_that_is_not_utf8(runner, recipe, tmp_path):
    index = tmp_path / "index.csv"
    index.write_bytes("filepath,label\nimag\xe9.png,0\n".encode("latin-1"))
    spec = f'{{name = "csv", path = "{index}", label_column = "label"}}'
    line = _one_line(_finetune(runner, recipe, "--set", f"data.train={spec}", "--set",
                               "data.id=[]", "--set", "data.ood=[]"))
    assert f"csv dataset: {index} is not UTF-8 text (it holds the byte 0xe9)" in line


def _weights(tmp_path: Path, kind: str) -> Path:
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"logit_scale": torch.ones(())}}, good)
    path = tmp_path / f"weights-{kind}.pt"
    if kind == "good":
        path = good
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif kind == "npz":
        path = tmp_path / "weights.npz"
        np.savez(path, a=np.zeros(3))
    elif kind == "torchscript":
        with warnings.catch_warnings():  # torch.jit.script is deprecated; the archives are not
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    return path


@pytest.mark.parametrize("kind, reason", [
    ("truncated", "truncated, corrupt or not a PyTorch file"),
    ("garbage", "refused by the weights-only loader"),
    ("npz", "a NumPy archive"),
    ("torchscript", "a TorchScript archive"),
])
def test_pretrained_file_that_cannot_be_read_safely(runner, recipe, tmp_path, kind, reason):
    path = _weights(tmp_path, kind)
    line = _one_line(_finetune(runner, recipe, "--set", f"model.pretrained={path}"))
    assert f"'model.pretrained': not a safe/readable weights file: {path} ({reason}" in line
    assert "weights_only" not in line


def test_pretrained_weights_of_another_architecture(runner, recipe, tmp_path):
    path = _weights(tmp_path, "good")
    line = _one_line(_finetune(runner, recipe, "--set", f"model.pretrained={path}"))
    assert f"'model.pretrained': the weights in {path} do not fit this architecture" in line


def test_pretrained_folder_points_to_local_dir(runner, recipe, tmp_path):
    line = _one_line(_finetune(runner, recipe, "--set", f"model.pretrained={tmp_path}"))
    assert f"'{tmp_path}' is not a file" in line and "local-dir:" in line


def test_export_output_below_a_file(runner, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.lock.toml").write_text(TINY_RECIPE)
    line = _one_line(runner.invoke(app, ["export", str(run), "--format", "safetensors",
                                         "--output", str(blocker / "sub")]))
    assert f"'{blocker}' is a file, so no folder can be made below it" in line


def test_eval_output_dir_below_a_file(runner, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    line = _one_line(runner.invoke(app, ["eval", "--model", "openclip:tracer-tiny-rn:none",
                                         "--output-dir", str(blocker / "sub")]))
    assert f"--output-dir '{blocker / 'sub'}': '{blocker}' is not a folder" in line


@pytest.mark.parametrize("value", [1e300, -1e39, 10**400, float("nan"), float("inf")])
def test_plugin_numbers_must_fit_float32(value):
    from tracer_cli.errors import RecipeError
    from tracer_cli.sdk.options import Options

    with pytest.raises(RecipeError, match=r"'task\.dropout': got .*float32") as err:
        Options({"dropout": value}, path="task").float("dropout", default=0.1)
    assert err.value.key == "task.dropout"


@pytest.mark.parametrize("override, fragments", [
    ("train.steps=" + str(2**70), ["'train.steps'", str(2**70), "between 1 and 1,000,000,000"]),
    ("train.batch_size=" + str(2**40), ["'train.batch_size'", "between 1 and 1,048,576"]),
    ("data.eval_batch_size=" + str(10**12), ["'data.eval_batch_size'", "1,048,576"]),
    ("data.num_workers=100000", ["'data.num_workers'", "between 0 and 1,024"]),
    ("train.checkpoint_every=" + str(10**10), ["'train.checkpoint_every'", "1,000,000,000"]),
    ("teacher.update_every=" + str(10**10), ["'teacher.update_every'", "1,000,000,000"]),
])
def test_counts_have_upper_bounds(runner, recipe, override, fragments):
    line = _one_line(_finetune(runner, recipe, "--set", override))
    assert all(f in line for f in fragments), line
    assert not (recipe.parent / "runs").exists()


@pytest.mark.parametrize("overrides, key, fragment", [
    # data.options is merged under every dataset that does not set the key itself.
    (["data.train=synth-photo-narrow", "data.options.size=1000000000000"], "data.train.size",
     "between 1 and 1,000,000"),
    (["data.train.size=500000", "data.train.image_size=128"], "data.train.size",
     "images of 128 px are kept in memory, at most 4 GiB of them: must be between 1 and 87,381"),
    (["data.ood[0].image_size=4096"], "data.ood[0].image_size", "between 16 and 128"),
    (["model.image_size=100000"], "model.image_size", "between 8 and 4,096"),
    (["data.train.seed=" + str(2**70)], "data.train.seed", "between 0 and 4,294,967,295"),
])
def test_dataset_and_model_sizes_are_bounded_before_anything_is_allocated(
        runner, recipe, monkeypatch, overrides, key, fragment):
    from tracer_plugins.datasets.synth import classification

    real_render = classification.render

    def bounded_render(domain, n, *args, **kwargs):
        assert n <= 64, f"rendering {n} images for a size out of bounds"
        return real_render(domain, n, *args, **kwargs)

    monkeypatch.setattr(classification, "render", bounded_render)
    sets = [arg for item in overrides for arg in ("--set", item)]
    line = _one_line(_finetune(runner, recipe, *sets))
    assert f"recipe key '{key}'" in line and fragment in line, line


@pytest.mark.parametrize("override, key", [
    ("run.name=\"two\\nlines\"", "run.name"),
    ("run.name=\"tab\\there\"", "run.name"),
    ("run.output_dir=\"runs\\u001b[2J\"", "run.output_dir"),
    ("data.ood[0].label=\"sketch\\nsketch\"", "data.ood[0].label"),
    ("data.train.name=\"synth\\rphoto\"", "data.train.name"),
])
def test_names_with_control_characters_are_refused(runner, recipe, override, key):
    line = _one_line(_finetune(runner, recipe, "--set", override))
    assert f"recipe key '{key}'" in line and "cannot contain control characters" in line, line
    assert not [p for p in recipe.parent.rglob("*") if p.is_dir()]  # no folder was made


def test_an_override_replaces_a_mistyped_value_and_errors_name_the_value_in_force(
        runner, recipe):
    recipe.write_text(TINY_RECIPE.replace("steps = 3", 'steps = "ten"'))
    result = _finetune(runner, recipe, "--set", "run.eval=false", "--max-steps", "2")
    assert result.exit_code == 0, result.stderr
    line = _one_line(_finetune(runner, recipe, "--set", "train.steps=twenty", "--overwrite"))
    assert line.endswith("recipe key 'train.steps': expected an integer, got 'twenty' (from "
                         "--set train.steps=twenty)"), line
    line = _one_line(_finetune(runner, recipe))
    assert "recipe key 'train.steps': expected an integer, got 'ten'" in line, line


@pytest.mark.parametrize("key", ["vocab_size", "hidden", "zeroshot_answers"])
def test_vqa_head_sizes_are_bounded(key):
    from tracer_cli.errors import RecipeError
    from tracer_plugins.tasks.vqa import make_task

    with pytest.raises(RecipeError, match=rf"'task\.{key}': got {10**12}; must be between"):
        make_task({key: 10**12})
