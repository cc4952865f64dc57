"""Worker for tests/engine/test_distributed.py, run under torchrun (N ranks) or plain python (1).

It builds the engine exactly as ``finetune`` does, takes three optimizer steps on the first
global batches and writes, from rank 0: the gradients each step handed to the optimizer, the
logged records and the final weights. Between steps 2 and 3 a non-finite loss is injected: every
rank must raise before its backward pass, and DDP must take the next step normally. Under DDP it
also checks that features of unequal per-rank sizes are gathered in rank order.

    python ddp_worker.py RECIPE OUT
"""

from __future__ import annotations

import sys

import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli.engine import distributed
from tracer_cli.engine import step as step_mod
from tracer_cli.engine.data import TrainStream
from tracer_cli.engine.losses import gather_features
from tracer_cli.engine.step import NonFiniteLoss
from tracer_cli.engine.precision import resolve_precision
from tracer_cli.engine.build import build_dataset, build_task, seed_everything
from tracer_cli.engine.run import build_backbone
from tracer_cli.engine.loop import build_trainer


def check_unequal_gather(ctx: distributed.DistContext) -> None:
    sizes = [r + 1 for r in range(ctx.world_size)]
    local = torch.full((sizes[ctx.rank], 2), float(ctx.rank), requires_grad=True)
    gathered, _ = gather_features(local, local, sizes)
    expected = torch.cat([torch.full((n, 2), float(r)) for r, n in enumerate(sizes)])
    assert torch.equal(gathered.detach(), expected), gathered
    gathered.sum().backward()  # only the local slot carries the gradient
    assert torch.equal(local.grad, torch.ones_like(local))


def main(recipe_path: str, out: str) -> None:
    recipe = recipe_mod.load(recipe_path)
    ctx = distributed.setup("cpu")
    if ctx.distributed:
        check_unequal_gather(ctx)
    seed_everything(recipe.run.seed)
    backbone = build_backbone(recipe)
    bundle = build_dataset(recipe.data.train, "data.train", "train", backbone.preprocess_train)
    trainer = build_trainer(recipe, ctx, backbone, build_task(recipe), bundle,
                            resolve_precision("32-true", ctx.device), print)
    grads: list[dict[str, torch.Tensor]] = []
    trainer.optimizer.register_step_pre_hook(lambda *_: grads.append(
        {n: p.grad.detach().clone() for n, p in backbone.model.named_parameters()
         if p.grad is not None}))
    batches = iter(TrainStream(bundle.dataset, recipe.train.batch_size, recipe.run.seed,
                               rank=ctx.rank, world_size=ctx.world_size))

    def step(index: int) -> dict[str, float]:
        batch, bad = next(batches)
        return trainer.step(index, batch, distributed.exchange(ctx, batch, bad, 0).shard)

    records = [step(0), step(1)]
    real = step_mod.clip_loss
    step_mod.clip_loss = lambda *args: real(*args) * float("nan")
    try:
        step(2)
        raise AssertionError("a NaN loss did not raise")
    except NonFiniteLoss:
        pass
    finally:
        step_mod.clip_loss = real
    records.append(step(2))
    if ctx.is_main:
        torch.save({"grads": grads, "records": records, "weights": backbone.model.state_dict(),
                    "world_size": ctx.world_size}, out)
    distributed.teardown(ctx)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
