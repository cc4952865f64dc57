"""Never lose a run: SIGKILL or SIGTERM mid-run, then ``--resume`` ends bit-for-bit where an
uninterrupted run ends; SIGINT exits 130; a resume that does not fit the run is refused.

The runs are real ``python -m tracer_cli`` processes (the same thread settings for all of them, so
the comparison of final weights can be exact).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli.cli import app
from tracer_cli.engine import checkpoint

# 48 training images in batches of 16: 3 batches an epoch, so 8 steps cross two epoch boundaries.
ARGS = ["--set", "train.steps=8", "--set", "data.train.size=48"]
TIMEOUT = 240


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}


def _start(args: list[str], stderr_path: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tracer_cli", *map(str, args)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=open(stderr_path, "w"))


def _tracer(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer_cli", *map(str, args)], env=_env(),
                          capture_output=True, text=True, timeout=TIMEOUT)


def _wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (exit {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _assert_same_weights(expected: Path, actual: Path) -> None:
    a, b = checkpoint.load(expected), checkpoint.load(actual)
    assert a["step"] == b["step"] == 8
    for which, left, right in (("student", a["state_dict"], b["state_dict"]),
                               ("teacher", a["teacher"]["module"], b["teacher"]["module"])):
        assert left.keys() == right.keys()
        different = [k for k in left if not torch.equal(left[k], right[k])]
        assert not different, f"{which} differs in {different[:5]}"
    assert a["teacher"]["weight_sum"] == b["teacher"]["weight_sum"]
    assert a["data_position"] == b["data_position"] == {"epoch": 2, "batch": 2}
    assert torch.equal(a["optimizer"]["state"][0]["exp_avg"], b["optimizer"]["state"][0]["exp_avg"])


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("resume")


@pytest.fixture
def reference(tiny_recipe: Path, shared: Path) -> Path:
    """last.pt of the uninterrupted run (computed once for the module)."""
    out = shared / "reference"
    if not (out / "tiny" / "summary.json").is_file():
        done = _tracer(["finetune", tiny_recipe, "--output-dir", out, *ARGS])
        assert done.returncode == 0, done.stderr[-3000:]
    return out / "tiny" / "last.pt"


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_exact(tiny_recipe, reference,
                                                                 tmp_path):
    out = tmp_path / "runs"
    run_dir = out / "tiny"
    proc = _start(["finetune", tiny_recipe, "--output-dir", out, *ARGS], tmp_path / "err.txt")
    # last.pt is written (atomically) after checkpoints/step_2.pt.
    _wait_for(lambda: (run_dir / "last.pt").is_file(), proc, "the first checkpoint")
    proc.kill()
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    killed_at = checkpoint.load(run_dir / "last.pt")["step"]
    assert killed_at < 8, "the run finished before it could be killed"
    zeroshot = run_dir / "eval" / "zeroshot.json"
    zeroshot_mtime = zeroshot.stat().st_mtime_ns

    done = _tracer(["finetune", tiny_recipe, "--output-dir", out, *ARGS, "--resume", "auto"])
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"resuming from {run_dir / 'last.pt'} at step {killed_at} of 8" in done.stderr
    _assert_same_weights(reference, run_dir / "last.pt")

    records = _records(run_dir)  # appended to, not replaced
    assert [r["step"] for r in records if r["event"] == "resume"] == [killed_at]
    assert records[0]["event"] == "eval" and records[0]["model"] == "zeroshot"
    assert sum(r["event"] == "eval" and r["model"] == "zeroshot" for r in records) == 1
    assert zeroshot.stat().st_mtime_ns == zeroshot_mtime  # reused, not evaluated again
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and "zeroshot" in summary["eval"]["models"]


def _interrupt(tiny_recipe: Path, tmp_path: Path, sig: int) -> tuple[subprocess.Popen, str, Path]:
    out = tmp_path / "runs"
    err = tmp_path / "err.txt"
    proc = _start(["finetune", tiny_recipe, "--output-dir", out, *ARGS,
                   "--set", "run.eval=false"], err)
    _wait_for(lambda: "[train] step=3 " in err.read_text(), proc, "step 3")
    proc.send_signal(sig)
    proc.wait(timeout=TIMEOUT)
    return proc, err.read_text(), out / "tiny"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_prints_how_to_resume_and_exits_143(tiny_recipe, reference,
                                                                      tmp_path):
    proc, stderr, run_dir = _interrupt(tiny_recipe, tmp_path, signal.SIGTERM)
    assert proc.returncode == 143, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("stopped by SIGTERM after step ") and "error" not in last
    step = int(last.split("after step ")[1].split(";")[0])
    assert 3 <= step < 8 and f"checkpoint saved: {run_dir}/checkpoints/step_{step}.pt" in last
    assert checkpoint.load(run_dir / "last.pt")["step"] == step
    assert "Traceback" not in stderr

    command = shlex.split(last.split("resume with: ")[1])
    assert command[:2] == ["tracer", "finetune"] and command[-2:] == ["--resume", "auto"]
    done = _tracer(command[1:])  # exactly what the message says to run
    assert done.returncode == 0, done.stderr[-3000:]
    _assert_same_weights(reference, run_dir / "last.pt")
    events = [r["event"] for r in _records(run_dir)]
    assert "interrupted" in events and "resume" in events


@pytest.mark.slow
def test_sigint_exits_130_with_a_checkpoint(tiny_recipe, tmp_path):
    proc, stderr, run_dir = _interrupt(tiny_recipe, tmp_path, signal.SIGINT)
    assert proc.returncode == 130, stderr[-3000:]
    assert "stopped by SIGINT after step" in stderr and "KeyboardInterrupt" not in stderr
    assert (run_dir / "last.pt").is_file()


def _fake_checkpoint(path: Path, recipe: recipe_mod.Recipe) -> Path:
    torch.save({"step": 2, "state_dict": {}, "teacher": {}, "optimizer": {}, "scheduler": {},
                "scaler": {}, "text_rng": torch.zeros(1), "rng": {}, "data_position": {},
                "recipe": recipe.to_dict()}, path)
    return path


def test_resume_refuses_a_checkpoint_of_another_run(runner, tiny_recipe, tmp_path):
    other = recipe_mod.load(tiny_recipe, ["train.steps=5", "distill.fd=10", "run.log_every=3"])
    ckpt = _fake_checkpoint(tmp_path / "other.pt", other)
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 "--resume", str(ckpt)])
    assert result.exit_code == 2, result.stderr
    assert "recipe differs from the checkpoint's in distill.fd (checkpoint: 10.0, now: 2000.0); " \
           "train.steps (checkpoint: 5, now: 3)" in result.stderr
    assert "log_every" not in result.stderr  # not a run-defining key
    assert not (tmp_path / "tiny").exists()


def test_resume_usage_errors(runner, tiny_recipe, tmp_path):
    base = ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path)]
    result = runner.invoke(app, [*base, "--resume", "auto"])
    assert result.exit_code == 2 and "has no checkpoint to resume from" in result.stderr
    result = runner.invoke(app, [*base, "--resume", "auto", "--overwrite"])
    assert result.exit_code == 2 and "use one" in result.stderr
    weights = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, weights)
    result = runner.invoke(app, [*base, "--resume", str(weights)])
    assert result.exit_code == 2 and "not a tracer training checkpoint" in result.stderr
    result = runner.invoke(app, [*base, "--resume", str(tmp_path / "nope.pt")])
    assert result.exit_code == 2 and "does not exist" in result.stderr
    assert result.stderr.count("error:") == 1


def test_evaluations_during_training_keep_their_schedule_across_resume(tiny_recipe, tmp_path):
    """run.eval_every: each due step evaluated once over a stop and --resume, and the weights end
    bit for bit where a run without evaluations ends (they leave the RNG as they found it)."""
    from tracer_cli.engine.run import finetune
    from tracer_cli.events import Reporter

    raw = recipe_mod.tomllib.loads(tiny_recipe.read_text())

    def recipe(*sets: str) -> recipe_mod.Recipe:
        return recipe_mod.from_dict(recipe_mod.apply_overrides(raw, [
            "train.steps=8", "data.train.size=48", "train.checkpoint_every=4",
            "run.eval_zeroshot=false", *sets]))

    finetune(recipe(), output_dir=tmp_path / "plain", reporter=Reporter())
    evaluating = recipe("run.eval_every=2", "run.eval_max_images=16")
    out = tmp_path / "evaluating"
    finetune(evaluating, output_dir=out, reporter=Reporter(), stop_after=5)  # at 2 and 4
    finetune(evaluating, output_dir=out, reporter=Reporter(), resume="auto")  # from step 4
    during = [(r["model"], r["step"]) for r in _records(out / "tiny")
              if r["event"] == "eval" and r["model"] in ("student", "teacher")]
    # Step 4 once: its evaluation came before its checkpoint, which the resume starts from; step
    # 8, the last, is the final evaluation's.
    assert during == [(model, step) for step in (2, 4, 6) for model in ("student", "teacher")]
    # bit for bit: one computation repeated, with and without the evaluations in between
    _assert_same_weights(tmp_path / "plain" / "tiny" / "last.pt", out / "tiny" / "last.pt")
