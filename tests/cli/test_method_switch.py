"""``tracer finetune RECIPE --set train.method=X`` trains X: the loss parts logged in metrics.jsonl
are those of a recipe written for X (2-step tiny runs), and the lock file says X. ``--print-recipe``
shows the resolved recipe without training."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_RECIPE
from tracer_cli import recipe as recipe_mod
from tracer_cli.cli import app
from tracer_cli.engine.run import run_dir_of

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

RUN = ["--max-steps", "2", "--set", "run.eval=false", "--set", "train.checkpoint_every=0"]


def _written_for(tmp_path: Path, method: str) -> Path:
    """TINY_RECIPE as a recipe of ``method`` (its [teacher] and [distill] from the method)."""
    path = tmp_path / f"{method}.toml"
    text = TINY_RECIPE[:TINY_RECIPE.index("[teacher]")]
    path.write_text(text.replace("[train]\n", f'[train]\nmethod = "{method}"\n'))
    return path


def _explicit(tmp_path: Path, method: str) -> Path:
    """The resolved recipe of ``method``, every key written out (as in a lock file)."""
    path = tmp_path / f"{method}-explicit.toml"
    path.write_text(recipe_mod.recipe_text(recipe_mod.load(_written_for(tmp_path, method))))
    return path


def _loss_keys(runner, recipe: Path, out: Path, *sets: str) -> set[str]:
    """The keys of the last train record of a 2-step run (step 2: the teacher terms are there)."""
    result = runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(out), *RUN,
                                 *[arg for s in sets for arg in ("--set", s)]])
    assert result.exit_code == 0, result.stderr
    run_dir = out / "tiny"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    [last] = [r for r in records if r["event"] == "train" and r["step"] == 2]
    return set(last) - {"time"}


@pytest.mark.parametrize("source, target", [("tracer", "flyp"), ("tracer", "ft"),
                                            ("flyp", "carot")])
def test_a_switched_run_logs_the_loss_parts_of_the_new_method(runner, tmp_path, source, target):
    switched = _loss_keys(runner, _explicit(tmp_path, source), tmp_path / "switched",
                          f"train.method={target}")
    native = _loss_keys(runner, _written_for(tmp_path, target), tmp_path / "native")
    assert switched == native
    lock = tomllib.loads((tmp_path / "switched" / "tiny" / "recipe.lock.toml").read_text())
    assert lock["train"]["method"] == target
    assert lock["teacher"] == tomllib.loads(
        (tmp_path / "native" / "tiny" / "recipe.lock.toml").read_text())["teacher"]


def test_the_quickstart_switched_to_flyp_has_no_teacher_terms(runner, tiny_recipe, tmp_path):
    keys = _loss_keys(runner, tiny_recipe, tmp_path / "runs", "train.method=flyp")
    assert "loss_clip" in keys
    assert not [k for k in keys if k.startswith(("sd_", "kl_", "reg_", "loss_sd"))], keys


def test_print_recipe_prints_the_resolved_recipe_and_trains_nothing(runner, tiny_recipe,
                                                                    tmp_path):
    out = tmp_path / "runs"
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out),
                                 "--set", "train.method=flyp", "--max-steps", "2",
                                 "--print-recipe"])
    assert result.exit_code == 0, result.stderr
    printed = tomllib.loads(result.stdout)
    expected = recipe_mod.load(tiny_recipe, ["train.method=flyp", "train.steps=2",
                                             "train.warmup_steps=1"])
    assert printed == tomllib.loads(recipe_mod.recipe_text(expected))
    assert printed["train"]["method"] == "flyp" and printed["train"]["steps"] == 2
    assert printed["teacher"]["kind"] == "none" and printed["distill"]["lambda_sd"] == 0
    assert not out.exists() and not run_dir_of(expected, out).exists()
    [notice] = result.stderr.splitlines()
    assert notice.startswith("notice: train.method = 'flyp' replaces the recipe's own method")
    # What it prints is a recipe: loaded back, it resolves to the same recipe.
    again = tmp_path / "printed.toml"
    again.write_text(result.stdout)
    assert recipe_mod.load(again).to_dict() == expected.to_dict()
