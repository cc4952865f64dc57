"""A full disk stops a run with one line naming the file, keeps the last good checkpoint, leaves
nothing partial and prints the command that resumes the run; an export, likewise, stops with one
line and leaves no hidden folder. The failure is injected at the file-system boundary (the file
object torch.save writes through, and open())."""

from __future__ import annotations

import builtins
import errno
import os
import shlex
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

import tracer_cli.commands.model_export as export_mod
from tracer_cli import io, rundir
from tracer_cli.rundir import checksums
from tracer_cli.cli import app
from tracer_cli.cli.common import boundary
from tracer_cli.engine import checkpoint
from tracer_cli.errors import DiskFullError

RUN = ["--set", "run.eval=false", "--max-steps", "3", "--set", "train.checkpoint_every=1"]


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes, like a disk that fills up."""

    def __init__(self, fh, room: int):
        self._fh, self._room = fh, room

    def write(self, data) -> int:
        if len(data) > self._room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._room -= len(data)
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()


def _fill_disk_when_writing(monkeypatch, name: str, room: int = 4096) -> None:
    """Files named ``name`` (opened for writing by the checkpoint code) hit a full disk."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        if "w" in mode and Path(file).name.startswith(f".{name}."):
            return _FullDisk(fh, room)
        return fh

    monkeypatch.setattr(checkpoint, "open", fake_open, raising=False)


def test_disk_full_while_checkpointing_keeps_the_last_good_one_and_says_how_to_resume(
        runner, tiny_recipe, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    _fill_disk_when_writing(monkeypatch, "step_3.pt")
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out), *RUN])
    assert result.exit_code == 1
    run_dir = out / "tiny"
    lines = result.stderr.strip().splitlines()
    line = lines[-1]
    assert line.startswith("error: no space left on device writing "
                           f"'{rundir.step_path(run_dir, 3)}'")
    assert f"the last good checkpoint is {rundir.step_path(run_dir, 2)} (step 2)" in line
    # Nothing partial: no temporary file, no step 3, and last.pt is the verified step 2.
    leftovers = [p.name for p in run_dir.rglob("*") if p.name.startswith(".") and
                 p.name != rundir.LOCK]
    assert leftovers == []
    assert [s for s, _ in rundir.step_checkpoints(run_dir)] == [2, 1]
    assert os.path.samefile(run_dir / "last.pt", rundir.step_path(run_dir, 2))
    assert checksums.verify(run_dir / "last.pt").ok
    # The printed command resumes the run once there is space again.
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[:2] == ["tracer", "finetune"] and command[-2:] == ["--resume", "auto"]
    monkeypatch.undo()
    resumed = runner.invoke(app, command[1:])
    assert resumed.exit_code == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "at step 2 of 3" in resumed.stderr
    assert [s for s, _ in rundir.step_checkpoints(run_dir)] == [3, 2]


def test_disk_full_on_a_small_file_names_it(tmp_path, monkeypatch):
    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return _FullDisk(fh, 0) if "a" in mode or "w" in mode else fh

    monkeypatch.setattr(io, "open", full_open, raising=False)
    with pytest.raises(DiskFullError, match=r"no space left on device writing '.*metrics.jsonl'"):
        io.append_jsonl(tmp_path / "metrics.jsonl", {"step": 1})
    monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: _raise_no_space())
    with pytest.raises(DiskFullError, match=r"writing '.*summary.json'"):
        io.atomic_write_json(tmp_path / "summary.json", {"a": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]  # no temporary file left


def _raise_no_space():
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_the_cli_boundary_reports_any_full_disk_in_one_line():
    command = typer.Typer()

    @command.command()
    @boundary
    def write() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/data/out.onnx")

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: no space left on device writing '/data/out.onnx'"


def _no_space_writing(monkeypatch, prefix: str) -> None:
    """``Path.write_text`` to a file whose name starts with ``prefix`` creates the file, then
    finds no room for its bytes (as on a disk with a few KiB free)."""
    real_write_text = Path.write_text

    def write_text(self, data, *args, **kwargs):
        if self.name.startswith(prefix):
            real_write_text(self, "")
            _raise_no_space()
        return real_write_text(self, data, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)


def _start_again(runner, monkeypatch, line: str, overwrite: bool):
    """The command a stop before the first checkpoint prints, run once there is space again."""
    assert "None" not in line and "--resume" not in line, line
    command = shlex.split(line.split("start again (there is no checkpoint to resume from yet) "
                                     "with: ", 1)[1])
    assert command[:2] == ["tracer", "finetune"] and ("--overwrite" in command) is overwrite
    monkeypatch.undo()
    again = runner.invoke(app, command[1:])
    assert again.exit_code == 0, again.stderr
    return again


def test_disk_full_before_the_first_checkpoint_prints_a_command_that_starts_again(
        runner, tiny_recipe, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    _fill_disk_when_writing(monkeypatch, "step_3.pt")
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out),
                                 "--set", "run.eval=false", "--max-steps", "3",
                                 "--set", "train.checkpoint_every=0"])
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert "no checkpoint was written before it (train.checkpoint_every = 0)" in line
    _start_again(runner, monkeypatch, line, overwrite=True)  # the run left its records
    assert [s for s, _ in rundir.step_checkpoints(out / "tiny")] == [3]


def test_disk_full_on_the_first_file_names_it_without_none_and_leaves_nothing(
        runner, tiny_recipe, tmp_path, monkeypatch):
    out = tmp_path / "runs"
    _no_space_writing(monkeypatch, f".{rundir.RECIPE_LOCK}.")
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out),
                                 "--set", "run.eval=false", "--max-steps", "2"])
    assert result.exit_code == 1
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: no space left on device writing "
                           f"'{rundir.recipe_lock_path(out / 'tiny')}'; free some space, then "
                           "start again"), line
    assert not out.exists()  # nothing was left to overwrite
    _start_again(runner, monkeypatch, line, overwrite=False)


def test_a_failed_write_probe_removes_all_it_made(runner, tiny_recipe, tmp_path, monkeypatch):
    _no_space_writing(monkeypatch, rundir.WRITE_TEST)
    kept = tmp_path / "kept" / "tiny"
    kept.mkdir(parents=True)  # a folder that was there before stays, empty as it was
    for out in (tmp_path / "runs", tmp_path / "kept"):
        result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out),
                                     "--set", "run.eval=false", "--max-steps", "2"])
        assert result.exit_code == 2, result.stderr
        assert f"cannot write to run directory '{out / 'tiny'}': No space left on device" in \
            result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()
    assert list(kept.iterdir()) == []


@pytest.fixture(scope="module")
def export_run(make_tiny_run) -> Path:
    return make_tiny_run("disk-full-export", "--set", "run.eval=false")


@pytest.mark.parametrize("fmt, name", [("torchscript", "image_encoder.pt"),
                                       ("safetensors", "model.safetensors")])
def test_a_full_disk_while_exporting_is_one_line_and_leaves_nothing(export_run, runner,
                                                                    tmp_path, monkeypatch, fmt,
                                                                    name):
    real_open = builtins.open

    def full_open(file, mode="r", *args, **kwargs):
        fh = real_open(file, mode, *args, **kwargs)
        return _FullDisk(fh, 0) if "w" in mode and Path(file).name == name else fh

    monkeypatch.setattr(export_mod, "open", full_open, raising=False)
    output = tmp_path / "out" / "export"
    result = runner.invoke(app, ["export", str(export_run), "--format", fmt, "--output",
                                 str(output)])
    assert result.exit_code == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == (f"error: no space left on device writing '{output / name}'; nothing "
                         "was written; free some space and export again")
    assert "Traceback" not in result.stderr
    assert list(output.parent.iterdir()) == []  # no hidden folder keeps the disk full
