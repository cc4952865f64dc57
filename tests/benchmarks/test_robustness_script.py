"""benchmarks/robustness.py: the statistics it takes from tracer_cli.analysis by hand-computed
numbers, and one end-to-end run on
two tiny recipes (random init, 2 steps) that checks the results against the runs' own summaries,
the report block between its markers, the figures, and that a second invocation reuses every run.

The end-to-end run uses --quick (one sweep seed) with --steps 2: every CLI call costs a few
seconds of imports, and --quick halves the sweep's calls."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_RECIPE
from tracer_cli.analysis import stats, tables
from tracer_cli.errors import UsageError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "robustness.py"


def _sibling(name: str):
    """A helper module of benchmarks/ (``_report``, ``_plots``), imported by path."""
    spec = importlib.util.spec_from_file_location(f"{name}_module", SCRIPT.with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report():
    return _sibling("_report")


@pytest.fixture(scope="module")
def rb():
    spec = importlib.util.spec_from_file_location("robustness_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- statistics


def test_mean_se_combines_spread_and_binomial_error():
    mean, se = stats.mean_se([0.8, 0.9], [0.8 * 0.2 / 100, 0.9 * 0.1 / 100])
    # spread: var(ddof=1) 0.005 / 2 = 0.0025; binomial: mean(0.0016, 0.0009) / 2 = 0.000625
    assert mean == pytest.approx(0.85)
    assert se == pytest.approx(math.sqrt(0.0025 + 0.000625))
    assert stats.mean_se([0.5], [stats.binomial_var(0.5, 100)]) == pytest.approx((0.5, 0.05))
    assert stats.mean_se([1.0, 3.0]) == pytest.approx((2.0, 1.0))  # no binomial term
    assert stats.average_binomial_var([0.5, 0.9], [100, 100]) == pytest.approx(
        (0.0025 + 0.0009) / 4)


def test_paired_difference_pairs_by_key_and_judges_noise():
    a = {(0, 0): 0.80, (0, 1): 0.84, (1, 0): 0.82}
    b = {(0, 0): 0.78, (0, 1): 0.80, (1, 0): 0.79, (1, 1): 0.50}  # (1, 1) has no partner
    d = stats.paired_difference(a, b)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.03)
    assert d["se"] == pytest.approx(0.01 / math.sqrt(3))  # diffs .02 .04 .03: std 0.01
    assert d["verdict"] == "beyond noise"
    # diffs .02, .00: mean .01, SE .01 -> |mean| < 2 SE
    near = stats.paired_difference({1: 0.52, 2: 0.50}, {1: 0.50, 2: 0.50})
    assert near["mean"] == pytest.approx(0.01) and near["se"] == pytest.approx(0.01)
    assert near["verdict"] == "within noise"
    assert stats.paired_difference({1: 0.6}, {1: 0.5})["verdict"] == "undetermined (one pair)"
    assert stats.paired_difference({1: 0.6}, {2: 0.5})["verdict"] == "no common runs"
    assert stats.noise_verdict(0.0, 0.0) == "within noise"


def test_frontier_gap_interpolates_along_the_curve_in_alpha_order():
    curve = [(0.80, 0.85), (0.85, 0.83), (0.90, 0.80)]  # α = 0, .5, 1
    above = stats.frontier_gap(curve, 0.875, 0.84, 0.01)
    assert above["curve_ood"] == pytest.approx(0.815)  # halfway between .83 and .80
    assert above["gap"] == pytest.approx(0.025) and above["verdict"] == "above"
    assert stats.frontier_gap(curve, 0.875, 0.84, 0.02)["verdict"] == "within noise"
    assert stats.frontier_gap(curve, 0.875, 0.78, 0.01)["verdict"] == "below"
    assert stats.frontier_gap(curve, 0.90, 0.80, 0.01)["curve_ood"] == pytest.approx(0.80)
    for outside in (0.95, 0.79):
        far = stats.frontier_gap(curve, outside, 0.9, 0.01)
        assert far["verdict"] == "outside the curve's ID range" and far["gap"] is None
    # two α with the same ID accuracy: the curve reaches the higher OOD there
    assert stats.frontier_gap([(0.8, 0.9), (0.8, 0.7), (0.7, 0.95)], 0.8, 0.8, 0.01)[
        "curve_ood"] == pytest.approx(0.9)


def test_frontier_gap_reads_the_upper_branch_when_id_peaks_before_alpha_one():
    """Measured shape (fair benchmark, 800 steps): ID accuracy peaks at α = .5 and falls a little
    towards α = 1 while OOD keeps falling. At ID .9981 the curve passes twice: at α ≈ .43
    (OOD ≈ .851) and at α ≈ .96 (OOD ≈ .707); the frontier is the first. Sorting the points by
    ID read ≈ .71 and made a point 13 points "above" a curve it sits on."""
    curve = [(0.9666, 0.9013), (0.9951, 0.8916), (0.9985, 0.8334), (0.99835, 0.7648),
             (0.9980, 0.6957)]  # α = 0, .25, .5, .75, 1
    t = (0.9981 - 0.9951) / (0.9985 - 0.9951)
    upper = 0.8916 + t * (0.8334 - 0.8916)
    at = stats.frontier_gap(curve, 0.9981, 0.8427, 0.0074)
    assert at["curve_ood"] == pytest.approx(upper)
    assert at["gap"] == pytest.approx(0.8427 - upper) and at["verdict"] == "within noise"
    # the SE travels with the branch that was read
    with_se = [(i, o, 0.01 * k) for k, (i, o) in enumerate(curve)]
    ood, se = stats.curve_at(with_se, 0.9981)
    assert ood == pytest.approx(upper) and se == pytest.approx(0.01 * (1 + t))
    # past the peak there is no point of the curve: outside, not extrapolated
    assert stats.curve_at(curve, 0.9990) is None


def test_choose_value_prefers_the_recipe_value_among_ties(rb):
    assert rb.choose_value([0.2, 0.5, 1.0], [0.7, 0.8, 0.8], own=0.5) == 0.5
    assert rb.choose_value([0.2, 0.5, 1.0], [0.7, 0.8, 0.8], own=0.2) == 0.5
    assert rb.choose_value([0.2, 0.5, 1.0], [0.9, 0.8, 0.8], own=0.5) == 0.2


def test_insert_block_replaces_between_markers_and_keeps_the_rest(report):
    block = f"{report.BEGIN}\nnew\n{report.END}"
    first = report.insert_block("# Title\n\ntext\n", block)
    assert first.startswith("# Title\n\ntext\n\n" + block) and "interpretation" in first
    edited = first + "\nhuman note\n"
    second = report.insert_block(edited.replace("new", "old"), block.replace("new", "newer"))
    assert second.count(report.BEGIN) == 1 and "newer" in second and "old" not in second
    assert second.startswith("# Title\n\ntext\n") and second.endswith("human note\n")
    with pytest.raises(UsageError):
        report.insert_block(f"{report.BEGIN}\nno end\n", block)


def test_sweep_and_kl_figures_are_png_files(tmp_path):
    plots = _sibling("_plots")
    rows = [{"value": v, "val_accuracy": (0.7 + v / 10, 0.01), "id_accuracy": (0.9, 0.01),
             "avg_ood_accuracy": None} for v in (0.1, 0.9, 5.0)]
    curves = {"EMA": {"points": [{"step": s, "kl_i2t": 0.1 / s, "param_ratio": 0.5}
                                 for s in (1, 2, 3)]}}
    for path in (plots.plot_sweep(rows, "lambda_sd", 0.9, 5.0, tmp_path / "sweep.png"),
                 plots.plot_kl(curves, tmp_path / "kl.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_steps_overrides_scale_the_schedule(rb):
    info = rb.RecipeInfo(path="x.toml", name="lpft", sha256="", embedded=True, embedded_seed=0,
                         steps=500, warmup_steps=50, lp_steps=250, beta=0.5, lambda_sd=0.9,
                         datasets=(), arch="tracer-tiny-rn")
    assert rb.steps_overrides(info, 150) == ["train.steps=150", "train.warmup_steps=15",
                                             "train.lp_steps=75"]
    assert rb.steps_overrides(info, None) == [] and rb.steps_overrides(info, 500) == []


# --------------------------------------------------------------------------- end to end


def _recipes(folder: Path) -> list[Path]:
    """ft (no teacher, no regularizer) and tracer (WMA), 2 steps, 48-image sets. synth-photo is
    the validation set here, so the ID set is cartoons (a validation set must not be reported)."""
    base = (TINY_RECIPE
            .replace('id = [{ name = "synth-photo", size = 48 }]',
                     'id = [{ name = "synth-cartoon", size = 48 }]\noptions = { size = 48 }')
            .replace("steps = 3", "steps = 2").replace("checkpoint_every = 2",
                                                       "checkpoint_every = 0"))
    ft = base.replace('kind = "wma"', 'kind = "none"')
    for key in ("lambda_sd", "crd", "fd", "icl", "xkd", "lambda_fn"):
        ft = "\n".join(f"{key} = 0.0" if line.startswith(f"{key} =") else line
                       for line in ft.splitlines()) + "\n"
    paths = [folder / "ft.toml", folder / "tracer.toml"]
    paths[0].write_text(ft + "lambda_orth = 0.0\n")
    paths[1].write_text(base)
    return paths


def _bench(tmp: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {"OMP_NUM_THREADS": "1", "CI": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--steps", "2",
         "--recipes", "ft.toml", "tracer.toml", "--seeds", "0", "1",
         "--pretrain-seeds", "0", "--betas", "0.5", "1", "--lambdas", "0.1", "0.9", "--val",
         "synth-photo", "--jobs", "1", "--wise", "ft", "--wise-alphas", "0", "0.5", "1",
         "--out", "out", "--report", "REPORT.md", "--figures", "figs", *extra],
        cwd=tmp, capture_output=True, text=True, timeout=600, env={**os.environ, **env})


def _summary(tmp: Path, record: dict) -> dict:
    return json.loads((tmp / record["run_dir"] / "summary.json").read_text())


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("robustness")
    _recipes(tmp)
    (tmp / "REPORT.md").write_text("# Benchmarks\n\nbefore\n")
    first = _bench(tmp)
    assert first.returncode == 0, first.stderr[-3000:]
    return tmp, json.loads((tmp / "out" / "results.json").read_text()), first


@pytest.mark.slow
def test_results_agree_with_the_runs_summaries(bench):
    tmp, res, _ = bench
    runs = {r["name"]: r for r in res["runs"]}
    assert {r["group"] for r in runs.values()} == {"ft", "tracer"}
    for record in runs.values():
        summary = _summary(tmp, record)
        assert record["wall_time_s"] == summary["wall_time_s"]
        for model, numbers in record["models"].items():
            for name, metrics in numbers["datasets"].items():
                assert metrics["accuracy"] == summary["eval"]["models"][model][name]["accuracy"]
    main_ft = [r for r in runs.values() if r["group"] == "ft" and "main" in r["roles"]]
    assert sorted(r["seed"] for r in main_ft) == [0, 1]
    accs = [_summary(tmp, r)["eval"]["models"]["student"]["avg_ood_accuracy"] for r in main_ft]
    (panel,) = res["panels"]  # one pretrained model: the recipes' random init
    rows = {r["label"]: r for r in panel["rows"]}
    assert rows["ft"]["avg_ood_accuracy"][0] == pytest.approx(sum(accs) / 2)
    assert "teacher of tracer" in rows and "teacher of ft" not in rows


@pytest.mark.slow
def test_sweep_choice_wise_and_kl_are_recorded(bench):
    tmp, res, _ = bench
    assert [r["value"] for r in res["sweep"]["beta"]] == [0.5, 1.0]
    assert [r["value"] for r in res["sweep"]["lambda_sd"]] == [0.1, 0.9]
    assert all(len(r["runs"]) == 1 and r["val_accuracy"] for r in res["sweep"]["beta"])
    for axis, own in (("beta", 0.5), ("lambda_sd", 0.9)):  # the recipe's values
        means = {r["value"]: r["val_accuracy"][0] for r in res["sweep"][axis]}
        top = max(means.values())
        expected = own if means[own] == top else max(means, key=means.get)
        assert res["choice"][axis] == expected
    tuned = [r for r in res["runs"] if r["group"] == "tracer" and "main" in r["roles"]]
    assert len(tuned) == 2 and all(f"teacher.beta={res['choice']['beta']!r}" in r["overrides"]
                                   for r in tuned)
    sweep_runs = [r for r in res["runs"] if "sweep" in r["roles"]]
    assert len(sweep_runs) == 3 and all(r["val"]["datasets"]["synth-photo"]["n"] == 48
                                        for r in sweep_runs)
    (panel,) = res["panels"]
    assert [p["alpha"] for p in panel["wise"]["ft"]] == [0.0, 0.5, 1.0]
    assert all(p["n_runs"] == 2 for p in panel["wise"]["ft"])
    assert {e["row"] for e in panel["frontier"]} == {"tracer", "teacher of tracer"}
    assert set(res["kl"]) == {"WMA (tracer)", "EMA"}
    assert any(p["kl_i2t"] is not None for p in res["kl"]["EMA"]["points"])
    assert panel["paired"][0]["reference"] == "tracer"
    # weights are pruned once evaluated; the numbers stay
    assert not any((tmp / r["run_dir"] / "last.pt").exists() for r in res["runs"])
    assert all(r["steps"] == 2 for r in res["runs"])


@pytest.mark.slow
def test_report_and_figures_and_a_second_invocation_reuses_every_run(bench):
    tmp, res, _ = bench
    report = (tmp / "REPORT.md").read_text()
    assert report.startswith("# Benchmarks\n\nbefore\n")
    assert report.count("<!-- robustness:begin -->") == 1
    block = report.split("<!-- robustness:begin -->")[1].split("<!-- robustness:end -->")[0]
    assert "| ft |" in block and "| teacher of tracer |" in block and "within noise" in block
    assert "(figs/robustness_id_vs_ood.png)" in block
    for name in ("id_vs_ood", "beta_sweep", "lambda_sweep", "kl_ema_vs_wma"):
        png = tmp / "figs" / f"robustness_{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp / "REPORT.md").write_text(report + "\nhand-written reading\n")
    stamps = {r["name"]: (tmp / r["run_dir"] / "summary.json").stat().st_mtime_ns
              for r in res["runs"]}
    second = _bench(tmp)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((tmp / "out" / "results.json").read_text())
    assert again["execution"]["finetunes_run"] == 0 and again["execution"]["evals_run"] == 0
    assert {r["name"]: (tmp / r["run_dir"] / "summary.json").stat().st_mtime_ns
            for r in again["runs"]} == stamps
    assert again["panels"] == res["panels"]
    text = (tmp / "REPORT.md").read_text()
    assert text.count("<!-- robustness:begin -->") == 1
    assert text.count("<!-- robustness:end -->") == 1
    assert text.startswith("# Benchmarks\n\nbefore\n") and text.endswith("hand-written reading\n")


@pytest.mark.slow
def test_dry_run_counts_and_a_failed_run_stops_the_benchmark(bench, tmp_path):
    tmp, _, _ = bench
    dry = _bench(tmp, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    # sweep 3 + ft 2 + EMA 1 + tuned tracer at seed 1 (at seed 0 it is a sweep run)
    assert "finetune runs: 7 (" in dry.stdout and "evaluations: 5 (5 cached)" in dry.stdout
    _recipes(tmp_path)
    broken = tmp_path / "ft.toml"
    broken.write_text(broken.read_text().replace('size = 64', 'size = 0'))
    failed = _bench(tmp_path, "--sweep-recipe", "none", "--kl-steps", "0")
    assert failed.returncode == 1
    assert "tracer_cli finetune ft.toml" in failed.stderr and "size" in failed.stderr


def test_an_interrupt_stops_the_running_children_instead_of_waiting_for_them(
        rb, tmp_path, monkeypatch):
    """Ctrl-C (or SIGINT to the script alone) while runs are in flight: each child gets SIGTERM
    (a finetune checkpoints and exits) and the interrupt propagates, where the thread pool used
    to wait for every child to finish. The children sleep 20 s: ended any other way than by
    the termination, they exit 0 and the test fails."""
    import signal
    import types

    started: list = []
    real_popen, real_wait = rb.subprocess.Popen, rb.cf.wait

    def popen(cmd, **kwargs):
        proc = real_popen([sys.executable, "-c", "import time; time.sleep(20)"], **kwargs)
        started.append(proc)
        return proc

    calls = {"n": 0}

    def wait(futures, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:  # the executor's first wait: interrupt once both children run
            while len(started) < 2 and not any(f.done() for f in futures):
                real_wait(futures, timeout=0.05)
            raise KeyboardInterrupt
        return real_wait(futures, **kwargs)

    monkeypatch.setattr(rb.subprocess, "Popen", popen)
    monkeypatch.setattr(rb.cf, "wait", wait)
    tasks = [rb.Task(name=f"t{i}", argv=["finetune"], record=tmp_path / f"t{i}.json", run=None,
                     kind="finetune") for i in range(2)]
    with rb.Ui(0) as ui:
        ex = rb.Executor(types.SimpleNamespace(jobs=2), ui)
        with pytest.raises(KeyboardInterrupt):
            ex.execute(tasks)
    assert [p.returncode for p in started] == [-signal.SIGTERM] * 2
    assert ui.done == 0 and not any(t.record.exists() for t in tasks)


def test_wise_curve_takes_its_end_points_from_the_runs():
    """α = 1 is the run's own student and α = 0 the zeroshot run of the same pretrained model:
    neither is evaluated again, and the averaged curve still spans 0..1."""
    keys = ["id_accuracy", "avg_ood_accuracy", "avg_ood_ece"]

    def numbers(id_acc, ood):
        return {"id_accuracy": id_acc, "avg_ood_accuracy": ood, "avg_ood_ece": 0.05}

    def record(name, method, student, wise):
        return {"name": name, "method": method, "group": method, "pretrained": "p0",
                "zeroshot_key": None, "models": {"student": student}, "wise": wise}

    records = [
        record("zs_p0", "zeroshot", numbers(0.90, 0.85), []),
        record("ft_p0_s0", "ft", numbers(0.94, 0.80), [{"alpha": 0.5, **numbers(0.95, 0.86)}]),
        record("ft_p0_s1", "ft", numbers(0.96, 0.78), [{"alpha": 0.5, **numbers(0.95, 0.86)}]),
    ]
    curve = tables.group_curve(records, "ft", keys)
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0]
    assert curve[0]["id_accuracy"][0] == pytest.approx(0.90)
    assert curve[2]["id_accuracy"][0] == pytest.approx(0.95)
    assert curve[2]["avg_ood_accuracy"][0] == pytest.approx(0.79)
    assert all(p["n_runs"] == 2 for p in curve)
    # An α the evaluation did cover is not added a second time.
    records[1]["wise"].append({"alpha": 1.0, **numbers(0.5, 0.5)})
    assert tables.group_curve(records, "ft", keys)[2]["n_runs"] == 2


def test_main_runs_go_pretrained_model_by_pretrained_model(rb):
    """After the sweep, the main runs are grouped by pretraining seed (the plan's order kept
    within one), so an interrupted benchmark leaves whole pretrained models behind."""
    cfg = rb.build_config(rb.parse_args(["--pretrain-seeds", "0", "1", "2", "--seeds", "0", "1"]))
    plan = rb.Plan(cfg)
    plan.main(None, tuned=False)
    plan.main({"beta": 0.5, "lambda_sd": 0.9}, tuned=True)
    tasks = list(plan.tasks.values())
    ordered = rb.model_major(tasks)
    seeds = [t.run.pseed for t in ordered]
    assert seeds == sorted(seeds) and set(seeds) == {0, 1, 2}
    for p in (0, 1, 2):  # within one pretrained model, the plan's own order
        assert [t for t in ordered if t.run.pseed == p] == [t for t in tasks if t.run.pseed == p]
    methods = {t.run.recipe.method for t in ordered if t.run.pseed == 0}
    assert {"zeroshot", "ft", "tracer"} <= methods


def test_a_run_cached_from_an_older_embedded_build_is_not_reused(rb, monkeypatch):
    """The cache key of a run on the embedded CLIP names the weights' file (its digest): after a
    change of the build (here its version), the same command is a different run."""
    from tracer_plugins.backbones import embedded

    cfg = rb.build_config(rb.parse_args(["--pretrain-seeds", "0", "1", "--seeds", "0"]))
    plan = rb.Plan(cfg)
    plan.main(None, tuned=False)
    task = next(t for t in plan.tasks.values() if t.run.pseed == 1)
    key = task.key()
    assert key["embedded_weights"] == embedded.embedded_path(task.run.recipe.arch, 1).name
    monkeypatch.setattr(embedded, "BUILD_VERSION", embedded.BUILD_VERSION + 1)
    assert task.key() != key


def test_a_pruned_run_is_rerun_for_an_evaluation_but_not_for_a_lag_task(rb, tmp_path):
    """A cached finetune whose last.pt was pruned stays cached while only ``distill-check --run``
    (kind "lag": reads metrics.jsonl, no weights) is pending; a pending evaluation that loads the
    model (WiSE-FT) makes it run again, its cached evaluations with it."""
    from tracer_cli import rundir

    cfg = rb.build_config(rb.parse_args(["--pretrain-seeds", "0", "--seeds", "0", "--out",
                                         str(tmp_path / "out")]))
    plan = rb.Plan(cfg)
    info = next(r for r in cfg.recipes if r.name == "carot")
    run = plan.run(info, 0, 0, [], "", "main")
    finetune = plan.tasks[run.name]
    run.run_dir.mkdir(parents=True)
    rundir.summary_path(run.run_dir).write_text(json.dumps({"steps": 500, "wall_time_s": 1.0}))
    assert not rundir.last_path(run.run_dir).exists()  # pruned: only the numbers are left
    rb._write_json(finetune.record, {"key": finetune.key(), "result": {"steps": 500}})

    def lag():
        return rb.Task(f"{run.name}.lag", ["distill-check", "--run", str(run.run_dir), "--json"],
                       cfg.runs_dir / f"{run.name}.lag.json", run, "lag", deps=(run.name,))

    pending_lag = lag()
    rb.resolve_cache([finetune, pending_lag])
    assert finetune.cached and finetune.result == {"steps": 500, "wall_time_s": 1.0}
    assert not pending_lag.cached and pending_lag.result is None

    finetune.cached, finetune.result = False, None
    done_lag = lag()
    rb._write_json(done_lag.record, {"key": done_lag.key(), "result": {"relative_lag_final": 0.5}})
    wise = plan.evaluation(run, "wise")
    rb.resolve_cache([finetune, done_lag, wise])
    assert not finetune.cached and finetune.result is None  # WiSE-FT needs the weights
    assert not done_lag.cached and done_lag.result is None  # it described the old run
