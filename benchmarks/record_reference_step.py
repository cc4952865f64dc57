"""Record whole training steps of the public TRACER reference implementation, for
``tests/engine/test_reference_step.py``.

The reference (``HesamAsad/TRACER``) is not part of tracer and is never copied into it: this script
imports its modules from the checkout named by ``--reference`` and drives them on a tiny
random-initialised CLIP of the reference's own OpenAI architecture (``clip/model.py``: ViT image
tower, QuickGELU) with fixed, seeded batches of random images and token ids, in float32 on the
CPU, and writes what happened at every step to ``tests/data/reference_step.json``:

    python benchmarks/record_reference_step.py --reference /path/to/TRACER \\
        [--out tests/data/reference_step.json]

Needs what the imported reference modules import (torch, numpy, open_clip, ftfy, regex, PIL,
torchvision, tqdm, and scipy for the Beta kernel); nothing of the reference's data or logging
stack (wandb, pandas, wilds) is imported.

What runs is the reference's own code for the model (``clip.model.CLIP`` inside
``src.models.modeling.CLIPEncoder``), the contrastive loss (``clip.loss.ClipLoss``), the
distillation views (``src.models.clip_knowledge_distillation.CLIPKnowledgeDistillation``), the
teachers (``src.models.beta_moving_average``: ``GeneralMovingAverage`` with
``create_beta_weight_function``, ``ExponentialMovingAverage`` with
``create_linear_warmup_ema_momentum``), the learning-rate and clipping schedules
(``src.models.utils.cosine_lr``, ``cosine_grad_norm_scheduler``) and ``torch.optim.AdamW`` built
as the reference builds it. The loop around them is ours (:func:`_train`); it follows the order of
operations of ``tracer_loss()`` in ``src/models/tracer_loss.py`` at the recorded commit:

- l.139-141: every trainable parameter in one list; l.168: one AdamW group, weight decay on all;
- l.170-179: ``cosine_lr`` over epochs x batches with ``warmup_length``; the clipping norm's
  cosine schedule from ``max_grad_norm`` to ``max_grad_norm * grad_norm_multiplier``;
- l.65-90: the teacher built from the student before training (a deep copy), WMA unless
  ``ema_teacher``;
- l.216-223: per step: set the learning rate and the clipping norm of this 0-based step, zero the
  gradients;
- l.248-257: student forward, ``ClipLoss`` on its features and its exponentiated logit scale;
- l.260-279: the cross-F-norm (ViT: ``visual.proj @ text_projection.T``) and orthogonality
  (``proj.T @ proj``) penalties added to the loss;
- l.285-345: from step 1 on (``step > 0``), the teacher's forward under ``no_grad``, its logits
  with its own scale, and either the plain soft-label distillation (no view weight set) or the
  KD module's ``total_kd_loss``, times ``distil_coef``, added to the loss;
- l.402-408: backward, ``clip_grad_norm_`` over the parameter list when the scheduled norm is
  positive, ``optimizer.step()``; no clamp of the logit scale anywhere;
- l.420-433: the teacher update after the optimizer step: WMA every step when ``ema_up_freq``
  is 0, else at 0-based steps divisible by it and the last one; EMA at steps divisible by its
  frequency, with the momentum of the 0-based step.

Recorded per step: the contrastive loss, each distillation view (unweighted) and L_SD, the
penalties (unweighted), the total loss, the learning rate the step used, the logit scale
(exponentiated) the step's loss used, the gradient norm before and after clipping, and the
teacher-student parameter distance ‖θ − φ‖ after the teacher update (float64). At the end,
fingerprints (float64) of student and teacher: per named tensor and for all parameters as one
vector, the sum, the absolute sum and the norm of the tensor and of its displacement from θ₀.
Distances and fingerprints leave out the attention key biases (:func:`comparable`).

The initial weights and the batches are made by :func:`initial_state` and :func:`batches` from
seeds stored in the output, so the test rebuilds exactly the same inputs without the reference.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "reference_step.json"
SCRIPT = "benchmarks/record_reference_step.py"

# open_clip's config format (the test builds tracer's student from it); the reference's CLIP
# takes the same numbers (heads = width // 64 there, hence width 64 and one head per tower).
MODEL_CONFIG = {
    "embed_dim": 32,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 64,
                   "patch_size": 8},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 64, "heads": 1, "layers": 2},
}
INIT_SEED, BATCH_SEED, BATCH_SIZE = 0, 1, 8

# Two runs: TRACER as the paper's ViT recipes set it (WMA every step, the four views,
# cross-F-norm, clipping at a constant norm) and CaRot (EMA every k steps, plain soft-label
# distillation, orthogonality, no clipping). Names follow tracer's recipe keys.
SCENARIOS: dict[str, dict[str, Any]] = {
    "tracer": {
        "steps": 24, "lr": 3e-4, "warmup_steps": 5, "weight_decay": 0.1, "grad_clip": 100.0,
        "teacher": {"kind": "wma", "beta": 0.5, "update_every": 1},
        "distill": {"lambda_sd": 0.9, "crd": 1.0, "fd": 2000.0, "icl": 1.0, "xkd": 1.0,
                    "lambda_fn": 0.05, "lambda_orth": 0.0},
    },
    "carot": {
        "steps": 24, "lr": 5e-4, "warmup_steps": 4, "weight_decay": 0.2, "grad_clip": 0.0,
        "teacher": {"kind": "ema", "update_every": 5, "momentum_start": 0.05,
                    "momentum_end": 0.9, "momentum_warmup": 0.2},
        "distill": {"lambda_sd": 1.5, "crd": 0.0, "fd": 0.0, "icl": 0.0, "xkd": 0.0,
                    "lambda_fn": 0.0, "lambda_orth": 0.2},
    },
}
# Named tensors fingerprinted besides the whole parameter vector.
FINGERPRINT_TENSORS = ("visual.conv1.weight", "visual.proj", "text_projection", "logit_scale",
                       "token_embedding.weight", "transformer.resblocks.1.mlp.c_fc.weight")


def _is_layer_norm(name: str) -> bool:
    return any(part.startswith("ln_") for part in name.split("."))


def initial_state(shapes: dict[str, torch.Size], seed: int = INIT_SEED
                  ) -> dict[str, torch.Tensor]:
    """Seeded float32 weights for the named shapes (names sorted, float64 draws): LayerNorm gains
    1 + 0.1·n and biases 0.1·n, other vectors 0.02·n, embeddings 0.02·n, matrices n/√fan-in
    (the projections are stored in × out), the logit scale ln(1/0.07) as in CLIP."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name]
        n = torch.randn(shape, generator=g, dtype=torch.float64)
        if name == "logit_scale":
            value = torch.full(shape, math.log(1 / 0.07), dtype=torch.float64)
        elif _is_layer_norm(name):
            value = 1 + 0.1 * n if name.endswith("weight") else 0.1 * n
        elif len(shape) < 2 or "embedding" in name:
            value = 0.02 * n
        else:
            fan_in = shape[0] if name.endswith("proj") or name.endswith("projection") \
                else math.prod(shape[1:])
            value = n / math.sqrt(fan_in)
        state[name] = value.float()
    return state


def batches(steps: int, seed: int = BATCH_SEED, size: int = BATCH_SIZE
            ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One (images, token ids) batch per step: N(0, 1) images, and captions of 1-6 random tokens
    between a start token (vocab − 2) and an end token (vocab − 1, the largest id, which both
    CLIPs pool at through ``argmax``), zero-padded."""
    g = torch.Generator().manual_seed(seed)
    vision, text = MODEL_CONFIG["vision_cfg"], MODEL_CONFIG["text_cfg"]
    ctx, vocab = text["context_length"], text["vocab_size"]
    out = []
    for _ in range(steps):
        images = torch.randn(size, 3, vision["image_size"], vision["image_size"],
                             generator=g, dtype=torch.float64).float()
        tokens = torch.zeros(size, ctx, dtype=torch.long)
        lengths = torch.randint(1, ctx - 1, (size,), generator=g)
        for row, length in enumerate(lengths.tolist()):
            tokens[row, 0] = vocab - 2
            tokens[row, 1:length + 1] = torch.randint(1, vocab - 2, (length,), generator=g)
            tokens[row, length + 1] = vocab - 1
        out.append((images, tokens))
    return out


def comparable(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The named parameters without the key third of each attention's ``in_proj_bias``.

    The key bias adds q·b_k to a whole row of attention logits, which softmax ignores: its
    gradient is zero in exact arithmetic and float32 rounding noise in practice, which AdamW's
    normalisation turns into steps of up to lr in a direction of its own in each implementation.
    It changes no output, so distances and fingerprints leave it out."""
    out = {}
    for name, t in named.items():
        if name.endswith("attn.in_proj_bias"):
            width = t.shape[0] // 3
            t = torch.cat([t[:width], t[2 * width:]])
        out[name] = t.detach()
    return out


def distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a − b‖ over the :func:`comparable` parameters, in float64."""
    a, b = comparable(a), comparable(b)
    return math.sqrt(sum(float((a[n].double() - b[n].double()).pow(2).sum()) for n in a))


def _summary(t: torch.Tensor) -> dict[str, float]:
    t = t.detach().double()
    return {"sum": float(t.sum()), "abs_sum": float(t.abs().sum()), "norm": float(t.norm())}


def fingerprint(named: dict[str, torch.Tensor], theta0: dict[str, torch.Tensor]
                ) -> dict[str, Any]:
    """Sums and norms (float64) of the listed tensors and of all :func:`comparable` parameters
    as one vector, of the weights (``weights``) and of their displacement from θ₀ (``moved``)."""
    named, theta0 = comparable(named), comparable(theta0)
    flat = torch.cat([named[n].double().reshape(-1) for n in sorted(named)])
    flat0 = torch.cat([theta0[n].double().reshape(-1) for n in sorted(named)])
    out: dict[str, Any] = {"all": {"weights": _summary(flat), "moved": _summary(flat - flat0)}}
    for name in FINGERPRINT_TENSORS:
        t = named[name].detach()
        out[name] = {"weights": _summary(t), "moved": _summary(t - theta0[name])}
    return out


# --------------------------------------------------------------------------- the reference run


@contextlib.contextmanager
def _cuda_is_cpu():
    """``Tensor.cuda()`` returns the tensor itself while active, when there is no GPU."""
    if torch.cuda.is_available():
        yield
        return
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.cuda = cuda


def _import_reference(path: Path) -> SimpleNamespace:
    """The reference modules this run drives, imported from the checkout at ``path``."""
    sys.path.insert(0, str(path))
    # src/models/utils.py moves two constants (CLIP's mean and std, for its adversarial helpers,
    # unused here) to CUDA at import time; on a CPU-only machine they stay on the CPU instead.
    with _cuda_is_cpu():
        from clip.loss import ClipLoss
        from clip.model import CLIP
        from src.models import beta_moving_average as bma
        from src.models.clip_knowledge_distillation import create_clip_kd_module
        from src.models.modeling import CLIPEncoder
        from src.models.utils import cosine_grad_norm_scheduler, cosine_lr

    return SimpleNamespace(CLIP=CLIP, CLIPEncoder=CLIPEncoder, ClipLoss=ClipLoss, bma=bma,
                           create_clip_kd_module=create_clip_kd_module, cosine_lr=cosine_lr,
                           cosine_grad_norm_scheduler=cosine_grad_norm_scheduler)


def _reference_model(ref: SimpleNamespace) -> nn.Module:
    """The reference's CLIPEncoder around its CLIP, with :func:`initial_state`'s weights.
    ``CLIPEncoder.__init__`` downloads pretrained weights, so the module is assembled directly."""
    v, t = MODEL_CONFIG["vision_cfg"], MODEL_CONFIG["text_cfg"]
    clip = ref.CLIP(MODEL_CONFIG["embed_dim"], v["image_size"], v["layers"], v["width"],
                    v["patch_size"], t["context_length"], t["vocab_size"], t["width"],
                    t["width"] // 64, t["layers"])
    shapes = {n: p.shape for n, p in clip.state_dict().items()}
    clip.load_state_dict(initial_state(shapes))
    encoder = ref.CLIPEncoder.__new__(ref.CLIPEncoder)
    nn.Module.__init__(encoder)
    encoder.model = clip
    # The reference loads OpenAI models in eval mode and its teacher deep-copies that.
    return encoder.eval()


def _reference_args(s: dict[str, Any]) -> SimpleNamespace:
    """The reference's argument names for scenario ``s`` (``src/args.py``)."""
    d, teacher = s["distill"], s["teacher"]
    ema = teacher["kind"] == "ema"
    return SimpleNamespace(
        lr=s["lr"], wd=s["weight_decay"], warmup_length=s["warmup_steps"], min_lr=0.0,
        max_grad_norm=s["grad_clip"], grad_norm_multiplier=1.0, distil_coef=d["lambda_sd"],
        cross_fnorm=d["lambda_fn"], l_orth_wv=d["lambda_orth"], distillation_temperature=1.0,
        alpha_crd=d["crd"], alpha_fd=d["fd"], alpha_icl=d["icl"], alpha_cross_kd=d["xkd"],
        alpha_mfd=0.0, alpha_gd=0.0, alpha_afd=0.0, alpha_temp_distil=0.0, ls=0.0,
        ema_teacher=ema, beta=teacher.get("beta"),
        ema_up_freq=teacher["update_every"] if ema or teacher["update_every"] > 1 else 0,
        m_sche_src=teacher.get("momentum_start"), m_sche_tar=teacher.get("momentum_end"),
        m_warm_up=teacher.get("momentum_warmup"))


def _teacher(ref: SimpleNamespace, args: SimpleNamespace, model: nn.Module, total: int):
    if args.ema_teacher:
        momentum = ref.bma.create_linear_warmup_ema_momentum(
            args.m_sche_src, args.m_sche_tar, args.m_warm_up, total)
        return ref.bma.ExponentialMovingAverage(model, momentum,
                                                update_frequency=args.ema_up_freq)
    return ref.bma.GeneralMovingAverage(model, ref.bma.create_beta_weight_function(args.beta,
                                                                                   total))


def _update_teacher(teacher, args: SimpleNamespace, step: int, total: int) -> None:
    """tracer_loss.py l.420-433."""
    if args.ema_teacher:
        if step % args.ema_up_freq == 0 or step == total:
            teacher.update(global_step=step)
    elif args.ema_up_freq <= 0 or step % args.ema_up_freq == 0 or step == total - 1:
        teacher.update()


def _penalties(clip: nn.Module, args: SimpleNamespace) -> dict[str, torch.Tensor]:
    """tracer_loss.py l.260-279 for a ViT, unweighted."""
    out = {}
    if args.cross_fnorm:
        out["cross_fnorm"] = torch.linalg.norm(clip.visual.proj @ clip.text_projection.T,
                                               ord="fro")
    if args.l_orth_wv:
        covv = clip.visual.proj.T @ clip.visual.proj
        out["orthogonality"] = ((covv - torch.eye(covv.shape[0])) ** 2).sum() ** 0.5
    return out


def _distillation(ref, args, kd_module, teacher, images, tokens, fi, ft, s, lpi, lpt
                  ) -> dict[str, torch.Tensor]:
    """tracer_loss.py l.287-392 (temperature 1): the unweighted views and ``sd`` = L_SD."""
    with torch.no_grad():
        gi, gt, st = teacher.moving_avg(images, tokens)
        lpi_t, lpt_t = st * gi @ gt.T, st * gt @ gi.T
    if kd_module is None:
        sd = -torch.sum(torch.softmax(lpi_t, dim=1) * torch.log_softmax(lpi, dim=1)
                        + torch.softmax(lpt_t, dim=1) * torch.log_softmax(lpt, dim=1),
                        dim=1).mean()
        return {"plain_sd": sd, "sd": sd}
    labels = torch.arange(fi.shape[0])
    parts = {"crd": kd_module.contrastive_relational_distillation(lpi, lpi.T, lpi_t, lpi_t.T),
             "fd": kd_module.feature_distillation(fi, ft, gi, gt),
             "icl": kd_module.interactive_contrastive_learning(fi, ft, gi, gt, s, labels),
             "xkd": kd_module.cross_knowledge_distillation(fi, ft, gi, gt, lpi_t, lpi_t.T, s)}
    parts = {k: v for k, v in parts.items()
             if getattr(args, {"xkd": "alpha_cross_kd"}.get(k, f"alpha_{k}")) > 0}
    # l.375: the reference adds the KD total only when it is positive (always, for these views).
    total = kd_module(fi, ft, gi, gt, s, st, labels, temperature=1.0)["total_kd_loss"]
    parts["sd"] = total if total > 0 else torch.zeros(())
    return parts


def _grad_norm(params: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in params
                         if p.grad is not None))


def _train(ref: SimpleNamespace, scenario: dict[str, Any]) -> dict[str, Any]:
    """One run of the scenario, step by step, in the reference's order of operations."""
    args, total = _reference_args(scenario), scenario["steps"]
    model = _reference_model(ref)
    theta0 = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    teacher = _teacher(ref, args, model, total)
    model.train()
    clip_loss_fn = ref.ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True,
                                rank=0, world_size=1, use_horovod=False, ls=args.ls)
    params = [p for p in model.parameters() if p.requires_grad]
    uses_views = any([args.alpha_crd, args.alpha_fd, args.alpha_icl, args.alpha_cross_kd])
    kd_module = ref.create_clip_kd_module(args, embed_dim=MODEL_CONFIG["embed_dim"]) \
        if uses_views else None
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.wd)
    scheduler = ref.cosine_lr(optimizer, args.lr, args.warmup_length, total, args.min_lr)
    grad_norm_at = ref.cosine_grad_norm_scheduler(
        args.max_grad_norm, args.max_grad_norm * args.grad_norm_multiplier, total)
    records = []
    for step, (images, tokens) in enumerate(batches(total)):
        scheduler(step)
        clip_norm = grad_norm_at(step)
        optimizer.zero_grad()
        fi, ft, s = model(images, tokens)
        loss_clip, lpi, lpt = clip_loss_fn(fi, ft, s)
        record = {"step": step + 1, "lr": optimizer.param_groups[0]["lr"],
                  "logit_scale": float(s.detach()), "loss_clip": float(loss_clip.detach())}
        loss = loss_clip
        for name, value in _penalties(model.model, args).items():
            weight = args.cross_fnorm if name == "cross_fnorm" else args.l_orth_wv
            loss = loss + weight * value
            record[f"reg_{name}"] = float(value.detach())
        if args.distil_coef and step > 0:
            parts = _distillation(ref, args, kd_module, teacher, images, tokens, fi, ft, s,
                                  lpi, lpt)
            loss = loss + args.distil_coef * parts["sd"]
            record.update({f"sd_{k}": float(v.detach()) for k, v in parts.items()})
            record["loss_sd"] = args.distil_coef * float(parts["sd"].detach())
        record["loss"] = float(loss.detach())
        loss.backward()
        record["grad_norm"] = _grad_norm(params)
        if clip_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        record["applied_grad_norm"] = _grad_norm(params)
        optimizer.step()
        _update_teacher(teacher, args, step, total)
        record["gap"] = distance(dict(model.model.named_parameters()),
                                 dict(teacher.moving_avg.model.named_parameters()))
        records.append(record)
    student = dict(model.model.named_parameters())
    phi = dict(teacher.moving_avg.model.named_parameters())
    return {"settings": scenario, "steps": records,
            "student": fingerprint(student, theta0), "teacher": fingerprint(phi, theta0),
            "theta0": fingerprint(theta0, theta0)["all"]["weights"]}


def _commit(path: Path) -> str:
    with contextlib.suppress(Exception):
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    return "unknown (not a git checkout)"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reference", type=Path, required=True,
                   help="a checkout of github.com/HesamAsad/TRACER")
    p.add_argument("--commit", default=None,
                   help="the reference commit, when --reference is an export without .git")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    torch.set_num_threads(1)  # one summation order, whatever the machine
    ref = _import_reference(a.reference.resolve())
    doc = {
        "source": {
            "repository": "https://github.com/HesamAsad/TRACER",
            "commit": a.commit or _commit(a.reference),
            "script": SCRIPT,
            "date": datetime.date.today().isoformat(),
            "torch": torch.__version__,
            "precision": "float32, CPU, 1 thread",
            "note": "numbers from the reference's own modules driven by the script; regenerate "
                    "with the command in the script's docstring",
        },
        "model_config": MODEL_CONFIG,
        "init_seed": INIT_SEED, "batch_seed": BATCH_SEED, "batch_size": BATCH_SIZE,
        "scenarios": {name: _train(ref, s) for name, s in SCENARIOS.items()},
    }
    tmp = a.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    tmp.replace(a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
