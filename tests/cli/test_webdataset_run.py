"""``tracer finetune`` on WebDataset shards: trained on tar shards, evaluated on a shard test set;
a run stopped by SIGTERM then resumed ends bit-for-bit where an uninterrupted run ends, and two
gloo processes, each reading its own samples, end where one process ends.

The resume runs are in-process (one process, so the two computations of the weights are the same
computation repeated, and can be compared exactly).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY_RECIPE
from tests.layouts import png, write_shards
from tracer_cli.cli import app
from tracer_cli.engine import checkpoint

NAMES = ["red", "blue"]
DATA = """[data]
train = {{ name = "webdataset", urls = "{dir}/train-{{000000..000003}}.tar", classnames = {names} }}
id = [{{ name = "webdataset", urls = "{dir}/test-000000.tar", classnames = {names} }}]
eval_batch_size = 8
"""
# 24 training samples in batches of 8: 3 batches an epoch, so 7 steps cross two epoch boundaries.
ARGS = ["--set", "train.steps=7", "--set", "train.batch_size=8", "--set", "train.warmup_steps=1"]


def _samples(n: int) -> list[dict]:
    colours = ((200, 30, 30), (30, 30, 200))
    return [{"__key__": f"{i:06d}", "png": png(colour=colours[i % 2]), "cls": i % 2}
            for i in range(n)]


@pytest.fixture
def recipe(tmp_path) -> Path:
    shards = tmp_path / "shards"
    write_shards(shards, _samples(24), per_shard=6)
    write_shards(shards, _samples(8), per_shard=8, prefix="test")
    start, end = TINY_RECIPE.index("[data]"), TINY_RECIPE.index("[task]")
    data = DATA.format(dir=shards, names=json.dumps(NAMES))
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_RECIPE[:start] + data + "\n" + TINY_RECIPE[end:])
    return path


def _finetune(runner, recipe: Path, out: Path, *extra: str):
    return runner.invoke(app, ["finetune", str(recipe), "--output-dir", str(out), *ARGS, *extra])


@pytest.mark.slow
def test_a_run_on_shards_stopped_and_resumed_ends_as_an_uninterrupted_one(runner, recipe,
                                                                          tmp_path, monkeypatch):
    done = _finetune(runner, recipe, tmp_path / "reference")
    assert done.exit_code == 0, done.stderr
    reference = checkpoint.load(tmp_path / "reference" / "tiny" / "last.pt")
    evals = [json.loads(line) for line in
             (tmp_path / "reference" / "tiny" / "metrics.jsonl").read_text().splitlines()
             if '"eval"' in line]
    assert evals and "accuracy" in json.dumps(evals[-1])

    save = checkpoint.save_checkpoint

    def save_then_sigterm(*args, **kwargs):  # the first checkpoint (step 2), then a SIGTERM
        path = save(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGTERM)
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", save_then_sigterm)
    stopped = _finetune(runner, recipe, tmp_path / "runs")
    monkeypatch.setattr(checkpoint, "save_checkpoint", save)
    assert stopped.exit_code == 143, stopped.stderr
    stopped_at = checkpoint.load(tmp_path / "runs" / "tiny" / "last.pt")["step"]
    assert stopped_at < 7

    resumed = _finetune(runner, recipe, tmp_path / "runs", "--resume", "auto")
    assert resumed.exit_code == 0, resumed.stderr
    assert f"at step {stopped_at} of 7" in resumed.stderr
    final = checkpoint.load(tmp_path / "runs" / "tiny" / "last.pt")
    assert final["data_position"] == reference["data_position"] == {"epoch": 2, "batch": 1}
    different = [k for k in reference["state_dict"]
                 if not torch.equal(reference["state_dict"][k], final["state_dict"][k])]
    assert not different, f"the resumed run's weights differ in {different[:5]}"


def _subprocess_finetune(recipe: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "CI": "1"}
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "TRACER_NPROC"):
        env.pop(key, None)
    # The learning rate of tests/cli/test_distributed_run.py, which says why it is low.
    args = [*ARGS, "--set", "train.steps=4", "--set", "train.lr=1e-5", "--set", "run.eval=false"]
    return subprocess.run([sys.executable, "-m", "tracer_cli", "finetune", str(recipe),
                           "--output-dir", str(out), *args, *extra], env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
@pytest.mark.numerics
def test_two_gloo_processes_on_shards_end_with_the_weights_of_one(recipe, tmp_path):
    one = _subprocess_finetune(recipe, tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _subprocess_finetune(recipe, tmp_path / "two", "--nproc", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    a = checkpoint.load(tmp_path / "one" / "tiny" / "last.pt")
    b = checkpoint.load(tmp_path / "two" / "tiny" / "last.pt")
    assert b["world_size"] == 2 and a["data_position"] == b["data_position"]
    # Two different computations (other batch shapes, a gather): float32 rounding apart.
    for key, value in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][key], value, rtol=0, atol=1e-5)
