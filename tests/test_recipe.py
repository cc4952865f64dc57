"""Recipe loading, validation messages, --set overrides and the lock file."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tracer_cli import recipe as R
from tracer_cli import rundir
from tracer_cli.errors import RecipeError, UsageError

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

MINIMAL = {"data": {"train": "synth-photo-narrow"}}


def test_minimal_recipe_gets_defaults():
    rec = R.from_dict(MINIMAL)
    assert rec.data.train == {"name": "synth-photo-narrow"}
    assert rec.teacher.kind == "wma" and rec.teacher.resolved_update_every() == 1
    assert rec.run.precision == "auto" and rec.train.checkpoint_every == 0


@pytest.mark.parametrize("raw, key, fragment", [
    ({**MINIMAL, "bogus": {}}, "bogus", "unknown section"),
    ({**MINIMAL, "train": {"stpes": 3}}, "train.stpes", "unknown key; allowed: method, steps"),
    ({**MINIMAL, "train": {"steps": "ten"}}, "train.steps", "expected an integer, got 'ten'"),
    ({**MINIMAL, "train": {"steps": True}}, "train.steps", "expected an integer"),
    ({**MINIMAL, "train": {"steps": 0}}, "train.steps", "must be between 1 and"),
    ({**MINIMAL, "train": {"steps": 5, "warmup_steps": 9}}, "train.warmup_steps", "between 0"),
    ({**MINIMAL, "teacher": {"kind": "swa"}}, "teacher.kind", "allowed: wma, ema, static, none"),
    ({**MINIMAL, "run": {"precision": "fp16"}}, "run.precision", "32-true"),
    ({**MINIMAL, "run": {"device": "tpu"}}, "run.device", "allowed: auto, cpu, cuda"),
    ({**MINIMAL, "distill": {"fd": -1}}, "distill.fd", "must be >= 0"),
    # tracer's default views (crd, fd, icl, xkd) compare with the untempered teacher
    ({**MINIMAL, "distill": {"temperature": 2}}, "distill.temperature",
     "only in plain soft-label distillation"),
    ({**MINIMAL, "train": {"schedule": "step"}}, "train.schedule",
     "allowed: cosine, constant, linear"),
    ({**MINIMAL, "train": {"beta1": 1}}, "train.beta1", "must be >= 0 and < 1"),
    ({**MINIMAL, "train": {"beta2": -0.5}}, "train.beta2", "must be >= 0 and < 1"),
    ({**MINIMAL, "train": {"eps": 0}}, "train.eps", "must be > 0"),
    ({**MINIMAL, "train": {"epochs": -1}}, "train.epochs", "must be between 0 and"),
    ({**MINIMAL, "train": {"epochs": 2, "steps": 100}}, "train.epochs", "set one of them"),
    ({**MINIMAL, "train": {"lock_image_unlocked_groups": 2}}, "train.lock_image_unlocked_groups",
     "only applies with train.lock_image = true"),
    ({**MINIMAL, "train": {"lock_text_freeze_layer_norm": False}},
     "train.lock_text_freeze_layer_norm", "only applies with train.lock_text = true"),
    ({**MINIMAL, "train": {"lock_text": True, "lock_text_unlocked_layers": -1}},
     "train.lock_text_unlocked_layers", "must be >= 0"),
    ({**MINIMAL, "train": {"lock_image": True, "method": "ft"}}, "train.lock_image",
     "which is train.method = 'lp'"),
    ({**MINIMAL, "train": {"lock_text": True, "method": "lp"}}, "train.lock_text",
     "trains no part of the backbone"),
    ({"run": {}}, "data", "required"),
    ({"data": {"train": 3}}, "data.train", "dataset name or a table"),
    ({"data": {"train": "a", "ood": ["x", {"name": "x"}]}}, "data.ood", "appear twice"),
])
def test_validation_errors_name_the_key(raw, key, fragment):
    with pytest.raises(RecipeError) as err:
        R.from_dict(raw)
    assert err.value.key == key
    assert fragment in str(err.value)
    assert f"recipe key '{key}'" in str(err.value)


def test_temperature_is_accepted_for_plain_distillation():
    rec = R.from_dict({**MINIMAL, "train": {"method": "carot"}, "distill": {"temperature": 2}})
    assert rec.distill.temperature == 2.0 and rec.distill.crd == rec.distill.xkd == 0


def test_ints_are_accepted_for_floats_and_plugin_keys_pass_through():
    rec = R.from_dict({**MINIMAL, "train": {"lr": 1}, "model": {"arch": "RN50", "x": 1},
                       "task": {"templates": ["a {}."]}})
    assert rec.train.lr == 1.0 and isinstance(rec.train.lr, float)
    assert rec.model.options == {"arch": "RN50", "x": 1}
    assert rec.task.options == {"templates": ["a {}."]}


def test_dataset_options_are_defaults_under_each_spec():
    rec = R.from_dict({"data": {"train": {"name": "a", "size": 5}, "ood": ["b"],
                                "options": {"size": 9, "seed": 1}}})
    assert rec.data.train == {"name": "a", "size": 5, "seed": 1}
    assert rec.data.ood == [{"name": "b", "size": 9, "seed": 1}]


@pytest.mark.parametrize("text, expected", [
    ("train.steps=5", (["train", "steps"], 5)),
    ("train.lr=1e-4", (["train", "lr"], 1e-4)),
    ("run.eval=false", (["run", "eval"], False)),
    ("model.pretrained=none", (["model", "pretrained"], "none")),
    ('model.pretrained="/a b/c.pt"', (["model", "pretrained"], "/a b/c.pt")),
    ("data.ood=synth-sketch,synth-noisy", (["data", "ood"], ["synth-sketch", "synth-noisy"])),
    ('data.ood=["a"]', (["data", "ood"], ["a"])),
])
def test_parse_override(text, expected):
    assert R.parse_override(text) == expected


@pytest.mark.parametrize("text", ["train.steps", "=3", "train..steps=3"])
def test_bad_override_is_usage_error(text):
    with pytest.raises(UsageError, match="KEY.PATH=VALUE"):
        R.parse_override(text)


def test_overrides_apply_and_keep_string_keys_strings():
    raw = {"run": {"name": "x"}, "data": {"train": "a"}}
    out = R.apply_overrides(raw, ["run.name=123", "train.steps=7", "data.options.size=10"])
    assert out["run"]["name"] == "123" and out["train"]["steps"] == 7
    assert out["data"]["options"] == {"size": 10}
    assert raw == {"run": {"name": "x"}, "data": {"train": "a"}}  # input untouched
    with pytest.raises(RecipeError, match="not a table"):
        R.apply_overrides(raw, ["run.name.x=1"])


def test_overrides_index_dataset_lists():
    """What a missing-root error suggests: --set data.ood[0].root=... (a name becomes a table)."""
    raw = {"data": {"train": "a", "id": "b", "ood": ["c", {"name": "d", "root": "/d"}]}}
    out = R.apply_overrides(raw, ["data.ood[0].root=/c", "data.ood[1].root=/e",
                                  "data.train.root=/a", "data.id[0].root=/b"])
    assert out["data"] == {"train": {"name": "a", "root": "/a"},
                           "id": [{"name": "b", "root": "/b"}],
                           "ood": [{"name": "c", "root": "/c"}, {"name": "d", "root": "/e"}]}
    assert R.apply_overrides(raw, ["data.ood[1]=x"])["data"]["ood"] == ["c", "x"]
    with pytest.raises(RecipeError, match=r"'data.ood'.*has 2 entries; cannot set 'data.ood\[2\]"):
        R.apply_overrides(raw, ["data.ood[2].root=/x"])
    with pytest.raises(RecipeError, match="'run.name'.*not a table"):
        R.apply_overrides({"run": {"name": "a"}}, ["run.name.x=1"])


def test_bad_files_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        R.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[run\nname=1")
    with pytest.raises(UsageError, match="not valid TOML"):
        R.load(bad)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_recipes_validate(path):
    rec = R.load(path)
    assert rec.data.train["name"]


def test_lock_file_round_trips(tmp_path):
    rec = R.load(RECIPES / "quickstart.toml", ["train.steps=420"])
    lock = rundir.write_recipe_lock(tmp_path, R.lock_text(rec, {"torch": "x", "git": None}))
    assert lock == tmp_path / "recipe.lock.toml"
    doc = tomllib.loads(lock.read_text())
    assert doc["lock"] == {"torch": "x"}
    doc.pop("lock")
    again = R.from_dict(doc)
    assert again.to_dict() == rec.to_dict()
    assert again.train.steps == 420
    assert not list(tmp_path.glob(".*.tmp"))


def test_epochs_resolve_to_whole_batches_and_the_lock_records_the_steps(tmp_path):
    rec = R.from_dict({**MINIMAL, "train": {"epochs": 3, "batch_size": 16, "warmup_steps": 5}})
    rec.train.resolve_epochs(70)  # 4 whole batches of 16; the last 6 examples are dropped
    assert rec.train.steps == 12
    doc = tomllib.loads(R.lock_text(rec, {}))
    assert doc["train"]["steps"] == 12 and "epochs" not in doc["train"]
    assert doc["lock"]["epochs"] == 3
    doc.pop("lock")
    assert R.from_dict(doc).train.steps == 12  # the lock reads back as a run of 12 steps


def test_an_epochs_recipe_prints_without_steps_and_reads_back():
    rec = R.from_dict({**MINIMAL, "train": {"epochs": 3}})
    doc = tomllib.loads(R.recipe_text(rec))
    assert doc["train"]["epochs"] == 3 and "steps" not in doc["train"]
    assert R.from_dict(doc).train.epochs == 3


def test_epochs_too_short_for_the_warmup_name_the_key():
    rec = R.from_dict({**MINIMAL, "train": {"epochs": 1, "batch_size": 16, "warmup_steps": 5}})
    with pytest.raises(RecipeError) as err:
        rec.train.resolve_epochs(70)
    assert err.value.key == "train.warmup_steps" and "train.steps (4)" in str(err.value)
    with pytest.raises(RecipeError, match="fewer than one batch"):
        rec.train.resolve_epochs(15)


def test_resume_free_plugin_keys_are_the_ones_their_plugins_declare(monkeypatch):
    """Core keys are free by the core's list; plugin keys only when the backbone or task factory
    declares them (``resume_free_keys``): openclip's cache_dir, classification's prompts."""
    from tracer_plugins.backbones.openclip import make_backbone
    from tracer_plugins.tasks.classification import make_task

    raw = {**MINIMAL, "model": {"arch": "tracer-tiny-rn", "cache_dir": "/a", "image_size": 32},
           "task": {"templates": ["a {}."]}, "run": {"name": "x"}}
    saved = R.from_dict(raw).to_dict()
    changed = R.from_dict({**raw, "model": {**raw["model"], "cache_dir": "/b"},
                           "task": {"templates_file": "prompts.txt"}, "run": {"name": "y"}})
    assert R.resume_differences(saved, changed) == []
    resized = R.from_dict({**raw, "model": {**raw["model"], "image_size": 64}})
    assert R.resume_differences(saved, resized) == [
        "model.image_size (checkpoint: 32, now: 64)"]
    monkeypatch.setattr(make_backbone, "resume_free_keys", ())  # declares none
    monkeypatch.delattr(make_task, "resume_free_keys")
    assert R.resume_differences(saved, changed) == [
        "model.cache_dir (checkpoint: '/a', now: '/b')",
        "task.templates (checkpoint: ['a {}.'], now: '(absent)')",
        "task.templates_file (checkpoint: '(absent)', now: 'prompts.txt')"]
