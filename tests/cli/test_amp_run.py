"""Mixed precision end to end on CPU: a ``bf16-mixed`` finetune → ``tracer eval`` → ``tracer
export`` → an interrupted run resumed bit for bit; a ``16-mixed`` finetune through the real
GradScaler. (The step-level checks, autocast of the teacher, fp32 losses and an injected fp16
overflow, are in ``tests/engine/test_amp.py``.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import open_clip
import pytest
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli.cli import app
from tracer_cli.engine import checkpoint
from tracer_cli.engine.run import finetune

BF16 = ["--set", "run.precision=bf16-mixed", "--set", "train.steps=3"]


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_equal_trees(a, b, where: str = "") -> None:
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _assert_equal_trees(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_equal_trees(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


@pytest.mark.slow
def test_bf16_finetune_eval_export_and_exact_resume(runner, tiny_recipe, tmp_path):
    out = tmp_path / "full"
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out), *BF16])
    assert result.exit_code == 0, result.stderr
    run_dir = out / "tiny"
    assert 'precision = "bf16-mixed"' in (run_dir / "recipe.lock.toml").read_text()
    train = [r for r in _records(run_dir) if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in train) and train[-1]["loss_sd"] > 0

    result = runner.invoke(app, ["eval", str(run_dir), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["runtime"]["precision"] == "bf16-mixed"
    summary = json.loads((run_dir / "summary.json").read_text())
    student = summary["eval"]["models"]["student"]
    for name, metrics in doc["datasets"].items():  # the same weights, the same autocast
        assert metrics["accuracy"] == pytest.approx(student[name]["accuracy"], abs=1e-9)

    exported = tmp_path / "export"
    result = runner.invoke(app, ["export", str(run_dir), "--format", "open_clip",
                                 "--output", str(exported)])
    assert result.exit_code == 0, result.stderr
    model = open_clip.create_model("local-dir:" + str(exported))
    final = checkpoint.load(run_dir / "last.pt")
    for key, value in model.state_dict().items():
        assert torch.equal(value, final["state_dict"][key]), key

    # The same run stopped after its step-2 checkpoint, then resumed: bit for bit the full run.
    part = tmp_path / "part"
    rec = recipe_mod.load(tiny_recipe, ["run.precision=bf16-mixed", "train.steps=3"])
    finetune(rec, output_dir=part, stop_after=2)
    assert checkpoint.load(part / "tiny" / "last.pt")["step"] == 2
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(part), *BF16,
                                 "--resume", "auto"])
    assert result.exit_code == 0, result.stderr
    resumed = checkpoint.load(part / "tiny" / "last.pt")
    for key in ("step", "state_dict", "teacher", "optimizer", "scheduler", "scaler", "text_rng",
                "data_position"):
        _assert_equal_trees(final[key], resumed[key], key)


@pytest.mark.slow
def test_sixteen_mixed_finetune_runs_the_grad_scaler_on_cpu(runner, tiny_recipe, tmp_path):
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 "--set", "run.precision=16-mixed", "--set", "train.steps=2",
                                 "--set", "model.arch=tracer-tiny-vit",
                                 "--set", "run.eval=false"])
    assert result.exit_code == 0, result.stderr
    train = [r for r in _records(tmp_path / "tiny") if r["event"] == "train"]
    assert [r["step"] for r in train] == [1, 2]
    assert all(math.isfinite(r["loss"]) and r["grad_scale"] > 0 for r in train)
    state = checkpoint.load(tmp_path / "tiny" / "last.pt")
    assert state["scaler"]["scale"] == train[-1]["grad_scale"]
    for tree in (state["state_dict"], state["teacher"]["module"]):
        assert all(torch.isfinite(v).all() for v in tree.values() if v.is_floating_point())
