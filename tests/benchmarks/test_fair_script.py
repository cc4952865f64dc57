"""benchmarks/fair.py, planned but never run: the quick and full plans give every method the same
trials and seeds, a validation set that is a reported test set is refused, a winner on a grid's
edge plans the next point beyond it (from fabricated validation results), the persistence phase
spans at least 16x in length, and the headline takes the best baseline's WiSE-FT curve; on VQA
and retrieval too (--task), where the score is the task's primary metric and the headline,
report and figure use its keys."""

from __future__ import annotations

import importlib.util
import json
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


def test_an_interrupted_plan_says_how_to_resume_and_keeps_its_time(fair, tmp_path, capsys,
                                                                    monkeypatch):
    """Ctrl-C during the plan: exit 130 (the shell's code for SIGINT), a line that says what
    finished and how to resume, and the invocation's time in the ledger (tasks had finished)."""
    def interrupted(plan, ui, ex, pruner):
        ui.done = 3  # three tasks finished before the interrupt
        raise KeyboardInterrupt

    monkeypatch.setattr(fair, "execute", interrupted)
    out = tmp_path / "out"
    assert fair.main(["--quick", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert f"fair: interrupted after 3 tasks; finished runs stay cached in {out}" in err
    assert "rerun the same command to resume" in err
    ledger = json.loads((out / "fair-time.json").read_text())
    assert [i["tasks_run"] for i in ledger["invocations"]] == [3]


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
                "id_accuracy": [0.95, 0.001], "avg_ood_accuracy": [0.85, 0.004], "n_runs": 2}

    def curve(ood, se=0.003):  # flat in OOD across ID 0.90 .. 1.00
        return [{"alpha": a, "id_accuracy": [0.90 + 0.1 * a, 0.001],
                 "avg_ood_accuracy": [ood, se]} for a in (0.0, 1.0)]

    panel = {"rows": [row("carot", "carot"), row("zeroshot", "zeroshot")],
             "wise": {"ft": curve(0.80), "flyp": curve(0.84), "tracer": curve(0.90),
                      "tracer (recipe)": curve(0.91)}}  # TRACER's curves are never the baseline
    (head,) = fair.headline(panel)
    assert head["curve"] == "flyp" and head["gap"] == pytest.approx(0.01)
    assert head["se"] == pytest.approx(0.005)  # the row's 0.004 and the curve's 0.003 combined
    assert fair.headline({**panel, "wise": {"tracer": curve(0.9)}}) == []  # no baseline curve
    (far,) = fair.headline({**panel, "wise": {"flyp": curve(0.84)[:1]}})  # reaches ID .90 only
    assert far["gap"] is None and far["verdict"] == "outside every baseline curve"


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


# --------------------------------------------------------------------------- VQA and retrieval

NEW_TASKS = {"vqa": {"ft", "flyp", "carot", "tracer"}, "retrieval": {"flyp", "carot", "tracer"}}


@pytest.mark.parametrize("task", sorted(NEW_TASKS))
@pytest.mark.parametrize("quick, points", [(["--quick"], 5), ([], 7)])
def test_every_method_gets_the_same_trials_and_seeds_on_vqa_and_retrieval(fair, tmp_path, capsys,
                                                                         task, quick, points):
    plan = _plan(fair, tmp_path, "--task", task, *quick)
    assert plan.task is fair.TASKS[task] and plan.lengths == []  # persistence: classification's
    fair.plan_all(plan)
    runs = _sweep_runs(plan)
    assert set(runs) == NEW_TASKS[task]
    for method, mine in runs.items():
        assert len(mine) == 2 * points, method
        assert sorted({r.seed for r in mine}) == [0, 1] and {r.pseed for r in mine} == {0}
        assert len({r.variant for r in mine}) == points
        assert all(f"{r.name}.fairval" in plan.plan.tasks for r in mine)
    main = [r for r in plan.plan.runs.values() if "main-id" in r.roles]
    assert {r.recipe.name for r in main} == NEW_TASKS[task] | {"zeroshot"}
    assert {r.pseed for r in main} == ({0} if quick else {0, 1, 2})
    wise = {n.removesuffix(".wise") for n in plan.plan.tasks if n.endswith(".wise")}
    assert {r.name for r in main if r.recipe.method != "zeroshot"} <= wise
    assert fair.main(["--task", task, "--out", str(tmp_path / "out"), "--dry-run", *quick]) == 0
    out = capsys.readouterr().out
    for method in runs:
        assert f"sweep {method}: {points} points x 2 seeds" in out
    assert f"{fair.TASK_STEP_S} s/step" in out
    assert ("note: no ft: retrieval has no task head" in out) == (task == "retrieval")
    total = float(out.split("\nestimate: ")[1].split(" min")[0])
    assert total <= (60 if quick else 240), out[-800:]


def test_the_task_recipes_differ_from_their_quickstart_only_in_the_method(fair):
    """Equal footing: every method's recipe is the quickstart's problem and schedule."""
    from tracer_cli import recipe as R

    def shared(path):
        doc = R.load(ROOT / path).to_dict()
        doc["train"].pop("method")
        return {k: doc[k] for k in ("model", "data", "task", "train")}

    for name in NEW_TASKS:
        recipes = fair.TASKS[name].recipes
        assert recipes[-1] == f"recipes/quickstart_{name}.toml"  # TRACER's is the quickstart
        for path in recipes[:-1]:
            assert shared(path) == shared(recipes[-1]), path


@pytest.mark.parametrize("task", sorted(NEW_TASKS))
def test_the_validation_sets_are_not_reported_and_match_the_id_test_set(fair, task):
    from tracer_cli import recipe as R

    spec = fair.TASKS[task]
    tracer = R.load(ROOT / spec.recipes[-1])
    reported = {s.get("label") or s["name"] for s in tracer.data.id + tracer.data.ood}
    assert not reported & {v["label"] for v in spec.protocols.values()}
    (id_set,) = tracer.data.id
    val = spec.protocols["id"]
    assert val["seed"] == 1 and id_set.get("seed", 0) == 0  # a disjoint draw of the same task
    strip = {"label", "seed"}
    assert {k: v for k, v in val.items() if k not in strip} == \
        {k: v for k, v in id_set.items() if k not in strip}
    assert fair._domains(spec.protocols["ood"], spec) == {"mono"}
    assert not any(fair._domains(s, spec) & {"mono"} for s in tracer.data.ood)


def _task_recipe(tmp_path, task: str, old: str, new: str) -> str:
    text = (ROOT / "recipes" / f"quickstart_{task}.toml").read_text()
    assert old in text
    path = tmp_path / f"{task}.toml"
    path.write_text(text.replace(old, new))
    return str(path)


OOD_LIST = 'ood = [\n'  # the quickstarts' OOD list opens on its own line


@pytest.mark.parametrize("task, old, new, named", [
    ("vqa", OOD_LIST, OOD_LIST + '    { name = "synth-vqa", label = "vqa-grey", '
     'domains = ["mono"], kinds = ["shape", "size"] },\n', "vqa-mono"),
    ("vqa", 'label = "vqa-photo", domains', 'label = "vqa-photo", seed = 1, domains',
     "vqa-photo-val"),
    ("retrieval", OOD_LIST, OOD_LIST + '    { name = "synth-captions", label = "captions-grey", '
     'domain = "mono" },\n', "captions-mono"),
    ("retrieval", 'label = "captions-noisy", domain = "noisy"',
     'label = "captions-mono", domain = "noisy"', "captions-mono"),
    ("retrieval", 'label = "captions-photo", domain = "photo"',
     'label = "captions-photo", seed = 1, domain = "photo"', "captions-photo-val")])
def test_a_reported_validation_set_is_refused_on_vqa_and_retrieval(fair, tmp_path, capsys, task,
                                                                    old, new, named):
    recipe = _task_recipe(tmp_path, task, old, new)
    assert fair.main(["--task", task, "--quick", "--dry-run", "--recipes", recipe, "--out",
                      str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert named in err and "reported test set" in err and err.count("\n") == 1


@pytest.mark.parametrize("task, recipe, said", [
    ("retrieval", "recipes/synth_flyp.toml", "task.name = 'classification'"),
    ("vqa", "recipes/quickstart_retrieval.toml", "task.name = 'retrieval'"),
    ("classification", "recipes/vqa_ft.toml", "task.name = 'vqa'")])
def test_a_recipe_of_another_task_is_refused(fair, tmp_path, capsys, task, recipe, said):
    assert fair.main(["--task", task, "--quick", "--dry-run", "--recipes", recipe, "--out",
                      str(tmp_path / "o")]) == 2
    assert said in capsys.readouterr().err


def test_retrieval_refuses_a_head_method(fair, tmp_path, capsys):
    recipe = _task_recipe(tmp_path, "retrieval", 'method = "tracer"', 'method = "ft"')
    text = Path(recipe).read_text()
    Path(recipe).write_text(text[:text.index("\n[teacher]")])
    assert fair.main(["--task", "retrieval", "--quick", "--dry-run", "--recipes", recipe, "--out",
                      str(tmp_path / "o")]) == 2
    assert "trains a task head" in capsys.readouterr().err


@pytest.mark.parametrize("task, metric, decoy", [("vqa", "accuracy", "vqa_score"),
                                                 ("retrieval", "mean_recall", "i2t_r1")])
def test_the_score_is_the_tasks_primary_metric(fair, tmp_path, task, metric, decoy):
    """From fabricated ``.fairval`` documents: the primary metric decides, another metric of the
    same document (higher at another point) does not."""
    plan = _plan(fair, tmp_path, "--task", task, "--quick")
    fair.sweep(plan)
    labels = [v["label"] for v in plan.task.protocols.values()]
    for name, t in plan.plan.tasks.items():
        if name.endswith(".fairval"):
            variant = " ".join(t.run.variant)
            primary = 0.6 if "teacher.beta=0.2" in variant else 0.5
            other = 0.9 if "distill.lambda_sd=3.0" in variant else 0.1
            t.result = {"datasets": {label: {metric: primary, decoy: other} for label in labels}}
    for protocol in plan.task.protocols:
        point = fair.choose_point(plan, "tracer", protocol)
        assert point == {"teacher.beta": 0.2, "distill.lambda_sd": 0.9}
        assert fair.scores(plan, "tracer", protocol)["teacher.beta"][0.2] == [0.6, 0.6]


def test_the_headline_report_and_figure_use_the_tasks_keys(fair, tmp_path):
    keys = fair.TASKS["retrieval"].keys
    assert keys == ("id_mean_recall", "avg_ood_mean_recall")  # retrieval has no ECE

    def row(label, method):
        return {"label": label, "group": label, "model": "student", "method": method,
                keys[0]: [0.70, 0.002], keys[1]: [0.42, 0.003], "n_runs": 2}

    panel = {"pretrained": "m0", "rows": [row("carot", "carot"), row("zeroshot", "zeroshot")],
             "wise": {"flyp": [{"alpha": a, keys[0]: [0.6 + 0.1 * a, 0.001],
                                keys[1]: [0.41, 0.001]} for a in (0.0, 0.5, 1.0)]},
             }
    (head,) = fair.headline(panel, *keys[:2])
    assert (head["id"], head["ood"], head["curve"]) == (0.70, 0.42, "flyp")
    assert head["gap"] == pytest.approx(0.01)
    assert head["se"] == pytest.approx(math.hypot(0.003, 0.001))
    assert fair.headline(panel) == []  # classification's keys: no such numbers here
    res = {"task": "retrieval", "command": "python benchmarks/fair.py --task retrieval --quick",
           "date": "2026-12-07", "wall_min": 1.0, "out": "o",
           "own": {"carot": {"distill.lambda_sd": 1.5}},
           "protocols": {"ood": {"validation": fair.TASKS["retrieval"].protocols["ood"],
                                 "choice": {"carot": {"distill.lambda_sd": 4.5}},
                                 "panels": [panel], "headline": [[head]]}},
           "sweep_points": [{"method": "carot", keys[0]: 0.69, keys[1]: 0.415}],
           "persistence": []}
    path = fair.plot_frontier(res, tmp_path / fair.TASKS["retrieval"].figure("frontier"))
    assert path.name == "fair_retrieval_frontier.png" and path.read_bytes()[:4] == b"\x89PNG"
    res["figures"] = {"frontier": str(path)}
    block = fair.report_block(res)
    assert block.startswith("## The fair benchmark: retrieval")
    assert "`o/fair-retrieval.json`" in block and "no ft: retrieval has no task head" in block
    assert "at the row's ID mean recall" in block
    assert "| carot | 70.00 | 42.00 | flyp | +1.00 ± 0.32 | above |" in block  # SE √(.3² + .1²)


# --------------------------------------------------------------------------- time across resumes

def test_the_time_ledger_sums_resumed_invocations(fair, tmp_path):
    plan = _plan(fair, tmp_path, "--quick")
    path = tmp_path / "out" / "fair-time.json"
    assert fair.record_time(plan, 0.0, 5.0, 0, 0.1) == {"invocations": []}  # nothing ran
    assert not path.exists()
    fair.record_time(plan, 0.0, 600.0, 40, 0.2)
    res = {"wall_min": 0.01, "time": json.loads(path.read_text())}
    assert fair.time_text(res) == "10 min"  # a regenerating rerun does not replace the time
    ledger = fair.record_time(plan, 1000.0, 1200.0, 45, 1.5)
    assert [r["tasks_run"] for r in ledger["invocations"]] == [40, 45]
    assert fair.time_text({"wall_min": 0.0, "time": ledger}) == (
        "30 min over 2 invocations, 85 tasks, load average at their starts 0.2-1.5")
    assert fair.time_text({"wall_min": 3.0}) == "3 min"  # results from before the ledger
    path.write_text("{not json")
    assert fair.record_time(plan, 0.0, 60.0, 1, None)["invocations"][0]["wall_s"] == 60.0


@pytest.mark.parametrize("combined_acc, kept", [(0.30, "best sweep point"), (0.70, "combined")])
def test_a_combination_of_axis_winners_is_validated_before_it_is_chosen(fair, tmp_path,
                                                                        combined_acc, kept):
    """Each axis wins off the recipe's value on its own (0.62 and 0.61 against 0.5), so the
    combination is a point the coordinate sweep never ran: it is planned at the sweep seeds and
    chosen only if it validates at least as well as the best sweep point (0.62)."""
    plan = _plan(fair, tmp_path, "--quick")
    fair.sweep(plan)
    own, grid = plan.own["flyp"], plan.grid["flyp"]
    lr = next(v for v in grid["train.lr"] if not math.isclose(v, own["train.lr"]))
    wd = next(v for v in grid["train.weight_decay"]
              if not math.isclose(v, own["train.weight_decay"]))
    labels = [v["label"] for v in plan.task.protocols.values()]

    def fabricate():
        for name, task in plan.plan.tasks.items():
            if name.endswith(".fairval") and task.result is None:
                variant = " ".join(task.run.variant)
                hit_lr = f"train.lr={fair._value_text('train.lr', lr)}" in variant
                hit_wd = f"train.weight_decay={fair._value_text('train.weight_decay', wd)}" \
                    in variant
                acc = (0.5 if task.run.recipe.name != "flyp" else
                       combined_acc if hit_lr and hit_wd else
                       0.62 if hit_lr else 0.61 if hit_wd else 0.5)
                task.result = {"datasets": {label: {"accuracy": acc} for label in labels}}

    fabricate()
    combo = {"train.lr": lr, "train.weight_decay": wd}
    assert fair.choose_point(plan, "flyp", "id") == combo
    assert fair.final_point(plan, "flyp", "id") == (combo, None)  # not run yet: it stands
    before = set(plan.plan.runs)
    new = fair.combined_runs(plan)
    # one combination per protocol, the same point: its two sweep-seed runs, nothing else
    assert {r.name for r in new} == set(plan.plan.runs) - before
    assert len(set(plan.plan.runs) - before) == 2 and {r.recipe.name for r in new} == {"flyp"}
    assert all(f"{r.name}.fairval" in plan.plan.tasks for r in new)
    fabricate()
    for protocol in plan.task.protocols:
        point, note = fair.final_point(plan, "flyp", protocol)
        assert note["kept"] == kept and note["combined_score"] == pytest.approx(combined_acc)
        assert note["best_sweep_score"] == pytest.approx(0.62)
        assert point == (combo if kept == "combined" else {**own, "train.lr": lr})
        # a method whose winners are all the recipe's values has nothing to validate
        assert fair.final_point(plan, "ft", protocol) == (plan.own["ft"], None)
