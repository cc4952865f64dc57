"""`train.grad_checkpointing`: open_clip's activation checkpointing on the student only, with the
loss and every gradient of the run without it (within 1e-5), and a clear refusal for a backbone
without the capability."""

from __future__ import annotations

import pytest
import torch
from open_clip import transformer as open_clip_transformer

from tracer_cli import hookimpl
from tracer_cli.sdk import host as plugins_mod
from tracer_cli import recipe as recipe_mod
from tracer_cli.cli import app
from tracer_cli.engine.distributed import DistContext
from tracer_cli.engine.step import enable_grad_checkpointing
from tracer_cli.engine.precision import resolve_precision
from tracer_cli.engine.run import build_backbone, build_dataset, build_task
from tracer_cli.engine.loop import build_trainer
from tracer_cli.errors import UsageError
from tracer_cli.sdk.host import PluginHost
from tracer_plugins.backbones.openclip import make_backbone


def _one_step(tiny_recipe, *sets: str):
    """(record, gradients handed to the optimizer, trainer) of step 1 on the tiny ViT."""
    rec = recipe_mod.load(tiny_recipe, ["model.arch=tracer-tiny-vit", "train.grad_clip=0",
                                        *sets])
    torch.manual_seed(0)
    backbone = build_backbone(rec)
    bundle = build_dataset(rec.data.train, "data.train", "train", backbone.preprocess_train)
    notices: list[str] = []
    trainer = build_trainer(rec, DistContext(), backbone, build_task(rec), bundle,
                            resolve_precision("32-true", torch.device("cpu")), notices.append)
    grads: dict[str, torch.Tensor] = {}
    trainer.optimizer.register_step_pre_hook(lambda *_: grads.update(
        {n: p.grad.detach().clone() for n, p in backbone.model.named_parameters()
         if p.grad is not None}))
    batch = next(iter(torch.utils.data.DataLoader(bundle.dataset, batch_size=8)))
    record = trainer.step(1, {"image": batch["image"], "label": batch["label"]})
    return record, grads, trainer, notices


def test_checkpointing_gives_the_loss_and_gradients_of_the_plain_run(tiny_recipe, monkeypatch):
    calls = []
    real = open_clip_transformer.checkpoint
    monkeypatch.setattr(open_clip_transformer, "checkpoint",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    plain, plain_grads, _, _ = _one_step(tiny_recipe)
    assert not calls
    ckpt, ckpt_grads, trainer, notices = _one_step(tiny_recipe, "train.grad_checkpointing=true")
    # 4 image + 2 text blocks in the student's forward; none in the teacher's.
    assert len(calls) == 6 and not notices
    assert trainer.student.visual.transformer.grad_checkpointing
    assert not trainer.teacher.module.visual.transformer.grad_checkpointing
    assert ckpt["loss"] == pytest.approx(plain["loss"], abs=1e-5)
    assert ckpt["loss_sd"] == pytest.approx(plain["loss_sd"], abs=1e-5)
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 10
    for name, g in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], g, rtol=1e-5, atol=1e-5, msg=name)


def test_resnet_tower_is_reported_and_a_backbone_without_it_is_refused(tiny_recipe):
    _, _, trainer, notices = _one_step(tiny_recipe, "model.arch=tracer-tiny-rn",
                                       "train.grad_checkpointing=true")
    assert notices == ["train.grad_checkpointing: the image tower(s) of this backbone are not "
                       "checkpointed (open_clip checkpoints transformer blocks only)"]

    class NoCapability:
        pass

    with pytest.raises(UsageError, match="train.grad_checkpointing = true, but backbone "
                                         "'NoCapability' has no activation checkpointing"):
        enable_grad_checkpointing(NoCapability(), trainer.student, print)


class _WithoutCheckpointing:
    """The openclip backbone minus its activation-checkpointing capability."""

    def __init__(self, inner):
        self.model = inner.model
        self._inner = inner

    def __getattr__(self, name):
        if name == "set_grad_checkpointing":
            raise AttributeError(name)
        return getattr(self._inner, name)


class _BarePlugin:
    @hookimpl
    def tracer_register_backbones(self, registry):
        registry.add("bare", lambda options: _WithoutCheckpointing(make_backbone(options)))


def test_finetune_exits_2_when_the_backbone_cannot_checkpoint(runner, tiny_recipe, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(plugins_mod, "_HOST", PluginHost(plugins=(_BarePlugin(),)))
    result = runner.invoke(app, ["finetune", str(tiny_recipe), "--output-dir", str(tmp_path),
                                 "--set", "model.backbone=bare", "--set", "run.eval=false",
                                 "--set", "train.grad_checkpointing=true"])
    assert result.exit_code == 2
    assert "train.grad_checkpointing = true, but backbone '_WithoutCheckpointing'" in result.stderr
    assert not (tmp_path / "tiny").exists()  # refused before the run directory is written
