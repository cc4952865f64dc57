"""Mixed precision in the training step, on CPU: bf16 autocast for student *and* teacher with the
losses in float32, and the fp16 GradScaler path with an injected gradient overflow (the optimizer
step is skipped, the scale drops, nothing non-finite reaches the student, the teacher or a
checkpoint)."""

from __future__ import annotations

import math

import torch

from tracer_cli import recipe as recipe_mod
from tracer_cli.engine import step as step_mod
from tracer_cli.engine.distributed import DistContext
from tracer_cli.engine.precision import resolve_precision
from tracer_cli.engine.run import build_backbone, build_dataset, build_task
from tracer_cli.engine.loop import build_trainer


def _trainer(tiny_recipe, precision: str, *sets: str):
    rec = recipe_mod.load(tiny_recipe, ["train.lr=1e-3", "model.arch=tracer-tiny-vit", *sets])
    torch.manual_seed(0)
    backbone = build_backbone(rec)
    bundle = build_dataset(rec.data.train, "data.train", "train", backbone.preprocess_train)
    trainer = build_trainer(rec, DistContext(), backbone, build_task(rec), bundle,
                            resolve_precision(precision, torch.device("cpu")), lambda msg: None)
    batch = next(iter(torch.utils.data.DataLoader(bundle.dataset, batch_size=8)))
    return trainer, {"image": batch["image"], "label": batch["label"]}


def _all_finite(tree) -> bool:
    if isinstance(tree, torch.Tensor):
        return not tree.is_floating_point() or bool(torch.isfinite(tree).all())
    if isinstance(tree, dict):
        return all(_all_finite(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return all(_all_finite(v) for v in tree)
    if isinstance(tree, float):
        return math.isfinite(tree)
    return True


def test_bf16_runs_the_teacher_under_the_students_autocast_and_the_losses_in_fp32(
        tiny_recipe, monkeypatch):
    trainer, batch = _trainer(tiny_recipe, "bf16-mixed")
    teacher = trainer.teacher.module
    seen: dict[str, list] = {"student": [], "teacher": [], "losses": []}
    encode = type(trainer.backbone).encode_image

    def spy_encode(self, module, images):
        out = encode(self, module, images)
        who = "teacher" if module is teacher else "student"
        seen[who].append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"),
                          out.dtype))
        return out

    def spy_loss(fn):
        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            value = out[0] if isinstance(out, tuple) else out
            seen["losses"].append((fn.__name__, value.dtype))
            return out
        return wrapped

    monkeypatch.setattr(type(trainer.backbone), "encode_image", spy_encode)
    monkeypatch.setattr(step_mod, "clip_loss", spy_loss(step_mod.clip_loss))
    monkeypatch.setattr(step_mod, "distillation_loss", spy_loss(step_mod.distillation_loss))
    record = trainer.step(1, batch)  # step > 0: the teacher takes part
    assert seen["student"] == [(True, torch.bfloat16, torch.bfloat16)]
    assert seen["teacher"] == seen["student"]  # the same autocast, not fp32 and not another dtype
    assert seen["losses"] == [("clip_loss", torch.float32), ("distillation_loss", torch.float32)]
    assert record["loss_sd"] > 0 and math.isfinite(record["loss"])
    assert "grad_scale" not in record  # bf16 needs no scaler
    # The master weights stay float32 (a bf16 teacher would round small WMA updates away).
    assert all(p.dtype == torch.float32 for p in trainer.student.parameters())
    assert all(p.dtype == torch.float32 for p in teacher.parameters())


def test_fp16_overflow_skips_the_step_lowers_the_scale_and_keeps_everything_finite(tiny_recipe):
    trainer, batch = _trainer(tiny_recipe, "16-mixed")
    assert trainer.scaler.is_enabled()
    trainer.step(0, batch)  # one clean step: AdamW has state, the teacher is in play
    student = {n: p.detach().clone() for n, p in trainer.student.named_parameters()}
    teacher = {k: v.clone() for k, v in trainer.teacher.module.state_dict().items()}
    opt_state = [{k: v.clone() for k, v in s.items()} for s in trainer.optimizer.state.values()]
    scale, weight_sum = trainer.scaler.get_scale(), trainer.teacher.weight_sum
    victim = trainer.student.visual.proj
    handle = victim.register_hook(lambda g: torch.full_like(g, float("inf")))
    try:
        record = trainer.step(1, batch)
    finally:
        handle.remove()
    assert record["amp_skipped"] == 1.0 and math.isfinite(record["loss"])
    assert trainer.scaler.get_scale() == record["grad_scale"] == scale / 2
    for name, p in trainer.student.named_parameters():  # no optimizer step happened
        assert torch.equal(p, student[name]), name
    for s, before in zip(trainer.optimizer.state.values(), opt_state):
        assert all(torch.equal(s[k], v) for k, v in before.items())
    # The teacher follows the reference: its update for this step runs, with the unchanged θ.
    assert trainer.teacher.last_step == 2 and trainer.teacher.weight_sum > weight_sum
    assert any(not torch.equal(v, teacher[k]) for k, v in
               trainer.teacher.module.state_dict().items() if v.is_floating_point())
    state = trainer.state_dict()
    assert _all_finite(state)
    record = trainer.step(2, batch)  # the next clean step trains normally at the lower scale
    assert record["amp_skipped"] == 0.0 and record["grad_scale"] == scale / 2
    assert not torch.equal(victim, student["visual.proj"])
    assert _all_finite(trainer.state_dict())


def test_sixteen_mixed_is_accepted_on_cpu():
    precision = resolve_precision("16-mixed", torch.device("cpu"))
    assert precision.dtype == torch.float16 and precision.grad_scaler().is_enabled()
    assert not resolve_precision("bf16-mixed", torch.device("cpu")).grad_scaler().is_enabled()
    assert resolve_precision("auto", torch.device("cpu")).name == "32-true"
