"""benchmarks/fair.py, planned but never run: the quick and full plans give every method the same
trials and seeds, a validation set that is a reported test set is refused, a winner on a grid's
edge plans the next point beyond it (from fabricated validation results), the persistence phase
spans at least 16x in length, and the headline takes the best baseline's WiSE-FT curve."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "fair.py"
ROOT = SCRIPT.parents[1]


@pytest.fixture(scope="module")
def fair():
    spec = importlib.util.spec_from_file_location("fair_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the default recipes are relative to the repository


def _plan(fair, tmp_path, *extra):
    return fair.build(fair.parse_args(["--out", str(tmp_path / "out"), *extra]))


def _sweep_runs(plan):
    by_method: dict[str, list] = {}
    for run in plan.plan.runs.values():
        if "sweep" in run.roles:
            by_method.setdefault(run.recipe.name, []).append(run)
    return by_method


@pytest.mark.parametrize("quick, points", [(["--quick"], 5), ([], 7)])
def test_every_method_gets_the_same_trials_and_seeds(fair, tmp_path, capsys, quick, points):
    plan = _plan(fair, tmp_path, *quick)
    fair.plan_all(plan)
    runs = _sweep_runs(plan)
    assert set(runs) == {"ft", "lpft", "flyp", "carot", "tracer"}
    for method, mine in runs.items():
        assert len(mine) == 2 * points, method
        assert sorted({r.seed for r in mine}) == [0, 1] and {r.pseed for r in mine} == {0}
        assert len({r.variant for r in mine}) == points  # distinct points, each at both seeds
        assert all(f"{r.name}.fairval" in plan.plan.tasks for r in mine)
    main = [r for r in plan.plan.runs.values() if "main-id" in r.roles]
    wise = {n.removesuffix(".wise") for n in plan.plan.tasks if n.endswith(".wise")}
    assert {r.name for r in main if r.recipe.method != "zeroshot"} <= wise  # TRACER, CaRot too
    assert any(r.recipe.name == "carot" for r in main)
    assert fair.main(["--out", str(tmp_path / "out"), "--dry-run", *quick]) == 0
    out = capsys.readouterr().out
    for method in runs:
        assert f"sweep {method}: {points} points x 2 seeds" in out
    total = float(out.split("\nestimate: ")[1].split(" min")[0])
    if quick:
        assert total <= 60, out[-800:]


def _recipe_with(tmp_path, old: str, new: str) -> str:
    text = (ROOT / "recipes" / "synth_tracer.toml").read_text()
    assert old in text
    path = tmp_path / "tracer.toml"
    path.write_text(text.replace(old, new))
    return str(path)


@pytest.mark.parametrize("old, new, named", [
    ('ood = ["synth-sketch",', 'ood = ["synth-mono", "synth-sketch",', "synth-mono"),
    ('id = [{ name = "synth-photo", colour_bias = 0.99 }]',
     'id = [{ name = "synth-photo", colour_bias = 0.99, seed = 1 }]', "synth-photo-val")])
def test_a_validation_set_that_is_a_reported_test_set_is_refused(fair, tmp_path, capsys, old,
                                                                 new, named):
    recipe = _recipe_with(tmp_path, old, new)
    assert fair.main(["--quick", "--dry-run", "--recipes", recipe, "--out",
                      str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert named in err and "reported test set" in err and err.count("\n") == 1


def _fabricate(plan, best: dict[str, float]) -> None:
    """Validation accuracy 0.5 everywhere, 0.6 at the runs whose variant is in ``best``."""
    for name, task in plan.plan.tasks.items():
        if name.endswith(".fairval") and task.result is None:
            hit = any(f"{k}={v!r}" in task.run.variant for k, v in best.items())
            acc = 0.6 if hit else 0.5
            task.result = {"datasets": {v["label"]: {"accuracy": acc, "n": 7000}
                                        for v in plan_protocols(plan)}}


def plan_protocols(plan):
    return sys.modules["fair_script"].PROTOCOLS.values()


def test_a_winner_on_the_edge_extends_the_grid(fair, tmp_path):
    plan = _plan(fair, tmp_path, "--quick")
    fair.sweep(plan)
    _fabricate(plan, {"teacher.beta": 0.2, "teacher.momentum_end": 0.97})
    assert fair.choose_point(plan, "tracer", "id")["teacher.beta"] == 0.2
    assert fair.choose_point(plan, "ft", "ood") == plan.own["ft"]  # ties: the recipe's values
    before = set(plan.plan.runs)
    added = fair.extend(plan)
    # CaRot's quick λ_orth grid is (0.2, 0.8): the recipe's 0.2 wins the tie on its low edge
    assert sorted((m, k) for m, k, _ in added) == [("carot", "distill.lambda_orth"),
                                                   ("carot", "teacher.momentum_end"),
                                                   ("tracer", "teacher.beta")]
    value = {k: v for _, k, v in added}
    assert value["distill.lambda_orth"] == pytest.approx(0.05)
    assert value["teacher.beta"] == pytest.approx(0.08)  # 0.2 x (0.2 / 0.5)
    assert value["teacher.momentum_end"] == pytest.approx(1 - 0.03 ** 2 / 0.1)
    fair.sweep(plan)
    new = [plan.plan.runs[n] for n in set(plan.plan.runs) - before]
    assert len(new) == 6 and sorted({r.seed for r in new}) == [0, 1]
    beta = [r for r in new if r.recipe.name == "tracer"]
    assert all("teacher.beta=0.08" in " ".join(r.argv) for r in beta)
    assert all(f"{r.name}.fairval" in plan.plan.tasks for r in new)
    # --quick adds one value per side: the new edge winner is not extended again
    _fabricate(plan, {"teacher.beta": value["teacher.beta"],
                      "teacher.momentum_end": value["teacher.momentum_end"]})
    assert fair.extend(plan) == []


@pytest.mark.parametrize("scale, values, low, steps, expected", [
    ("log", [0.01, 0.03, 0.1], True, 500, 0.01 / 3),
    ("log1m", [0.7, 0.9], True, 500, 0.1),     # 1 - m: 0.1, 0.3 -> 0.9
    ("log1m", [0.4, 0.8], True, 500, 0.0),     # 1 - 0.6^2/0.2 < 0: the hard limit 0
    ("log1m", [0.0, 0.7], True, 500, None),    # already at the limit
    ("steps", [1.0, 2.0], True, 200, None),    # lp_steps cannot go below 1
    ("steps", [100.0, 190.0], False, 200, 199.0)])
def test_a_step_beyond_the_edge_stops_at_hard_limits(fair, scale, values, low, steps, expected):
    got = fair.beyond(fair.Axis("k", tuple(values), scale), values, low, steps)
    assert (got is None) if expected is None else math.isclose(got, expected, abs_tol=1e-12)


def test_persistence_spans_16x_on_two_models_with_lag_beside_teachers(fair, tmp_path):
    plan = _plan(fair, tmp_path)
    assert max(plan.lengths) / min(plan.lengths) >= 16
    runs = fair.persistence_runs(plan, plan.own | {"flyp": plan.own["flyp"]})
    groups = {(g, n) for g, n, _ in runs}
    for length in plan.lengths:
        for group in ("flyp", "carot", fair.SCALED, "tracer"):
            assert (group, length) in groups
    assert {r.pseed for _, _, r in runs} == {0, 1}
    long = {g: r for g, n, r in runs if n == 8000}
    assert "train.steps=8000" in long["tracer"].argv and "train.warmup_steps=800" in \
        long["tracer"].argv
    assert "teacher.update_every=160" in long[fair.SCALED].argv  # 10 of 500 steps, scaled
    assert not any(a.startswith("teacher.update_every") for a in long["carot"].argv)
    for group, run in long.items():
        kind = "wise" if group == "flyp" else "lag"
        assert f"{run.name}.{kind}" in plan.plan.tasks
    assert plan.plan.tasks[f"{long['carot'].name}.lag"].argv[:2] == ["distill-check", "--run"]


def test_the_headline_is_the_gap_to_the_best_baseline_curve(fair):
    def row(label, method):
        return {"label": label, "group": label, "model": "student", "method": method,
                "id_accuracy": [0.95, 0.001], "avg_ood_accuracy": [0.85, 0.004]}

    def entry(curve, curve_ood):
        return {"row": "carot", "curve": curve, "curve_ood": curve_ood,
                "gap": 0.85 - curve_ood, "verdict": "x"}

    panel = {"rows": [row("carot", "carot"), row("zeroshot", "zeroshot")], "frontier": [
        entry("ft", 0.80), entry("flyp", 0.84), entry("tracer", 0.90),
        entry("tracer (recipe)", 0.91)]}  # TRACER's curves are never the baseline
    (head,) = fair.headline(panel)
    assert head["curve"] == "flyp" and head["gap"] == pytest.approx(0.01)
    assert head["se"] == 0.004


def test_the_report_block_and_the_persistence_figure(fair, tmp_path):
    def gap_row(length, gap):
        return {"length": length, "pretrained": "m0", "group": "tracer", "gap": gap,
                "se": 0.002, "verdict": "above",
                "lag": {"relative_lag_final": 0.5, "param_ratio_tail": None}}

    head = {"row": "tracer", "id": 0.98, "ood": 0.9, "curve": "flyp", "gap": 0.01, "se": 0.002,
            "verdict": "above"}
    res = {"command": "python benchmarks/fair.py --quick", "date": "2026-12-07", "wall_min": 1.0,
           "out": "o", "own": {"tracer": {"teacher.beta": 0.5}},
           "protocols": {"id": {"validation": fair.PROTOCOLS["id"],
                                "choice": {"tracer": {"teacher.beta": 0.2}},
                                "panels": [{"pretrained": "m0"}], "headline": [[head]]}},
           "persistence": [gap_row(500, 0.01), gap_row(8000, 0.03)]}
    res["figures"] = {"persistence": str(fair.plot_persistence(res["persistence"],
                                                                tmp_path / "p.png"))}
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    block = fair.report_block(res)
    assert "| tracer | teacher.beta 0.2 | teacher.beta 0.5 |" in block
    assert "| tracer | 98.00 | 90.00 | flyp | +1.00 ± 0.20 | above |" in block
    assert "| 8000 | m0 | tracer | +3.00 ± 0.20 | above | 0.500 | — |" in block
