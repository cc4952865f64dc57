"""Nothing is left behind: what a killed process (SIGKILL, preemption, a C++ abort) leaves of its
atomic writes is removed by the next run of the same run directory or the next export to the
same output (a full disk while exporting: test_disk_full.py).

A kill -9 is simulated by leaving a temporary exactly as :func:`tracer_cli.io.atomic_path` /
``atomic_dir`` name it, with no process holding its lock; a live writer is simulated by holding
that lock."""

from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

import pytest

import tracer_cli.commands.model_export as export_mod
from tracer_cli import io, rundir
from tracer_cli.cli import app
from tracer_cli.engine import checkpoint

RUN = ["--set", "run.eval=false", "--max-steps", "3", "--set", "train.checkpoint_every=1",
       "--set", "train.keep_checkpoints=2"]
STALE = "a1b2c3d4"  # the 8 random characters tempfile puts in a temporary's name


@pytest.fixture(scope="module")
def finished_run(make_tiny_run) -> Path:
    return make_tiny_run("debris", *RUN)


@pytest.fixture
def run_dir(finished_run, tmp_path) -> Path:
    return Path(shutil.copytree(finished_run, tmp_path / "runs" / "tiny"))


def _killed_write(folder: Path, name: str, size: int = 1000) -> Path:
    """What atomic_path leaves of ``folder/name`` when its process is killed mid-write."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.{STALE}.tmp"
    tmp.write_bytes(b"\0" * size)
    return tmp


def test_only_unlocked_temporaries_of_the_named_targets_are_removed(tmp_path):
    dead = _killed_write(tmp_path, "step_4.pt")
    live = tmp_path / ".step_4.pt.zzzzzzzz.tmp"
    live.write_bytes(b"being written")
    others = [_killed_write(tmp_path, "notes.txt"), tmp_path / ".step_4.pt.backup"]
    others[1].write_text("the user's")
    fd = os.open(live, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX)  # as atomic_path holds it while writing
    try:
        removed = io.remove_stale_temps(tmp_path, lambda name: name == "step_4.pt")
    finally:
        os.close(fd)
    assert removed == [dead] and not dead.exists()
    assert live.exists() and all(p.exists() for p in others)


def test_an_export_moved_aside_by_a_killed_overwrite_is_put_back(tmp_path):
    aside = tmp_path / f".export.{STALE}.old"
    aside.mkdir()
    (aside / "old.txt").write_text("the earlier export")
    built = tmp_path / f".export.{STALE}"
    built.mkdir()
    (built / "new.txt").write_text("complete, never renamed")
    assert io.remove_stale_temps(tmp_path, lambda name: name == "export") == [built]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]
    assert (tmp_path / "export" / "old.txt").read_text() == "the earlier export"


def test_atomic_writes_sweep_their_own_target_first(tmp_path):
    stale = _killed_write(tmp_path, "summary.json")
    io.atomic_write_json(tmp_path / "summary.json", {"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]
    assert not stale.exists()


def test_resume_removes_what_a_killed_checkpoint_write_left(run_dir, runner, tiny_recipe):
    leftovers = [_killed_write(run_dir / "checkpoints", "step_4.pt", 1 << 20),
                 _killed_write(run_dir / "checkpoints", "step_4.pt.sha256"),
                 _killed_write(run_dir, "last.pt"), _killed_write(run_dir, "last.pt.sha256"),
                 _killed_write(run_dir / "eval", "final_student.json")]
    theirs = _killed_write(run_dir, "notes.md")  # not a file of the run: not ours to remove
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir",
                                 str(run_dir.parent), *RUN, "--resume", "auto"])
    assert result.exit_code == 0, result.stderr
    assert "removed 5 temporary file(s)" in result.stderr
    assert not any(p.exists() for p in leftovers) and theirs.exists()


def test_a_finished_run_removes_debris_left_while_it_ran(tmp_path, runner, tiny_recipe,
                                                         monkeypatch):
    """A temporary that appears during the run (here: after the last checkpoint) is gone when
    the run has finished."""
    save = checkpoint.save_checkpoint
    planted: list[Path] = []

    def save_then_leave_debris(run_dir, step, *args, **kwargs):
        path = save(run_dir, step, *args, **kwargs)
        planted.append(_killed_write(Path(run_dir) / "checkpoints", f"step_{step + 1}.pt"))
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_leave_debris)
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir",
                                 str(tmp_path / "runs"), *RUN])
    assert result.exit_code == 0, result.stderr
    assert planted and not any(p.exists() for p in planted)
    run_dir = tmp_path / "runs" / "tiny"
    assert [p.name for p in run_dir.rglob(".*") if p.name != rundir.LOCK] == []


def _export(runner, run_dir: Path, output: Path, fmt: str = "safetensors", *args: str):
    return runner.invoke(app, ["export", str(run_dir), "--format", fmt, "--output", str(output),
                               *args])


def test_the_next_export_removes_a_killed_exports_folder(run_dir, runner, tmp_path):
    output = tmp_path / "out" / "export"
    half = output.parent / f".export.{STALE}"
    half.mkdir(parents=True)
    (half / "image_encoder.pt").write_bytes(b"\0" * 4096)
    result = _export(runner, run_dir, output)
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in output.parent.iterdir()] == ["export"]


def test_a_killed_overwrite_gives_the_old_export_back_before_the_checks(run_dir, runner,
                                                                        tmp_path):
    output = tmp_path / "export"
    aside = tmp_path / f".export.{STALE}.old"
    aside.mkdir()
    (aside / "old.txt").write_text("the earlier export")
    result = _export(runner, run_dir, output)
    assert result.exit_code == 2 and "--overwrite" in result.stderr  # it is there again
    assert (output / "old.txt").read_text() == "the earlier export"


def _no_loading(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(export_mod.RunDir, "weights", refuse)
    monkeypatch.setattr(export_mod.RunDir, "model", refuse)


@pytest.mark.parametrize("output, message", [
    ("/proc/x", "no folder can be made in '/proc'"),
    ("/sys/x", "no folder can be made in '/sys'"),
    ("{tmp}/" + "n" * 300, "300 bytes long; at most 241 fit"),
    ("{tmp}/" + "n" * 250, "250 bytes long; at most 241 fit"),  # fits, but its temporary not
    ("{tmp}/" + "d" * 300 + "/export", "300 bytes long; at most 255 fit"),
])
def test_an_unusable_output_is_one_line_exit_2_before_the_model_loads(
        run_dir, runner, tmp_path, monkeypatch, output, message):
    _no_loading(monkeypatch)
    output = output.format(tmp=tmp_path)
    result = _export(runner, run_dir, Path(output))
    assert result.exit_code == 2, result.stderr
    line = result.stderr.strip()
    assert line.startswith(f"error: --output '{output}': ") and message in line, line
    assert len(line.splitlines()) == 1 and ".tmp" not in line
    assert not os.path.exists(output)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through folder permissions")
def test_an_output_in_a_read_only_folder_is_refused_before_loading(run_dir, runner, tmp_path,
                                                                  monkeypatch):
    _no_loading(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = _export(runner, run_dir, locked / "export")
    assert result.exit_code == 2 and "Permission denied" in result.stderr, result.stderr
