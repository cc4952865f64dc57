"""Recipes under fuzzing: malformed TOML, wrong types, out-of-range values and unknown keys.

Whatever the input, loading a recipe either succeeds or raises a UsageError (exit 2) whose message
names the key path ("recipe key 'train.steps': ...") or says the file is not valid TOML; never
another exception. The CLI turns the same inputs into one line on stderr and exit 2, before any
model is built.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import tomli_w
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tracer_cli import recipe as R
from tracer_cli.cli import app
from tracer_cli.errors import RecipeError, UsageError

BASE: dict[str, Any] = {
    "run": {"name": "fuzz", "seed": 0, "device": "cpu"},
    "model": {"backbone": "openclip", "arch": "tracer-tiny-rn", "pretrained": "none"},
    "data": {"train": {"name": "synth-photo-narrow", "size": 64}, "ood": ["synth-sketch"]},
    "task": {"name": "classification"},
    "train": {"steps": 3, "batch_size": 8, "lr": 1e-4, "warmup_steps": 1},
    "teacher": {"kind": "wma", "beta": 0.5},
    "distill": {"lambda_sd": 0.9, "fd": 2000.0},
}
SECTION_CLASSES = {"run": R.RunConfig, "model": R.ModelConfig, "data": R.DataConfig,
                   "task": R.TaskConfig, "train": R.TrainConfig, "teacher": R.TeacherConfig,
                   "distill": R.DistillWeights}
SCALARS = (bool, int, float, str)


def _typed_keys() -> list[tuple[str, str, Any]]:
    """(section, key, annotation) of every scalar key the core validates itself."""
    out = []
    for section, cls in SECTION_CLASSES.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            hint = hints[f.name]
            if hint in SCALARS or typing.get_origin(hint) is Literal:
                out.append((section, f.name, hint))
    return out


TYPED_KEYS = _typed_keys()
# Sections whose every key is the core's (model and task pass unknown keys on to their plugin).
CLOSED_SECTIONS = ("run", "train", "teacher", "distill")

scalars = st.one_of(st.booleans(), st.integers(min_value=-2**63, max_value=2**63 - 1),
                    st.floats(), st.text(max_size=12), st.dates(), st.datetimes(), st.times())
toml_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.text(min_size=1, max_size=6), inner, max_size=3), max_leaves=8)
words = st.text(min_size=1, max_size=10)


def wrong_type(hint: Any) -> st.SearchStrategy:
    """Values of a type the key does not accept (ints are accepted for floats)."""
    containers = st.lists(scalars, max_size=2) | st.dictionaries(words, scalars, max_size=2)
    if typing.get_origin(hint) is Literal:
        allowed = typing.get_args(hint)
        return st.one_of(st.text(max_size=12).filter(lambda v: v not in allowed),
                         st.integers(), st.booleans(), containers)
    others = {bool: st.integers() | st.text(max_size=8) | st.floats(),
              int: st.booleans() | st.text(max_size=8) | st.floats(),
              float: st.booleans() | st.text(max_size=8) | st.sampled_from(
                  [float("nan"), float("inf"), -float("inf")]),
              str: st.integers() | st.floats() | st.booleans()}
    return others[hint] | containers


@st.composite
def invalid_recipes(draw) -> tuple[dict[str, Any], str]:
    """BASE with exactly one mistake, and the key path the error must name."""
    raw = {k: dict(v) for k, v in BASE.items()}
    kind = draw(st.sampled_from(["type", "negative", "unknown key", "unknown section"]))
    if kind == "unknown section":
        name = draw(words.filter(lambda w: w not in R.SECTIONS))
        raw[name] = draw(toml_values)
        return raw, name
    if kind == "unknown key":
        section = draw(st.sampled_from(CLOSED_SECTIONS))
        known = {f.name for f in dataclasses.fields(SECTION_CLASSES[section])}
        key = draw(words.filter(lambda w: w not in known))
    else:
        pool = TYPED_KEYS if kind == "type" else \
            [t for t in TYPED_KEYS if t[2] in (int, float)]
        section, key, hint = draw(st.sampled_from(pool))
    if kind == "type":
        value = draw(wrong_type(hint))
    elif kind == "negative":
        value = draw(st.integers(max_value=-1) if hint is int else
                     st.floats(max_value=-1e-9, allow_infinity=False))
    else:
        value = draw(toml_values)
    raw[section][key] = value
    return raw, f"{section}.{key}"


@st.composite
def mutated_recipes(draw) -> dict[str, Any]:
    """BASE with a few arbitrary replacements, deletions and additions anywhere."""
    raw: dict[str, Any] = {k: dict(v) for k, v in BASE.items()}
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from([*R.SECTIONS, draw(words)]))
        action = draw(st.sampled_from(["set", "delete", "replace section"]))
        if action == "replace section":
            raw[section] = draw(toml_values)
        elif action == "delete":
            raw.pop(section, None)
        else:
            table = raw.setdefault(section, {})
            if isinstance(table, dict):
                keys = [k for _, k, _ in TYPED_KEYS] + ["train", "id", "ood", "options", "arch"]
                table[draw(st.sampled_from(keys) | words)] = draw(toml_values)
    return raw


def _load(path: Path, text: str, overrides: list[str] | None = None) -> R.Recipe:
    path.write_text(text, encoding="utf-8")
    return R.load(path, overrides)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz") / "recipe.toml"


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=invalid_recipes())
def test_every_single_mistake_is_reported_at_its_key_path(scratch, case):
    raw, key = case
    with pytest.raises(RecipeError) as err:
        _load(scratch, tomli_w.dumps(raw))
    assert err.value.key == key
    assert str(err.value).startswith(f"recipe key '{key}': ")


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=mutated_recipes())
def test_arbitrary_recipes_validate_or_fail_with_a_usage_error(scratch, raw):
    try:
        recipe = _load(scratch, tomli_w.dumps(raw))
    except RecipeError as exc:
        assert str(exc).startswith(f"recipe key '{exc.key}': ") and exc.key
    else:
        R.from_dict(recipe.to_dict())  # a valid recipe round-trips through its lock form


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200) | st.binary(max_size=200).map(
    lambda b: b.decode("latin-1")))
def test_malformed_toml_is_a_usage_error(scratch, text):
    try:
        _load(scratch, text)
    except RecipeError:
        pass
    except UsageError as exc:
        assert "not valid TOML" in str(exc)


@settings(max_examples=300, deadline=None)
@given(sets=st.lists(st.text(max_size=30), min_size=1, max_size=3))
def test_arbitrary_overrides_are_usage_errors(scratch, sets):
    try:
        _load(scratch, tomli_w.dumps(BASE), sets)
    except UsageError as exc:
        assert "recipe key '" in str(exc) or "--set" in str(exc)


def test_fuzzer_findings_stay_fixed(scratch):
    """Inputs that used to escape validation and crash later with a traceback."""
    cases = {
        "run.seed": {"run": {"seed": -1}},                  # numpy rejects negative seeds
        "run.name": {"run": {"name": ".."}},                # --overwrite would delete the parent
        "run.device": {"run": {"device": "cuda:x"}},        # torch.device raises RuntimeError
        "train.lr": {"train": {"lr": float("inf")}},        # passed ">= 0"
        "teacher.beta": {"teacher": {"beta": float("nan")}},
    }
    for key, patch in cases.items():
        raw = {k: {**v, **patch.get(k, {})} for k, v in BASE.items()}
        with pytest.raises(RecipeError) as err:
            _load(scratch, tomli_w.dumps(raw))
        assert err.value.key == key
    with pytest.raises(UsageError, match="not valid TOML"):
        _load(scratch, "x = " + "[" * 5000 + "]" * 5000)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=invalid_recipes() | st.text(max_size=80).map(lambda t: ({"text": t}, None)))
def test_cli_exits_2_with_one_line_and_builds_nothing(scratch, case):
    from typer.testing import CliRunner

    raw, key = case
    text = raw["text"] if key is None else tomli_w.dumps(raw)
    scratch.write_text(text, encoding="utf-8")
    out = scratch.parent / "runs"
    result = CliRunner().invoke(app, ["finetune", str(scratch), "--output-dir", str(out)])
    if key is None and result.exit_code != 2:
        return  # random text can be a valid (if odd) TOML document without a [data] table
    assert result.exit_code == 2, result.stderr
    assert result.stderr.count("error:") == 1 and "Traceback" not in result.stderr
    expected = f"recipe key '{key}'" if key else ("recipe key '", "not valid TOML")
    assert any(e in result.stderr for e in ([expected] if key else expected)), result.stderr
    assert not out.exists()  # nothing was built or written


def test_max_steps_with_a_section_that_is_not_a_table(runner, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(tomli_w.dumps({**BASE, "train": 5}))  # used to be an AttributeError
    result = runner.invoke(app, ["finetune", str(recipe), "--max-steps", "2"])
    assert result.exit_code == 2 and "recipe key 'train': is 5, not a table" in result.stderr
