"""``--set train.method=X`` trains X as its defaults define it: from every method's shipped recipe
to every other method, the resolved [teacher] and [distill] tables are X's defaults unless the same
command line sets them; one notice says what was reset. Also ``--set key=`` (removal) and the
methods without a teacher refusing teacher and distillation keys written in a recipe file."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.conftest import ROOT, TINY_RECIPE
from tracer_cli import recipe as recipe_mod
from tracer_cli.errors import RecipeError
from tracer_cli.events import Reporter, use_reporter

# The shipped recipe of each method: quickstart.toml is TRACER's, synth_<method>.toml the others'.
RECIPES = {"tracer": ROOT / "recipes" / "quickstart.toml",
           **{m: ROOT / "recipes" / f"synth_{m}.toml" for m in recipe_mod.METHODS
              if m != "tracer"}}


class _Notices(Reporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def notice(self, message: str) -> None:
        self.lines.append(message)


def _load(path: Path, *sets: str) -> tuple[recipe_mod.Recipe, list[str]]:
    notices = _Notices()
    with use_reporter(notices):
        return recipe_mod.load(path, list(sets)), notices.lines


def _defaults(method: str) -> dict:
    """The resolved recipe of a method that sets nothing but its name."""
    return recipe_mod.from_dict({"data": {"train": "synth-photo"},
                                 "train": {"method": method}}).to_dict()


def test_each_method_has_its_shipped_recipe():
    for method, path in RECIPES.items():
        assert recipe_mod.load(path).train.method == method, path


@pytest.mark.parametrize("source, target", [
    pair for pair in itertools.product(recipe_mod.METHODS, repeat=2) if pair[0] != pair[1]])
def test_a_method_switch_takes_the_new_methods_defaults(source, target):
    recipe, notices = _load(RECIPES[source], f"train.method={target}")
    resolved, expected = recipe.to_dict(), _defaults(target)
    assert resolved["train"]["method"] == target
    assert resolved["teacher"] == expected["teacher"]
    assert resolved["distill"] == expected["distill"]
    assert recipe.train.lp_steps == 0  # lpft's probing phase is its own
    raw = recipe_mod.read_toml(RECIPES[source])
    owned = [k for k in ("teacher", "distill") if raw.get(k)] + \
        (["train.lp_steps"] if "lp_steps" in raw["train"] else [])
    if owned:
        [line] = notices
        assert line.startswith(f"notice: train.method = '{target}' replaces the recipe's own "
                               "method: ") and f"reset to {target}'s defaults" in line
        for key in owned:
            assert key in line
    else:
        assert notices == []


@pytest.mark.parametrize("order", ["method first", "method last"])
def test_keys_set_on_the_same_command_line_are_kept(order):
    sets = ["distill.lambda_sd=0.3", "teacher.update_every=20"]
    sets = ["train.method=carot", *sets] if order == "method first" else \
        [*sets, "train.method=carot"]
    recipe, [line] = _load(RECIPES["tracer"], *sets)
    assert recipe.distill.lambda_sd == 0.3 and recipe.teacher.update_every == 20
    assert (recipe.teacher.kind, recipe.distill.lambda_orth, recipe.distill.fd,
            recipe.distill.lambda_fn) == ("ema", 0.2, 0.0, 0.0)  # CaRot's, not the recipe's
    assert "distill.lambda_sd" not in line and "teacher.update_every" not in line
    assert "distill.fd" in line and "teacher.kind" in line


def test_the_same_method_resets_nothing():
    recipe, notices = _load(RECIPES["tracer"], "train.method=tracer", "distill.fd=100")
    assert notices == [] and recipe.distill.fd == 100 and recipe.teacher.update_every == 1


def test_a_teacher_key_on_the_command_line_of_a_method_without_one_is_refused():
    with pytest.raises(RecipeError) as err:
        _load(RECIPES["tracer"], "train.method=flyp", "distill.lambda_fn=0.05")
    assert err.value.key == "distill.lambda_fn"


@pytest.mark.parametrize("method", ["flyp", "ft", "zeroshot"])
def test_a_recipe_file_whose_method_has_no_teacher_refuses_teacher_keys(tmp_path, method):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE.replace("[train]\n", f'[train]\nmethod = "{method}"\n'))
    with pytest.raises(RecipeError) as err:
        recipe_mod.load(path)
    assert err.value.key == "teacher.kind"
    assert f"train.method = '{method}'" in str(err.value) and "takes no teacher" in str(err.value)
    path.write_text(TINY_RECIPE.replace("[train]\n", f'[train]\nmethod = "{method}"\n')
                    .replace('kind = "wma"', 'kind = "none"'))
    with pytest.raises(RecipeError) as err:
        recipe_mod.load(path)
    assert err.value.key == "distill.lambda_sd"
    assert "has no distillation or projection regularizer" in str(err.value)


def test_an_empty_value_removes_a_key(tmp_path):
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE.replace("seed = 0", "seed = 5"))
    recipe, _ = _load(path, "run.seed=", "data.ood[0]=", "distill.lambda_fn=",
                      "loggers.wandb.project=")
    assert recipe.run.seed == 0  # the default again
    assert [d["name"] for d in recipe.data.ood] == ["synth-noisy"]
    assert recipe.distill.lambda_fn == 0.05  # tracer's default, not absent
    assert recipe.loggers == {}  # removing what is not there creates nothing
    with pytest.raises(RecipeError) as err:  # an empty string is a value, and not a name
        _load(path, 'run.name=""')
    assert err.value.key == "run.name"


def test_removing_the_method_switches_to_tracer():
    recipe, [line] = _load(RECIPES["carot"], "train.method=")
    assert recipe.train.method == "tracer" and recipe.teacher.kind == "wma"
    assert recipe.to_dict()["distill"] == _defaults("tracer")["distill"]
    assert "train.method = 'tracer'" in line
