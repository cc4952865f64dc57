"""One writer per run directory: a second writer is refused, a dead writer's lock is taken over,
readers are never blocked, and a run that fails its checks leaves no empty folder behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tracer_cli.cli import app
from tracer_cli.errors import UsageError
from tracer_cli.rundir import LOCK
from tracer_cli.rundir.lock import RunLock

FAST = ["--set", "run.eval=false", "--max-steps", "2"]


def _finetune(runner, recipe: Path, out: Path, *args: str):
    return runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(out), *args])


def test_a_second_lock_on_the_same_folder_is_refused_with_the_holders_pid_and_host(tmp_path):
    with RunLock(tmp_path / "run"):
        with pytest.raises(UsageError) as err:
            RunLock(tmp_path / "run").acquire()
    message = str(err.value)
    assert f"PID {os.getpid()}" in message and socket.gethostname() in message
    RunLock(tmp_path / "run").acquire().release()  # free again once released


@pytest.mark.parametrize("mode", [["--overwrite"], ["--resume", "auto"]])
def test_a_second_writer_exits_2_and_destroys_nothing(runner, tiny_recipe, tmp_path, mode):
    run_dir = tmp_path / "runs" / "tiny"
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
    with RunLock(run_dir):
        result = _finetune(runner, tiny_recipe, tmp_path / "runs", *FAST, *mode)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and f"PID {os.getpid()}" in line, result.stderr
    assert "being written by another tracer process" in line
    assert (run_dir / "metrics.jsonl").read_text() == '{"event": "train", "step": 1}\n'


def test_a_lock_left_by_a_killed_writer_is_taken_over_and_resume_auto_works(
        runner, tiny_recipe, tmp_path):
    out = tmp_path / "runs"
    assert _finetune(runner, tiny_recipe, out, "--set", "run.eval=false").exit_code == 0
    run_dir = out / "tiny"
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from tracer_cli.rundir.lock import RunLock;"
         " RunLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(600)",
         str(run_dir)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused = _finetune(runner, tiny_recipe, out, "--set", "run.eval=false", "--resume",
                            "auto")
        assert refused.exit_code == 2 and f"PID {holder.pid}" in refused.stderr
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # The dead holder's record is still in the lock file; the kernel dropped its lock.
    assert json.loads((run_dir / LOCK).read_text())["pid"] == holder.pid
    resumed = _finetune(runner, tiny_recipe, out, "--set", "run.eval=false", "--resume", "auto")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"took over the lock of a tracer process that is gone (PID {holder.pid}" in \
        resumed.stderr
    assert (run_dir / LOCK).read_text() == ""  # released at the end


def test_readers_work_while_a_writer_holds_the_lock(runner, make_tiny_run):
    run_dir = make_tiny_run("locked-reader")
    with RunLock(run_dir):
        result = runner.invoke(app, ["eval", str(run_dir), "--json"])
    assert result.exit_code == 0, result.stderr
    assert "synth-sketch" in json.loads(result.stdout)["datasets"]


def test_a_run_that_fails_its_checks_leaves_no_run_directory(runner, tiny_recipe, tmp_path):
    result = _finetune(runner, tiny_recipe, tmp_path / "runs", *FAST,
                       "--set", "data.train.name=no-such-dataset")
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "runs").exists()  # neither the run directory nor runs/ it made


def test_overwrite_through_a_symlinked_run_directory_keeps_the_link(runner, tiny_recipe,
                                                                     tmp_path):
    """``--overwrite`` empties the run the link points to and writes the new run there; the link
    (say, to a bigger disk) stays a link."""
    target = tmp_path / "big-disk" / "tiny"
    target.mkdir(parents=True)
    (target / "recipe.lock.toml").write_text("# the previous run\n")
    (target / "metrics.jsonl").write_text('{"event": "train", "step": 1}\n')
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "tiny").symlink_to(target, target_is_directory=True)
    result = _finetune(runner, tiny_recipe, tmp_path / "runs", *FAST, "--overwrite")
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "runs" / "tiny").is_symlink()
    assert "the previous run" not in (target / "recipe.lock.toml").read_text()
    assert (target / "last.pt").is_file()
    assert '{"event": "train", "step": 1}' not in (target / "metrics.jsonl").read_text()
