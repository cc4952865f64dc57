"""The training step shared by every method: contrastive loss, teacher distillation, regularizers.

One :class:`Trainer` owns the student, the teacher, the optimizer, the schedule and the grad scaler.
:meth:`Trainer.step` does one optimizer step and returns the numbers worth logging; nothing here
knows about the CLI, the run directory or how progress is shown.

How the student is spread over processes (one process, DDP, FSDP) is a
:class:`~tracer_cli.engine.strategy.Strategy` the step calls for wrapping, gradient sync, gradient
finishing and state dicts; it has no branch of its own on the strategy. Under DDP the student's
forward goes through :class:`~tracer_cli.engine.strategy.FeatureForward` wrapped in
DistributedDataParallel; the features of all ranks are gathered so the contrastive loss, the
distillation views and the logged statistics are those of the global batch, and the gradient is
scaled so that the averaged gradient equals the single-process one (see
:func:`tracer_cli.engine.losses.gather_features`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from tracer_cli.sdk.contracts import Backbone, DatasetBundle, Pairing, Task
from tracer_cli.engine.accumulation import (
    bn_statistics_kept, micro_bounds, rows, slice_batch, substitute)
from tracer_cli.engine.distill import (
    distillation_loss,
    projection_penalty,
    teacher_student_kl,
    top1_agreement,
)
from tracer_cli.engine.distributed import Shard
from tracer_cli.engine.losses import (
    CLIP_PAIRING, clip_loss, gather_features, paired_logits, scale_grad)
from tracer_cli.engine.offload import FrozenCopy, squared_distance
from tracer_cli.engine.precision import Precision
from tracer_cli.engine.sharding import local
from tracer_cli.engine.strategy import (
    FeatureForward, Prepared, Strategy, plain_teacher_features)
from tracer_cli.engine.teachers import Teacher
from tracer_cli.errors import RunError, UsageError
from tracer_cli.recipe import DistillWeights, TrainConfig

MAX_LOGIT_SCALE = math.log(100.0)


class NonFiniteLoss(RunError):
    """The loss of a step was NaN or infinite; raised before any update, so the batch can be
    skipped (``train.on_nonfinite = "skip"``) or the run stopped ("stop")."""

    def __init__(self, step: int, value: float):
        self.step, self.value = step, value
        super().__init__(f"non-finite loss ({value}) at step {step}")


def set_train_mode(module: nn.Module, freeze_bn_stats: bool) -> None:
    """Train mode, but BatchNorm layers in eval when ``freeze_bn_stats`` is set.

    Running statistics re-estimated on a narrow finetuning set wreck features on other domains for
    a reason unrelated to forgetting; freezing them keeps that effect out of the comparison. The
    BatchNorm affine parameters still train.
    """
    module.train()
    if freeze_bn_stats:
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def check_grad_checkpointing(backbone: Backbone, wanted: bool) -> None:
    """Refuse ``train.grad_checkpointing = true`` for a backbone without the capability (called
    as soon as the backbone exists, before the run directory is written)."""
    if wanted and getattr(backbone, "set_grad_checkpointing", None) is None:
        raise UsageError(f"train.grad_checkpointing = true, but backbone "
                         f"'{type(backbone).__name__}' has no activation checkpointing "
                         "(set_grad_checkpointing); remove the key or use the 'openclip' backbone")


def enable_grad_checkpointing(backbone: Backbone, module: nn.Module, notice) -> list[str]:
    """Activation checkpointing of ``module`` (the student) through the backbone's own
    ``set_grad_checkpointing(module)`` capability; the towers it covers are returned, and a tower
    left out is reported through ``notice``. A backbone without the capability is a usage error
    (``train.grad_checkpointing``)."""
    check_grad_checkpointing(backbone, True)
    towers = list(backbone.set_grad_checkpointing(module))
    missing = [t for t in ("image", "text") if t not in towers]
    if missing:
        notice(f"train.grad_checkpointing: the {' and '.join(missing)} tower(s) of this backbone "
               "are not checkpointed (open_clip checkpoints transformer blocks only)")
    return towers


def check_tower_locks(backbone: Backbone, train: TrainConfig) -> None:
    """Refuse ``train.lock_image`` / ``train.lock_text`` for a backbone without the capability
    (called as soon as the backbone exists, before the run directory is written)."""
    for tower in ("image", "text"):
        if getattr(train, f"lock_{tower}") and \
                getattr(backbone, f"lock_{tower}_tower", None) is None:
            raise UsageError(f"train.lock_{tower} = true, but backbone "
                             f"'{type(backbone).__name__}' cannot lock its {tower} tower "
                             f"(lock_{tower}_tower); remove the key or use the 'openclip' "
                             "backbone")


def lock_towers(backbone: Backbone, module: nn.Module, train: TrainConfig) -> None:
    """Lock the towers of ``module`` (the student) that the recipe locks, through the backbone's
    capabilities; locked parameters then need no gradient, so no optimizer group holds them
    (:func:`param_groups`). Call before the optimizer and DDP are built."""
    check_tower_locks(backbone, train)
    if train.lock_image:
        backbone.lock_image_tower(module, train.lock_image_unlocked_groups)
    if train.lock_text:
        backbone.lock_text_tower(module, train.lock_text_unlocked_layers,
                                 train.lock_text_freeze_layer_norm)


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on gains, biases and the logit scale (as in CLIP / open_clip training)."""
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        exclude = p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or \
            "logit_scale" in name
        (no_decay if exclude else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def cosine_with_warmup(warmup: int, total: int):
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def constant_with_warmup(warmup: int, total: int):
    """LR multiplier: linear warm-up over ``warmup`` steps, then 1 until ``total``."""

    def factor(step: int) -> float:
        return (step + 1) / warmup if step < warmup else 1.0

    return factor


def linear_with_warmup(warmup: int, total: int):
    """LR multiplier: linear warm-up over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 1.0 - min(1.0, (step - warmup) / max(1, total - warmup))

    return factor


# train.schedule: the multiplier after the warm-up, each a function of (warmup, total).
SCHEDULES = {"cosine": cosine_with_warmup, "constant": constant_with_warmup,
             "linear": linear_with_warmup}


def phased_schedules(train: TrainConfig, head_ratio: float
                     ) -> tuple[Callable[[int], float], Callable[[int], float]]:
    """LR multipliers (backbone, head) for ``train.method``.

    Every method but lpft: warm-up + ``train.schedule`` (cosine by default) over the run for
    both. lpft: the backbone's multiplier is 0 during the ``lp`` probing steps (it gets no
    gradient then either), after which both follow warm-up + schedule over the remaining steps at
    ``train.lr``; the head first follows its own warm-up + schedule over the probing steps at
    ``head_lr``. ``head_ratio`` = lr / head_lr turns the head group's base rate into
    ``train.lr`` for the second phase.
    """
    lp, total, warmup = train.resolved_lp_steps(), train.steps, train.warmup_steps
    schedule = SCHEDULES[train.schedule]
    if train.method != "lpft":
        factor = schedule(warmup, total)
        return factor, factor
    probe = schedule(min(warmup, lp), lp)
    tune = schedule(min(warmup, total - lp), total - lp)

    def backbone(step: int) -> float:
        return 0.0 if step < lp else tune(step - lp)

    def head(step: int) -> float:
        return probe(step) if step < lp else head_ratio * tune(step - lp)

    return backbone, head


class DriftTracker:
    """Distances between the student θ, its starting point θ₀ and the teacher φ.

    ``drift`` = ‖θ − θ₀‖, ``gap`` = ‖θ − φ‖ and ``param_ratio`` = gap/drift over all floating
    parameters (buffers excluded), the empirical counterpart of the relative teacher lag ρ(t) that
    ``tracer distill-check`` reads: it shrinks towards 0 as the teacher collapses onto the student.
    θ₀ is a frozen copy kept off the compute device (:class:`~tracer_cli.engine.offload.
    FrozenCopy`: host memory under CUDA, an unlinked temporary file on CPU; a static teacher *is*
    θ₀ and is read instead), and :meth:`stats` streams it back in chunks, so tracking costs no
    device memory beyond a few 16 MiB chunks. Call it at log steps only. Build it before loading a
    checkpoint, so that θ₀ is the pretrained model.

    Under FSDP (``sharded``) θ₀ is a copy of this rank's shards, each rank sums its squared
    differences and :meth:`stats` all-reduces them: every rank must call it.
    """

    def __init__(self, student: nn.Module, teacher: Teacher, sharded: bool = False):
        self.student, self.teacher, self.sharded = student, teacher.module, sharded
        self.names = [n for n, p in student.named_parameters() if p.is_floating_point()]
        self.theta0 = None if teacher.kind == "static" else FrozenCopy(self._tensors(student))

    def _tensors(self, module: nn.Module) -> list[torch.Tensor]:
        # Looked up by name at each call: FSDP swaps parameter objects between passes.
        named = dict(module.named_parameters())
        return [local(named[n]).detach() for n in self.names]

    @torch.no_grad()
    def stats(self) -> dict[str, float]:
        """``drift`` and ``gap``, plus ``param_ratio`` once the student has moved (drift > 0)."""
        theta, phi = self._tensors(self.student), self._tensors(self.teacher)
        theta0 = phi if self.theta0 is None else self.theta0
        sums = torch.stack([squared_distance(theta, theta0), squared_distance(theta, phi)])
        if self.sharded:
            dist.all_reduce(sums)
        drift, gap = (float(x) for x in sums.sqrt())
        out = {"drift": drift, "gap": gap}
        if drift > 0:
            out["param_ratio"] = gap / drift
        return out


class _TeacherFeatures(NamedTuple):
    """The teacher's whole-batch image and text features and its logit scale (no gradient)."""

    gi: torch.Tensor
    gt: torch.Tensor
    st: torch.Tensor


@dataclass
class _Terms:
    """One step's loss terms: ``global_loss`` is computed on the global batch's features (equal
    on every rank), ``local_loss`` on this rank's rows (a task head's loss), ``penalty`` on θ."""

    global_loss: torch.Tensor | None
    local_loss: torch.Tensor | None
    penalty: torch.Tensor | None
    record: dict[str, float]
    logit_scale: float = 0.0

    @property
    def total(self) -> torch.Tensor:
        return sum(t for t in (self.global_loss, self.local_loss, self.penalty) if t is not None)

    def objective(self, world: int) -> torch.Tensor:
        """What to back-propagate: every rank's global loss is the loss of the whole batch,
        back-propagated through its local features only, so ×world makes DDP's average the full
        gradient. The penalty depends on θ alone, so it is already the same on every rank."""
        if world == 1:
            return self.total
        return sum(t for t in (None if self.global_loss is None else self.global_loss * world,
                               self.local_loss, self.penalty) if t is not None)


@dataclass(frozen=True)
class StepConfig:
    """What the step is told beside its models: the recipe's ``train`` and ``distill``
    sections, the precision, the seed of the caption RNG, whether BatchNorm keeps its running
    statistics, and whether parameter drift is tracked (``run.track_drift``)."""

    train: TrainConfig
    distill: DistillWeights
    precision: Precision
    seed: int = 0
    freeze_bn_stats: bool = False
    track_drift: bool = True


class Trainer:
    """Student + teacher + optimizer; :meth:`step` is one optimizer step of the TRACER objective.

    ``head``: a task head (lp/ft/lpft, or a task whose loss is its head's, such as vqa), trained
    with the task's head_loss instead of the contrastive loss. ``prepared``: the student's
    forward and the teacher as a :class:`~tracer_cli.engine.strategy.Strategy` set them up
    (``strategy``); without it, one process with ``teacher`` and a plain forward.
    """

    def __init__(self, backbone: Backbone, task: Task, bundle: DatasetBundle, teacher: Teacher,
                 config: StepConfig, *, head: nn.Module | None = None,
                 strategy: Strategy | None = None, prepared: Prepared | None = None,
                 notice: Callable[[str], None] = lambda msg: None):
        self.strategy = strategy or Strategy()
        if prepared is None:
            prepared = Prepared(FeatureForward(backbone, head), teacher,
                                plain_teacher_features(backbone, teacher))
        self.backbone, self.task, self.bundle, self.teacher = backbone, task, bundle, teacher
        self.student = backbone.model
        # head_init is θ₀'s head (WiSE-FT).
        self.head = head
        self.head_init = None if head is None else \
            {k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
             for k, v in self.strategy.module_state(head).items()}
        self.head_uses_text = bool(getattr(head, "uses_text", False))
        # The student's training forward (wrapped by the strategy) and the teacher's features.
        self.forward, self.teacher_features = prepared.forward, prepared.teacher_features
        train, precision = config.train, config.precision
        self.train_cfg, self.precision = train, precision
        # Steps during which the backbone is frozen and only the head learns (lp: all of them).
        self.probe_steps = train.resolved_lp_steps() if head is not None else 0
        self._frozen: bool | None = None
        self.device = precision.device
        self.freeze_bn_stats = config.freeze_bn_stats
        self.weights = config.distill
        if (self.weights.lambda_fn or self.weights.lambda_orth) and \
                backbone.projections(self.student) is None:
            notice("distill.lambda_fn / lambda_orth disabled: this backbone exposes no projection "
                   "matrices")
            self.weights = replace(self.weights, lambda_fn=0.0, lambda_orth=0.0)
        self.optimizer, self.scheduler = self._optimizer(train)
        self.scaler = precision.grad_scaler()
        self.text_rng = torch.Generator().manual_seed(config.seed)
        self.pairing = CLIP_PAIRING  # this step's: set by step() with its texts
        self.drift = DriftTracker(self.student, teacher, sharded=self.strategy.sharded) \
            if teacher.active and config.track_drift else None
        set_train_mode(self.student, config.freeze_bn_stats)

    def _optimizer(self, train: TrainConfig):
        """AdamW over the backbone (unless it never trains: lp) and the head (at head_lr), with
        the method's schedule per group (see :func:`phased_schedules`).

        The fused implementation: one kernel per step for all tensors, on CPU as on CUDA (6x
        faster than the per-tensor loop torch picks by default on CPU, where it was a fifth of a
        tiny-CLIP step), and it takes the GradScaler's scale and inf flag itself. It accepts
        FSDP2's DTensor shards."""
        groups, lambdas = [], []
        head_lr = train.resolved_head_lr()
        backbone_factor, head_factor = phased_schedules(train, train.lr / head_lr)
        if self.probe_steps < train.steps:
            for group in param_groups(self.student, train.weight_decay):
                groups.append({**group, "lr": train.lr})
                lambdas.append(backbone_factor)
        if self.head is not None:
            for group in param_groups(self.head, train.weight_decay):
                groups.append({**group, "lr": head_lr})
                lambdas.append(head_factor)
        optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2),
                                      eps=train.eps, fused=True)
        return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)

    def frozen(self, step: int) -> bool:
        """Whether the backbone is frozen at ``step`` (linear probing)."""
        return step < self.probe_steps

    def _set_modes(self, frozen: bool) -> None:
        """A frozen backbone runs in eval mode (its features are fixed, BatchNorm included);
        otherwise train mode as configured."""
        if frozen == self._frozen:
            return
        if frozen:
            self.student.eval()
        else:
            set_train_mode(self.student, self.freeze_bn_stats)
        self._frozen = frozen

    def drift_stats(self) -> dict[str, float]:
        """Parameter distances to θ₀ and to the teacher (see :class:`DriftTracker`), or {}."""
        return {} if self.drift is None else self.drift.stats()

    @property
    def _wants_projections(self) -> bool:
        return bool(self.weights.lambda_fn or self.weights.lambda_orth)

    def _regularizers(self, projections) -> tuple[torch.Tensor | None, dict[str, float]]:
        """The projection penalty from the (V, T) the student's forward returned."""
        if not self._wants_projections or projections is None:
            return None, {}
        penalty, parts = projection_penalty(*projections, self.weights)
        return penalty, {f"reg_{k}": float(x) for k, x in parts.items()}

    def _teacher_features(self, step: int, images: torch.Tensor, tokens: torch.Tensor | None,
                          shard: Shard, bounds: list[tuple[int, int]]) -> _TeacherFeatures | None:
        """The teacher's (gathered) features of the whole batch, without gradient, under the
        student's autocast, one micro-batch at a time; None at step 0 (φ = θ) or without one."""
        if not self.teacher.active or step == 0 or tokens is None:
            return None
        parts = []
        with torch.no_grad(), self.precision.autocast():
            for a, b in bounds:
                # One micro-batch encodes every text: with candidate texts (a Pairing) the batch
                # has T texts for its B images.
                text = tokens if len(bounds) == 1 else tokens[a:b]
                parts.append(self.teacher_features(images[a:b], text))
        gi = torch.cat([p[0] for p in parts]).float()
        gt = torch.cat([p[1] for p in parts]).float()
        if shard.world_size > 1:
            gi, gt = gather_features(gi, gt, shard.sizes)
        return _TeacherFeatures(gi, gt, parts[0][2].float())

    def _teacher_terms(self, fi, ft, s, teacher: _TeacherFeatures | None, log: bool
                       ) -> tuple[torch.Tensor | None, dict[str, float]]:
        """Distillation loss and (when ``log``) the teacher-student statistics."""
        if teacher is None:
            return None, {}
        gi, gt, st = teacher
        pairing, both = self.pairing, self.pairing.symmetric
        stats: dict[str, float] = {}
        if log:
            with torch.no_grad():
                S = paired_logits(fi.detach(), ft.detach(), s.detach(), pairing)
                T = paired_logits(gi, gt, st, pairing)
                kl_i2t, kl_t2i = teacher_student_kl(S, T, both)
                stats = {"kl_i2t": float(kl_i2t), "kl_t2i": float(kl_t2i),
                         "agreement": float(top1_agreement(S, T, both))}
        if self.weights.lambda_sd == 0:
            return None, stats
        loss, parts = distillation_loss(fi, ft, gi, gt, s, st, self.weights, pairing)
        if log:
            stats.update({f"sd_{k}": float(v) for k, v in parts.items()})
        return loss, stats

    def _objective(self, fi, ft, s, teacher: _TeacherFeatures | None,
                   local_loss: torch.Tensor | None, projections=None, log: bool = True
                   ) -> _Terms:
        """The loss terms on whole-batch features: global ones (contrastive, distillation), this
        rank's head loss, and the projection penalty (which depends on θ alone)."""
        record: dict[str, float] = {}
        global_loss = None
        if self.head is None:
            global_loss = clip_loss(fi, ft, s, self.pairing)
            if log:
                record["loss_clip"] = float(global_loss.detach())
        elif log:
            record["loss_head"] = float(local_loss.detach())
        if ft is not None:
            sd, stats = self._teacher_terms(fi, ft, s, teacher, log)
            record.update(stats)
            if sd is not None:
                global_loss = sd if global_loss is None else global_loss + sd
                if log:
                    record["loss_sd"] = float(sd.detach())
        reg, reg_parts = self._regularizers(projections)
        record.update(reg_parts if log else {})
        return _Terms(global_loss, local_loss, reg, record)

    def _train_texts(self, batch: dict[str, Any], shard: Shard) -> list[str]:
        """This rank's captions, drawn for the whole global batch as one process would draw them
        (the text RNG advances identically on every rank)."""
        if shard.meta is None:
            return self.task.train_texts(batch, self.bundle, self.text_rng)
        texts = self.task.train_texts(shard.meta, self.bundle, self.text_rng)
        return list(texts[shard.offset:shard.offset + shard.size])

    def _paired_texts(self, batch: dict[str, Any], shard: Shard) -> tuple[list[str], Pairing]:
        """The step's texts and how they pair with the images: the task's candidate texts
        (``train_pairs``) in a contrastive run of a task that has them (one process, see
        :func:`tracer_cli.engine.loop.check_pairing`), else one caption per image."""
        pairs = getattr(self.task, "train_pairs", None)
        if self.head is None and pairs is not None:
            texts, pairing = pairs(batch, self.bundle, self.text_rng)
            return list(texts), pairing.to(self.device)
        return self._train_texts(batch, shard), CLIP_PAIRING

    def step(self, step: int, batch: dict[str, Any], shard: Shard | None = None
             ) -> dict[str, float]:
        """One optimizer step (``step`` counts completed steps before this one).

        ``shard`` places ``batch`` in the global batch under DDP. Returns the numbers to log. A
        non-finite loss raises :class:`NonFiniteLoss` before anything is updated (no backward
        pass, no optimizer, schedule or teacher step), so the caller may skip the batch. With
        ``train.accum_steps`` > 1 the batch is processed in micro-batches with the gradient of
        the whole batch (:mod:`tracer_cli.engine.accumulation`).
        """
        shard = shard or Shard((len(batch["image"]),))
        frozen = self.frozen(step)
        self._set_modes(frozen)
        images = batch["image"].to(self.device, non_blocking=True)
        if self.train_cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        # Text is encoded only when something uses it: the contrastive loss, a head that reads
        # the text (vqa: the question), or the teacher's views. Probing and plain cross-entropy
        # finetuning leave the text tower alone.
        tokens, self.pairing = None, CLIP_PAIRING
        if self.head is None or self.head_uses_text or self.teacher.active:
            texts, self.pairing = self._paired_texts(batch, shard)
            tokens = self.backbone.tokenize(texts).to(self.device, non_blocking=True)
        # Every rank splits its slice into the same number of micro-batches (collectives match).
        bounds = micro_bounds(len(images), min(self.train_cfg.accum_steps, min(shard.sizes)))
        teacher = self._teacher_features(step, images, tokens, shard, bounds)
        if len(bounds) == 1:
            terms = self._whole_batch(step, batch, images, tokens, shard, frozen, teacher)
        else:
            terms = self._accumulated(step, batch, images, tokens, shard, frozen, teacher,
                                      bounds)
        # The rates this step trains with; _apply advances the schedule to the next step's.
        lr, lr_head = (self.optimizer.param_groups[i]["lr"] for i in (0, -1))
        skipped = self._apply(frozen)
        # After a step the fp16 GradScaler skipped (inf/NaN gradient), the teacher is updated all
        # the same, with the unchanged θ: the reference implementation does so, and it keeps the
        # teacher's kernel position tied to the step count (docs/method.md, "Mixed precision").
        self.teacher.update(step + 1, self.student)
        record = terms.record
        record.update(loss=float(terms.total.detach()), logit_scale=terms.logit_scale, lr=lr)
        if self.head is not None:
            record["lr_head"] = lr_head
        if self.scaler.is_enabled():
            record.update(grad_scale=float(self.scaler.get_scale()), amp_skipped=float(skipped))
        return record

    def _student(self, images, tokens, frozen: bool, grad_share: float,
                 projections: bool = False):
        """The student's features in float32; the logit scale's gradient scaled by
        ``grad_share`` (1/W under DDP, 1/(W·N) with N micro-batches: every rank and every
        micro-batch reaches it directly, see :func:`tracer_cli.engine.losses.gather_features`)."""
        with self.precision.autocast():
            fi, ft, s, out, proj = self.forward(images, tokens, frozen, projections)
        fi, s = fi.float(), scale_grad(s.float(), grad_share)
        return fi, (ft.float() if ft is not None else None), s, out, proj

    def _whole_batch(self, step, batch, images, tokens, shard: Shard, frozen: bool,
                     teacher: _TeacherFeatures | None) -> _Terms:
        world = shard.world_size
        fi, ft, s, out, proj = self._student(images, tokens, frozen, 1.0 / world,
                                             self._wants_projections)
        if world > 1 and ft is not None:
            fi, ft = gather_features(fi, ft, shard.sizes)
        local = self.task.head_loss(out, batch) if self.head is not None else None
        terms = self._objective(fi, ft, s, teacher, local, proj)
        terms.logit_scale = float(s.detach())
        self._check_finite(step, terms.total)
        self._backward(terms.objective(world))
        return terms

    def _accumulated(self, step, batch, images, tokens, shard: Shard, frozen: bool,
                     teacher: _TeacherFeatures | None, bounds: list[tuple[int, int]]) -> _Terms:
        """Pass 1: every micro-batch's features without a graph, the whole-batch loss for the
        record and the finiteness check. Pass 2: each micro-batch with its graph, substituted into
        the cached features, the whole-batch loss back-propagated (DDP syncs on the last)."""
        world, n, size = shard.world_size, len(bounds), len(images)
        with torch.no_grad(), bn_statistics_kept(self.student):
            parts = [self._student(images[a:b], rows(tokens, a, b), frozen, 1.0,
                                   j == 0 and self._wants_projections)
                     for j, (a, b) in enumerate(bounds)]
            fi = torch.cat([p[0] for p in parts])
            ft = torch.cat([p[1] for p in parts]) if tokens is not None else None
            if world > 1 and ft is not None:
                fi, ft = gather_features(fi, ft, shard.sizes)
            local = None
            if self.head is not None:
                local = sum(self.task.head_loss(p[3], slice_batch(batch, a, b)) * ((b - a) / size)
                            for p, (a, b) in zip(parts, bounds))
            terms = self._objective(fi, ft, parts[0][2], teacher, local, parts[0][4])
        terms.logit_scale = float(parts[0][2])
        self._check_finite(step, terms.total)
        offset = shard.offset if world > 1 and ft is not None else 0
        for j, (a, b) in enumerate(bounds):
            with self.strategy.gradient_sync(self.forward, j == n - 1):
                # The penalty depends on θ alone: added once, with the first micro-batch.
                fi_j, ft_j, s, out, proj = self._student(images[a:b], rows(tokens, a, b), frozen,
                                                         1.0 / (world * n),
                                                         j == 0 and self._wants_projections)
                local = None if self.head is None else \
                    self.task.head_loss(out, slice_batch(batch, a, b)) * ((b - a) / size)
                live = self._objective(substitute(fi, offset + a, fi_j),
                                       None if ft is None else substitute(ft, offset + a, ft_j),
                                       s, teacher, local, proj, log=False)
                self._backward(live.objective(world))
        return terms

    def _check_finite(self, step: int, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss):
            self.strategy.abandon_step(self.forward)
            raise NonFiniteLoss(step + 1, float(loss.detach()))

    def _trainable(self, frozen: bool) -> list[torch.Tensor]:
        params = [] if frozen else list(self.student.parameters())
        return params + (list(self.head.parameters()) if self.head is not None else [])

    def _backward(self, objective: torch.Tensor) -> None:
        self.strategy.backward(objective, self.scaler)

    def _apply(self, frozen: bool = False) -> bool:
        """Clip, optimizer and schedule step on the accumulated gradient; True when the fp16
        GradScaler skipped the optimizer step because a gradient overflowed (it then lowers its
        scale)."""
        self.strategy.finish_gradients(self._trainable(frozen), self.optimizer, self.scaler,
                                       self.train_cfg.grad_clip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 1.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        skipped = self.scaler.is_enabled() and self.scaler.get_scale() < scale
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        logit_scale = getattr(self.student, "logit_scale", None)
        if isinstance(logit_scale, torch.Tensor):
            with torch.no_grad():
                logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        return skipped

    def state_dict(self) -> dict[str, Any]:
        """Everything an exact resume needs. Under FSDP a collective: every rank calls it, rank 0
        gets the consolidated tensors (the same layout as a single process's)."""
        strategy = self.strategy
        state = {"state_dict": strategy.module_state(self.student),
                 "teacher": strategy.teacher_state(self.teacher),
                 "optimizer": strategy.optimizer_state(self.forward, self.optimizer),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "text_rng": self.text_rng.get_state()}
        if self.head is not None:
            state["head"] = strategy.module_state(self.head)
            state["head_init"] = self.head_init
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        strategy = self.strategy
        strategy.load_module(self.student, state["state_dict"])
        if self.head is not None:
            strategy.load_module(self.head, state["head"])
        strategy.load_teacher(self.teacher, state["teacher"])
        strategy.load_optimizer(self.forward, self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.text_rng.set_state(state["text_rng"])
