"""`tracer distill-check` end to end: the analytic verdict, a measured start on the tiny model,
reading a run directory, the plot, and the exit-code contract."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.cli import app
from tracer_cli.io import append_jsonl

ROOT_RECIPES = Path(__file__).resolve().parents[2] / "recipes"
QUICKSTART = str(ROOT_RECIPES / "quickstart.toml")
EMA_09 = ["--set", "train.steps=300", "--set", "teacher.kind=ema", "--set",
          "teacher.momentum_start=0.9", "--set", "teacher.momentum_end=0.9", "--set",
          "teacher.update_every=1"]
# The quickstart on an untrained tiny CLIP and a small slice, so that --steps runs in seconds.
QUICKSTART_TINY = ["--set", "model.pretrained=none", "--set",
                   'data.train={name="synth-photo-narrow", size=64}', "--set",
                   "train.batch_size=16", "--set", "run.device=cpu"]


@pytest.fixture
def private_tmp(tmp_path, monkeypatch):
    """Where the check run's temporary directory goes, to prove it is removed."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _check_runs(folder: Path) -> list[Path]:
    # Only the check's own folders: torch may put caches of its own there on import.
    return list(folder.glob("tracer-distill-check-*"))


def test_ema_every_step_is_collapsed_and_strict_exits_3(runner, tiny_recipe, private_tmp):
    result = runner.invoke(app, ["distill-check", str(tiny_recipe), *EMA_09, "--steps", "3",
                                 "--strict", "--json"])
    assert result.exit_code == 3, result.stderr
    doc = json.loads(result.stdout)  # the JSON document comes before the gate fails
    assert doc["collapsed"] is True and doc["verdict"] == "collapsed"
    assert doc["horizon"] == 300 and doc["teacher"]["kind"] == "ema"
    assert doc["teacher"]["teacher_lag_final"] == pytest.approx(9.0)
    assert doc["relative_lag_final"] == pytest.approx(0.03)
    emp = doc["empirical"]
    assert emp["records"] == 3 and emp["last_step"] == 3 and emp["source"] == "first 3 steps"
    # After the first update φ = 0.9·θ₀ + 0.1·θ₁: the measured ratio is exactly 0.9.
    assert emp["series"]["param_ratio"][0] == pytest.approx(0.9, abs=1e-4)
    assert emp["series"]["kl_i2t"][0] is None and emp["series"]["kl_i2t"][1] >= 0
    assert 0 <= emp["series"]["agreement"][2] <= 1
    assert "error: teacher collapsed: relative lag" in result.stderr
    assert "teacher kernels over the planned horizon T = 300" in result.stderr
    assert _check_runs(private_tmp) == []  # no run directory left behind


def test_an_epochs_recipe_is_checked_over_its_resolved_steps(runner, tiny_recipe):
    """2 passes over 70 examples at batch 16: 4 whole batches each, a horizon of 8 steps."""
    text = tiny_recipe.read_text().replace("steps = 3", "epochs = 2")
    tiny_recipe.write_text(text.replace('size = 64 }', 'size = 70 }'))
    result = runner.invoke(app, ["distill-check", str(tiny_recipe), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["horizon"] == 8


def test_quickstart_is_persistent(runner, private_tmp):
    result = runner.invoke(app, ["distill-check", QUICKSTART, "--strict"])
    assert result.exit_code == 0, result.stderr
    assert "verdict: persistent" in result.stdout
    horizon = recipe_mod.load(QUICKSTART).train.steps
    assert f"ρ({horizon}) = 0.5 ≥ 0.05" in result.stdout
    result = runner.invoke(app, ["distill-check", QUICKSTART, *QUICKSTART_TINY, "--steps", "2",
                                 "--strict", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["collapsed"] is False and doc["empirical"]["collapsed"] is False
    assert doc["teacher"]["relative_lag_final"] == pytest.approx(0.5)
    assert [a["label"] for a in doc["alternatives"]][:1] == ["ema m=0.05→0.9 over 20%, k=1"]
    assert doc["alternatives"][0]["collapsed"] is True
    assert _check_runs(private_tmp) == []


def _fake_run(tmp_path, teacher: str, ratios: list[float]):
    """A run directory as `tracer finetune` leaves it, with a chosen parameter-ratio series."""
    run_dir = tmp_path / "run"
    rec = recipe_mod.from_dict({"data": {"train": "synth-photo-narrow"},
                                "train": {"steps": 100}, "teacher": {"kind": teacher}})
    rundir.write_recipe_lock(run_dir, recipe_mod.lock_text(rec, {"torch": "x"}))
    for i, ratio in enumerate(ratios):
        step = 10 * (i + 1)
        append_jsonl(run_dir / "metrics.jsonl", {
            "event": "train", "step": step, "param_ratio": ratio, "drift": step * 0.1,
            "gap": step * 0.1 * ratio, "kl_i2t": 0.1, "kl_t2i": 0.2, "agreement": 0.8})
    return run_dir


def test_run_directory_series_decide_the_verdict(runner, tmp_path):
    collapsing = _fake_run(tmp_path, "wma", [0.9, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01, 0.01, 0.01,
                                             0.01])
    result = runner.invoke(app, ["distill-check", "--run", str(collapsing), "--json"])
    assert result.exit_code == 0, result.stderr  # without --strict, a verdict is not a failure
    doc = json.loads(result.stdout)
    assert doc["relative_lag_final"] == pytest.approx(0.5)  # the WMA kernel itself is fine...
    assert doc["empirical"]["param_ratio"]["decay"] == pytest.approx(0.01 / 0.9)  # ...the run not
    assert doc["collapsed"] and doc["analytic_collapsed"] is False
    assert doc["empirical"]["source"] == f"run '{collapsing}'" and doc["empirical"]["coverage"] == 1
    result = runner.invoke(app, ["distill-check", "--run", str(collapsing), "--strict"])
    assert result.exit_code == 3 and "param_ratio tail/peak = 0.0111 < 0.05" in result.stderr


def test_plot_and_human_output(runner, tmp_path):
    steady = _fake_run(tmp_path, "wma", [0.6] * 10)
    plot = tmp_path / "plots" / "check.png"
    result = runner.invoke(app, ["distill-check", QUICKSTART, "--run", str(steady), "--plot",
                                 str(plot), "--set", "train.steps=100", "--set", "teacher.beta=1"])
    assert result.exit_code == 0, result.stderr
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert "measured (run" in result.stdout and "verdict: persistent" in result.stdout
    assert f"plot: {plot}" in result.stdout
    assert "note: the run was trained with other teacher settings" in result.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--steps", "2", "--run", "somewhere"], "not both"),
    ([], "give a RECIPE file, or --run"),
    ([QUICKSTART, "--set", "teacher.kind=none"], "no teacher to check"),
    ([QUICKSTART, "--threshold", "1.5"], "--threshold 1.5"),
    ([QUICKSTART, "--plot", "out.nope"], "unknown image format 'nope'"),
    (["--run", "/nope/run"], "run directory '/nope/run' does not exist"),
    ([QUICKSTART, "--set", "teacher.beta=0"], "recipe key 'teacher.beta'"),
])
def test_bad_input_exits_2_with_one_line(runner, args, fragment):
    result = runner.invoke(app, ["distill-check", *args])
    assert result.exit_code == 2, result.stderr
    assert fragment in result.stderr and result.stderr.count("error:") == 1


def test_run_without_teacher_statistics_is_a_usage_error(runner, tmp_path):
    run_dir = _fake_run(tmp_path, "none", [])
    append_jsonl(run_dir / "metrics.jsonl", {"event": "train", "step": 10, "loss": 1.0})
    result = runner.invoke(app, ["distill-check", QUICKSTART, "--run", str(run_dir)])
    assert result.exit_code == 2 and "no teacher-student statistics" in result.stderr


def test_track_drift_false_keeps_no_start_copy(runner, tiny_recipe, private_tmp):
    result = runner.invoke(app, ["distill-check", str(tiny_recipe), "--steps", "2", "--set",
                                 "run.track_drift=false", "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["empirical"]["param_ratio"] is None and doc["empirical"]["kl"] is not None
    assert set(doc["empirical"]["series"]["drift"]) == {None}
    assert any("run.track_drift = false" in note for note in doc["notes"])
