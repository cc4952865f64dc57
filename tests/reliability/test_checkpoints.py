"""Checkpoints never lose a run: bounded retention, last.pt without a second copy, SHA-256
verification, and ``--resume auto`` falling back to the newest intact checkpoint."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.cli import app
from tracer_cli.runs import RunDir

ROOT = Path(__file__).resolve().parents[2]
# 3 steps, a checkpoint after each, the newest 2 kept, a weights-only milestone every 2 steps.
RUN = ["--set", "run.eval=false", "--max-steps", "3", "--set", "train.checkpoint_every=1",
       "--set", "train.keep_checkpoints=2", "--set", "train.keep_every=2"]


def _finetune(runner, recipe: Path, out: Path, *args: str):
    return runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(out), *args])


@pytest.fixture(scope="module")
def finished_run(make_tiny_run) -> Path:
    return make_tiny_run("checkpoints", *RUN)


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    """A private copy of the finished run (the tests damage their checkpoints), hard links kept:
    last.pt stays the same file as the newest step checkpoint."""
    copies: dict[int, str] = {}

    def copy(src: str, dst: str) -> None:
        inode = os.stat(src).st_ino
        if inode in copies:
            os.link(copies[inode], dst)
        else:
            shutil.copy2(src, dst)
            copies[inode] = dst

    return Path(shutil.copytree(finished_run, tmp_path / "runs" / "tiny", copy_function=copy))


def _flip_bit(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        byte = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([byte[0] ^ 0x01]))


def test_retention_keeps_the_newest_two_and_last_pt_is_no_second_copy(run_dir):
    steps = [step for step, _ in rundir.step_checkpoints(run_dir)]
    assert steps == [3, 2]
    last = run_dir / "last.pt"
    assert os.path.samefile(last, rundir.step_path(run_dir, 3))
    full = {os.stat(p).st_ino for p in [last, *[p for _, p in rundir.step_checkpoints(run_dir)]]}
    assert len(full) == 2  # two full checkpoints on disk, not three
    milestones = sorted(p.name for p in (run_dir / "checkpoints").glob("*.weights.pt"))
    assert milestones == ["step_2.weights.pt"]
    for path in [last, rundir.step_path(run_dir, 2), *(run_dir / "checkpoints").glob("*.weights.pt")]:
        assert rundir.verify(path) == rundir.Verdict(True), path
        assert rundir.recorded_sha(path) == rundir.file_sha256(path)


def test_a_weights_only_milestone_is_readable_but_not_resumable(run_dir, runner, tiny_recipe):
    milestone = run_dir / "checkpoints" / "step_2.weights.pt"
    state = torch.load(milestone, weights_only=True)
    assert "optimizer" not in state and state["step"] == 2
    run = RunDir(run_dir, milestone)
    assert set(run.weights("student")) == set(run.weights("teacher"))
    result = _finetune(runner, tiny_recipe, run_dir.parent, *RUN, "--resume", str(milestone))
    assert result.exit_code == 2 and "has no optimizer" in result.stderr


def test_the_quickstart_keeps_fewer_than_three_full_checkpoints():
    recipe = recipe_mod.load(ROOT / "recipes" / "quickstart.toml")
    assert recipe.train.checkpoint_every and recipe.train.steps // recipe.train.checkpoint_every > 3
    assert 1 <= recipe.train.keep_checkpoints <= 2  # plus last.pt, a link to the newest


def test_resume_auto_skips_a_bit_flipped_last_pt_and_moves_it_aside(run_dir, runner,
                                                                    tiny_recipe):
    final = torch.load(run_dir / "last.pt", weights_only=True)["state_dict"]
    size = (run_dir / "last.pt").stat().st_size
    _flip_bit(run_dir / "last.pt", size // 2)  # also step_3.pt: the same file
    result = _finetune(runner, tiny_recipe, run_dir.parent, *RUN, "--resume", "auto")
    assert result.exit_code == 0, result.stderr
    assert "skipping" in result.stderr and "SHA-256" in result.stderr
    assert f"resuming from {rundir.step_path(run_dir, 2)} at step 2" in result.stderr
    moved = [p for p in (run_dir / rundir.CORRUPT).glob("last.pt.*")
             if not p.name.endswith(rundir.SHA_SUFFIX)]
    assert len(moved) == 1 and moved[0].stat().st_size == size  # moved, never deleted
    resume = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
              if '"resume"' in line][-1]
    assert resume["step"] == 2 and "SHA-256" in resume["skipped"][0]
    # Step 3 again from the verified checkpoint: the same computation, so the same bits.
    again = torch.load(run_dir / "last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(again[k], final[k]) for k in final)


def test_resume_auto_skips_a_truncated_checkpoint_without_checksum(run_dir, runner, tiny_recipe):
    last = run_dir / "last.pt"
    for path in [last, *[p for _, p in rundir.step_checkpoints(run_dir)]]:
        rundir.sha_path(path).unlink()  # as an older tracer wrote them
    os.truncate(last, last.stat().st_size // 3)
    result = _finetune(runner, tiny_recipe, run_dir.parent, *RUN, "--resume", "auto")
    assert result.exit_code == 0, result.stderr
    assert "cannot be read" in result.stderr and "at step 2" in result.stderr


def test_an_explicit_corrupt_checkpoint_is_refused_and_left_in_place(run_dir, runner,
                                                                     tiny_recipe):
    step2 = rundir.step_path(run_dir, 2)
    _flip_bit(step2, 100)
    result = _finetune(runner, tiny_recipe, run_dir.parent, *RUN, "--resume", str(step2))
    assert result.exit_code == 2
    assert f"--resume {step2}: SHA-256" in result.stderr and "--resume auto" in result.stderr
    assert step2.is_file() and not (run_dir / rundir.CORRUPT).exists()


def test_resume_auto_with_no_intact_checkpoint_exits_2_naming_each(run_dir, runner,
                                                                   tiny_recipe):
    for _, path in rundir.step_checkpoints(run_dir):
        _flip_bit(path, 100)
    result = _finetune(runner, tiny_recipe, run_dir.parent, *RUN, "--resume", "auto")
    assert result.exit_code == 2
    line = result.stderr.strip().splitlines()[-1]
    assert "no intact checkpoint" in line and "last.pt" in line and "step_2.pt" in line
    moved = [p for p in (run_dir / rundir.CORRUPT).iterdir()
             if not p.name.endswith(rundir.SHA_SUFFIX)]
    assert len(moved) == 2
