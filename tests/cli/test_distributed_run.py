"""``tracer finetune --nproc 2``: two gloo processes on CPU end where one process with the same
global batch ends, only rank 0 writes, and usage errors stop before any process is started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli.cli import app
from tracer_cli.engine import checkpoint
from tracer_cli.engine.run import pretrained_backbone

# The paper's learning rate. At 1e-4 the weights still agree to ~1e-5, except for parameters whose
# gradient is mathematically zero (attention key biases): AdamW divides their rounding noise by
# its own magnitude, so noise of 1e-10 moves them by up to lr per step in either direction.
ARGS = ["--set", "train.batch_size=8", "--set", "train.lr=1e-5", "--set", "run.eval=false"]


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TRACER_NPROC"):
        env.pop(key, None)
    return env


def _finetune(recipe: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer_cli", "finetune", str(recipe),
                           "--output-dir", str(out), *ARGS, *args], env=_env(),
                          capture_output=True, text=True, timeout=300)


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.slow
def test_two_gloo_processes_end_with_the_weights_of_one(tiny_recipe, tmp_path):
    one = _finetune(tiny_recipe, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _finetune(tiny_recipe, tmp_path / "two", "--nproc", "2", "--set",
                    "run.loggers=tensorboard")
    assert two.returncode == 0, two.stderr[-3000:]
    a = checkpoint.load(tmp_path / "one" / "tiny" / "last.pt")
    b = checkpoint.load(tmp_path / "two" / "tiny" / "last.pt")
    assert b["world_size"] == 2 and len(b["rng_ranks"]) == 2
    assert _max_diff(a["state_dict"], b["state_dict"]) <= 1e-5
    assert _max_diff(a["teacher"]["module"], b["teacher"]["module"]) <= 1e-5
    assert a["teacher"]["weight_sum"] == b["teacher"]["weight_sum"]
    assert a["data_position"] == b["data_position"]
    theta0 = pretrained_backbone(recipe_mod.load(tiny_recipe)).model.state_dict()
    assert _max_diff(a["state_dict"], theta0) > 1e-5  # the comparison is not trivially met

    run_dir = tmp_path / "two" / "tiny"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3]  # rank 0 only
    one_records = [json.loads(line) for line in
                   (tmp_path / "one" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    for r1, r2 in zip([r for r in one_records if r["event"] == "train"],
                      [r for r in records if r["event"] == "train"]):
        assert r1["loss"] == pytest.approx(r2["loss"], abs=1e-5)
    assert two.stderr.count("[train] step=3 ") == 1 and two.stdout.count("run directory:") == 1
    assert 'world_size = 2' in (run_dir / "recipe.lock.toml").read_text()
    # Only rank 0 logs: one writer's event file (each process would name its own by its pid).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events_file] = (run_dir / "tensorboard").iterdir()
    events = EventAccumulator(str(events_file))
    events.Reload()
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3]


def test_nproc_checks_the_recipe_before_starting_processes(runner, tiny_recipe, tmp_path):
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 "--nproc", "3"])
    assert result.exit_code == 2
    assert "train.batch_size = 16 (the global batch) must be a multiple of --nproc 3" \
        in result.stderr
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--nproc", "2",
                                 "--set", "train.steps=-1"])
    assert result.exit_code == 2 and "recipe key 'train.steps'" in result.stderr
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--nproc", "2",
                                 "--set", "run.loggers=tensorbord"])
    assert result.exit_code == 2 and "recipe key 'run.loggers': unknown logger" in result.stderr
    assert runner.invoke(app, ["finetune", str(tiny_recipe), "--nproc", "0"]).exit_code == 2


def test_nproc_inside_torchrun_is_refused(runner, tiny_recipe, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--nproc", "2"])
    assert result.exit_code == 2 and "already started by torchrun" in result.stderr


# The head at the same learning rate as the backbone (1e-5, see ARGS): at 1e-3 AdamW turns the
# rounding differences of the first steps' tiny gradients into head differences of ~6e-5.
HEAD_METHOD = ["--set", "train.method=lpft", "--set", "train.lp_steps=1"]


@pytest.mark.slow
def test_two_gloo_processes_train_a_head_like_one(tiny_recipe, tmp_path):
    """LP-FT under DDP: the head's gradients are synchronized, the frozen phase and the text
    tower that never runs do not stall DDP, and the result is that of one process, also with
    evaluations during training (rank 0 evaluates once per due step while rank 1 waits)."""
    one = _finetune(tiny_recipe, tmp_path / "one", *HEAD_METHOD)
    assert one.returncode == 0, one.stderr[-3000:]
    evaluating = ["--set", "run.eval=true", "--set", "run.eval_zeroshot=false",
                  "--set", "run.eval_every=1", "--set", "run.eval_sets=synth-photo"]
    two = _finetune(tiny_recipe, tmp_path / "two", *HEAD_METHOD, *evaluating, "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    records = [json.loads(line) for line in
               (tmp_path / "two" / "tiny" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["model"], r["step"]) for r in records if r["event"] == "eval"] == [
        ("student", 1), ("student", 2), ("final_student", 3)]
    assert two.stderr.count("step 2 student accuracy: synth-photo ") == 1
    a = checkpoint.load(tmp_path / "one" / "tiny" / "last.pt")
    b = checkpoint.load(tmp_path / "two" / "tiny" / "last.pt")
    assert _max_diff(a["state_dict"], b["state_dict"]) <= 1e-5
    tensors = [k for k in a["head"] if torch.is_tensor(a["head"][k])]
    assert _max_diff({k: a["head"][k] for k in tensors}, {k: b["head"][k] for k in tensors}) <= 1e-5
    assert _max_diff({k: a["head"][k] for k in tensors},
                     {k: a["head_init"][k] for k in tensors}) > 5e-6  # the head did move
