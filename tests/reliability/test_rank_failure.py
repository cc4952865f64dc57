"""A rank of ``tracer finetune --nproc N`` that dies ends the run with one line naming the rank and
how it ended, and the command that resumes the run (or, before any checkpoint, the command that
starts it again), instead of gloo's "Connection reset by peer" alone."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer_cli.cli import app
from tracer_cli.engine import distributed
from tracer_cli.errors import WorkerFailed

TIMEOUT = 240


def _env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TRACER_NPROC"):
        env.pop(key, None)
    return env


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _worker(launcher: int, rank: int) -> int | None:
    """The pid of the worker of ``rank`` started (through torchrun) by ``launcher``."""
    for pid in _children(launcher):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return pid
    return None


@pytest.mark.slow
def test_a_killed_rank_ends_the_run_with_one_line_and_the_resume_command(tiny_recipe, tmp_path):
    out = tmp_path / "runs"
    args = ["finetune", str(tiny_recipe), "--set", "train.steps=200", "--set", "train.batch_size=8",
            "--set", "train.checkpoint_every=2", "--set", "run.eval=false",
            "--output-dir", str(out), "--nproc", "2"]
    stderr = tmp_path / "stderr.txt"
    proc = subprocess.Popen([sys.executable, "-m", "tracer_cli", *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=open(stderr, "w"))
    deadline = time.monotonic() + TIMEOUT
    checkpoint = out / "tiny" / "last.pt"
    while not checkpoint.is_file():
        assert proc.poll() is None, stderr.read_text()[-3000:]
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("no checkpoint in time")
        time.sleep(0.1)
    victim = _worker(proc.pid, 1)
    assert victim is not None, "rank 1 not found among the launcher's children"
    os.kill(victim, signal.SIGKILL)
    assert proc.wait(timeout=60) == 128 + signal.SIGKILL
    last = stderr.read_text().splitlines()[-1]
    resume = shlex.join(["tracer", *args[:-2], "--resume", "auto", "--nproc", "2"])
    assert last == f"error: rank 1 of 2 was killed by SIGKILL (exit 137); resume with: {resume}"


def test_a_failed_rank_before_any_checkpoint_says_how_to_start_again(runner, tiny_recipe,
                                                                      tmp_path, monkeypatch):
    def fail(nproc, args):
        raise WorkerFailed(1, nproc, 1)

    monkeypatch.setattr(distributed, "launch", fail)
    monkeypatch.setenv("TRACER_NPROC", "")  # _launch sets it; restored after the test
    out = tmp_path / "runs"
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out),
                                 "--nproc", "2"])
    assert result.exit_code == 1
    again = shlex.join(["tracer", "finetune", str(tiny_recipe), "--output-dir", str(out)])
    assert result.stderr.splitlines() == [
        f"error: rank 1 of 2 failed with exit code 1; no checkpoint was written yet; start again "
        f"with: {again} --nproc 2"]

    (out / "tiny").mkdir(parents=True)  # what the failed run left behind is to be replaced
    (out / "tiny" / "metrics.jsonl").write_text("{}\n")
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(out),
                                 "--nproc", "2"])
    assert result.stderr.splitlines()[-1].endswith(f"{again} --overwrite --nproc 2")


@pytest.mark.parametrize("code", [2, 130, 143])
def test_a_worker_that_explained_itself_gets_no_second_line(runner, tiny_recipe, monkeypatch,
                                                            code):
    def fail(nproc, args):
        raise WorkerFailed(0, nproc, code)

    monkeypatch.setattr(distributed, "launch", fail)
    monkeypatch.setenv("TRACER_NPROC", "")  # _launch sets it; restored after the test
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--nproc", "2"])
    assert result.exit_code == code and result.stderr == ""
