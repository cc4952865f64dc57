"""Checkpoints never lose a run: bounded retention, last.pt without a second copy, SHA-256
verification, and ``--resume auto`` falling back to the newest intact checkpoint."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.rundir import checksums
from tracer_cli.cli import app
from tracer_cli.commands.finished_run import RunDir

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
        assert checksums.verify(path) == checksums.Verdict(True), path
        assert checksums.recorded_sha(path) == checksums.file_sha256(path)


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


# --------------------------------------------------------------------------- one checksum per file


def _layout(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A run's checkpoint layout without training: step_1 and step_2 with their sidecars, last.pt
    a hard link to step_2 with its own."""
    run = tmp_path / "run"
    steps = [rundir.step_path(run, n) for n in (1, 2)]
    steps[0].parent.mkdir(parents=True)
    for n, path in enumerate(steps, 1):
        path.write_bytes(bytes([n]) * 4096)
        checksums.write_sha(path, checksums.file_sha256(path))
    os.link(steps[1], run / "last.pt")
    checksums.write_sha(run / "last.pt", checksums.recorded_sha(steps[1]))
    return run / "last.pt", steps[1], steps[0]


def test_a_removed_sidecar_does_not_exempt_bytes_another_name_records(tmp_path):
    last, step2, _ = _layout(tmp_path)
    rundir.sha_path(last).unlink()
    assert checksums.verify(last).ok  # step_2.pt's checksum vouches for the same bytes
    _flip_bit(step2, 100)  # last.pt too: one file
    assert not checksums.verify(last).ok and "SHA-256" in checksums.verify(last).reason
    rundir.sha_path(step2).write_text("")  # no name records a checksum any more
    assert checksums.verify(last) == checksums.Verdict(
        True, "no checksum recorded (written by an older tracer)")


def test_a_stale_sidecar_never_condemns_intact_bytes(tmp_path):
    """As a full disk leaves it: last.pt.sha256 still holds the previous checkpoint's digest."""
    last, step2, step1 = _layout(tmp_path)
    checksums.write_sha(last, checksums.recorded_sha(step1))
    assert checksums.verify(last).ok and checksums.verify(step2).ok
    _flip_bit(step2, 100)
    assert not checksums.verify(last).ok and not checksums.verify(step2).ok


def test_a_copy_is_not_vouched_for_by_the_step_it_was_copied_from(tmp_path):
    last, step2, _ = _layout(tmp_path)
    last.unlink()
    shutil.copyfile(step2, last)  # a file system without hard links
    _flip_bit(last, 100)
    assert not checksums.verify(last).ok  # its own sidecar
    assert checksums.verify(step2).ok  # the copy's damage is not the step's


def test_resume_auto_does_not_trust_last_pt_when_only_its_sidecar_is_gone(run_dir, runner,
                                                                         tiny_recipe):
    step3 = rundir.step_path(run_dir, 3)
    _flip_bit(step3, step3.stat().st_size // 2)
    rundir.sha_path(run_dir / "last.pt").unlink()
    result = _finetune(runner, tiny_recipe, run_dir.parent, *RUN, "--resume", "auto")
    assert result.exit_code == 0, result.stderr
    assert "skipping" in result.stderr and "SHA-256" in result.stderr
    assert f"resuming from {rundir.step_path(run_dir, 2)} at step 2" in result.stderr


def test_a_full_disk_while_writing_last_pt_sha256_keeps_the_checkpoint(tmp_path, runner,
                                                                      tiny_recipe, monkeypatch):
    """The checksum write fails after step 3's bytes are final: the run stops, and the next
    --resume auto trusts step 3 (its step file's checksum) instead of moving it aside."""
    write_text = Path.write_text

    def full_for_last_sha(self, *args, **kwargs):
        if self.name.startswith(".last.pt.sha256.") and _newest(self.parent) == "step_3.pt":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_last_sha)
    out = tmp_path / "runs"
    result = _finetune(runner, tiny_recipe, out, *RUN)
    assert result.exit_code == 1 and "no space left" in result.stderr, result.stderr
    monkeypatch.undo()
    run_dir = out / "tiny"
    assert os.path.samefile(run_dir / "last.pt", rundir.step_path(run_dir, 3))
    result = _finetune(runner, tiny_recipe, out, *RUN, "--resume", "auto")
    assert result.exit_code == 0, result.stderr
    assert "skipping" not in result.stderr and "at step 3 of 3" in result.stderr
    assert not (run_dir / rundir.CORRUPT).exists()


def _newest(run_dir: Path) -> str:
    steps = rundir.step_checkpoints(run_dir)
    return steps[0][1].name if steps else ""


@pytest.mark.parametrize("command", ["eval", "export"])
def test_eval_and_export_refuse_a_bit_flipped_checkpoint(run_dir, runner, tmp_path, command):
    last = run_dir / "last.pt"
    _flip_bit(last, last.stat().st_size // 2)
    args = [command, str(run_dir)] + (
        ["--format", "safetensors", "--output", str(tmp_path / "export")]
        if command == "export" else [])
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: checkpoint '{last}' is damaged (SHA-256 "), line
    assert "--checkpoint" in line and "--resume auto" in line
    assert not (tmp_path / "export").exists()
    rundir.sha_path(last).unlink()  # step_3.pt's checksum still records these bytes
    assert runner.invoke(app, args).exit_code == 2
