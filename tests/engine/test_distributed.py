"""DDP plumbing: shards, gradient scaling, device rules, and 2 gloo ranks against one process.

The end-to-end check (two ``tracer finetune`` processes against one) is in
``tests/cli/test_distributed_run.py``; here the gradients of the first steps are compared, which is
stricter: AdamW is nearly blind to a constant factor on a gradient, the comparison of gradients is
not.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tracer_cli.engine import distributed
from tracer_cli.engine.distributed import Shard, exchange, merge_meta
from tracer_cli.engine.losses import scale_grad
from tracer_cli.errors import UsageError

WORKER = Path(__file__).with_name("ddp_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def test_shard_positions():
    shard = Shard((4, 3, 4), rank=1)
    assert (shard.world_size, shard.offset, shard.size) == (3, 4, 3)
    assert Shard((8,)).offset == 0 and Shard((8,)).size == 8


def test_merge_meta_concatenates_in_rank_order():
    parts = [{"label": torch.tensor([1, 2]), "caption": ["a", "b"]},
             {"label": torch.tensor([3]), "caption": ["c"]}]
    merged = merge_meta(parts)
    assert merged["label"].tolist() == [1, 2, 3] and merged["caption"] == ["a", "b", "c"]
    assert merge_meta([]) == {}


def test_exchange_in_one_process_is_local():
    ctx = distributed.DistContext()
    shared = exchange(ctx, {"image": torch.zeros(5, 3), "label": torch.arange(5)}, ["x"], 15)
    assert shared.shard == Shard((5,)) and shared.bad == ["x"] and shared.stop_signal == 15
    assert exchange(ctx, None, [], 0).shard.sizes == (0,)


@pytest.mark.numerics
def test_scale_grad_keeps_the_value_bit_for_bit():
    x = torch.tensor(14.2857, requires_grad=True)
    y = scale_grad(x * 1.0, 0.5)
    assert torch.equal(y.detach(), x.detach())
    y.backward()
    assert x.grad.item() == 0.5
    assert scale_grad(x, 1.0) is x


def test_single_process_context_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = distributed.setup("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    with distributed.local_only():  # a nested run (the embedded build on rank 0) stays local
        assert distributed.launched_world_size() == 1
    assert distributed.launched_world_size() == 4


def test_device_rules_under_torchrun(monkeypatch):
    with pytest.raises(UsageError, match="names one GPU"):
        distributed.rank_device("cuda:1", 0)
    assert distributed.rank_device("cpu", 3) == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UsageError, match="LOCAL_RANK"):
        distributed.setup("cpu")
    monkeypatch.setenv("TRACER_DIST_TIMEOUT_MIN", "soon")
    with pytest.raises(UsageError, match="TRACER_DIST_TIMEOUT_MIN"):
        distributed._timeout()


def _run_worker(recipe: Path, out: Path, nproc: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, str(WORKER), str(recipe), str(out)]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", *cmd[1:]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_gloo_ranks_give_the_gradients_of_one_process(tiny_recipe, tmp_path):
    recipe = tmp_path / "grads.toml"
    recipe.write_text(tiny_recipe.read_text().replace("batch_size = 16", "batch_size = 8")
                      .replace("lr = 1e-4", "lr = 1e-4\ngrad_clip = 0"))
    _run_worker(recipe, tmp_path / "one.pt", 1)
    _run_worker(recipe, tmp_path / "two.pt", 2)
    one = torch.load(tmp_path / "one.pt", weights_only=True)
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert (one["world_size"], two["world_size"]) == (1, 2)
    _assert_same_steps(one, two)
    # train.accum_steps = 4 on two ranks: each rank's 4 images in 4 micro-batches of 1, one
    # all-reduce per step; still the gradient of one process on the whole batch of 8.
    accum = tmp_path / "accum.toml"
    accum.write_text(recipe.read_text().replace("lr = 1e-4", "lr = 1e-4\naccum_steps = 4"))
    _run_worker(accum, tmp_path / "two_accum.pt", 2)
    _assert_same_steps(one, torch.load(tmp_path / "two_accum.pt", weights_only=True))


def _assert_same_steps(one: dict, two: dict) -> None:
    assert len(one["grads"]) == len(two["grads"]) == 3  # the NaN batch took no optimizer step
    for step, (g1, g2) in enumerate(zip(one["grads"], two["grads"])):
        assert g1.keys() == g2.keys()
        for name, expected in g1.items():
            # Summation order differs between one batch of 8 and two gathered halves of 4. From
            # step 2 on the two runs also start from slightly different weights: AdamW's first
            # steps divide by |g|, which turns rounding-level gradient differences into weight
            # differences of order lr. So step 1 is held to 1e-4 and later steps to 1e-3: a
            # wrong 1/W gradient scaling would be off by 100%, far outside either.
            rel = 1e-4 if step == 0 else 1e-3
            tol = rel * float(expected.abs().max()) + 1e-8
            diff = float((g2[name] - expected).abs().max())
            assert diff <= tol, f"step {step + 1} {name}: {diff} > {tol}"
    for r1, r2 in zip(one["records"], two["records"]):
        assert r1.keys() == r2.keys()
        assert r1["loss_clip"] == pytest.approx(r2["loss_clip"], abs=1e-6)
        assert r1["loss"] == pytest.approx(r2["loss"], abs=1e-5)
