"""`train.channels_last` and `train.compile`: speed options that must not change what is computed."""

from __future__ import annotations

import copy

import pytest
import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli.engine.distributed import DistContext
from tracer_cli.engine.precision import resolve_precision
from tracer_cli.engine.build import build_dataset, build_task
from tracer_cli.engine.run import build_backbone
from tracer_cli.engine.loop import build_trainer


def _trainer(tiny_recipe, *sets):
    rec = recipe_mod.load(tiny_recipe, ["train.lr=1e-3", *sets])
    torch.manual_seed(0)
    backbone = build_backbone(rec)
    bundle = build_dataset(rec.data.train, "data.train", "train", backbone.preprocess_train)
    precision = resolve_precision("32-true", torch.device("cpu"))
    trainer = build_trainer(rec, DistContext(), backbone, build_task(rec), bundle, precision,
                            notice=lambda msg: None)
    batch = next(iter(torch.utils.data.DataLoader(bundle.dataset, batch_size=8)))
    return trainer, {"image": batch["image"], "label": batch["label"]}


def test_channels_last_converts_convs_and_keeps_the_numbers(tiny_recipe):
    plain, batch = _trainer(tiny_recipe)
    fast, _ = _trainer(tiny_recipe, "train.channels_last=true")
    conv = fast.student.visual.conv1.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert not plain.student.visual.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # Same loss before and after one update (parameters are compared through the loss: AdamW's
    # first step divides by |g|, so rounding-level gradient differences move single weights).
    for step in (1, 2):
        a, b = plain.step(step, copy.deepcopy(batch)), fast.step(step, copy.deepcopy(batch))
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5), step


@pytest.mark.slow
def test_compile_wraps_the_training_forward(tiny_recipe):
    compiled, batch = _trainer(tiny_recipe, "train.compile=true")
    assert isinstance(compiled.forward, torch._dynamo.eval_frame.OptimizedModule)
    plain, _ = _trainer(tiny_recipe)
    a, b = plain.step(1, copy.deepcopy(batch)), compiled.step(1, copy.deepcopy(batch))
    assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_bn_stats_keeps_running_statistics(tiny_recipe, frozen):
    trainer, batch = _trainer(tiny_recipe, f"model.freeze_bn_stats={str(frozen).lower()}")
    bn = trainer.student.visual.bn1
    before = bn.running_mean.clone()
    trainer.step(1, batch)
    assert torch.equal(bn.running_mean, before) is frozen
    assert bn.weight.requires_grad  # the affine parameters still train either way
