"""Reading a finished (or running) run directory: its recipe, checkpoint and models.

``eval``, ``export`` and ``distill-check`` all start here, so a run dir is validated in one place
and every command gives the same clear error for a missing or truncated checkpoint.
"""

from __future__ import annotations

import copy
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from tracer_cli import recipe as recipe_mod
from tracer_cli import rundir
from tracer_cli.rundir import checksums
from tracer_cli.engine import checkpoint
from tracer_cli.engine.run import pretrained_backbone
from tracer_cli.errors import UsageError
from tracer_cli.events import current_reporter
from tracer_cli.sdk.contracts import Backbone

WHICH = ("student", "teacher")
_DAMAGED_FIX = ("use another checkpoint of the run (--checkpoint checkpoints/step_N.pt), or "
                "continue the run with `tracer finetune RECIPE --resume auto`, which moves damaged "
                "checkpoints to corrupt/ and resumes from the newest intact one")


def interpolate(theta0: dict[str, torch.Tensor], theta1: dict[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT: (1 − α)·θ₀ + α·θ₁ for floating tensors; other tensors are taken from θ₁.

    α = 0 returns θ₀'s values exactly and α = 1 θ₁'s (no rounding through the formula).
    """
    if set(theta0) != set(theta1):
        missing = sorted(set(theta0) ^ set(theta1))[:3]
        raise UsageError(f"cannot interpolate weights of different architectures (keys differ: "
                         f"{', '.join(missing)})")
    out = {}
    for name, t1 in theta1.items():
        t0 = theta0[name]
        if not isinstance(t1, torch.Tensor):  # a module's extra state (a head's class names)
            out[name] = copy.deepcopy(t1)
        elif alpha == 0.0:
            out[name] = t0.clone()
        elif alpha == 1.0 or not t1.is_floating_point():
            out[name] = t1.clone()
        else:
            out[name] = torch.lerp(t0.to(t1.dtype), t1, alpha)
    return out


class RunDir:
    """A run directory written by ``tracer finetune``, read through :mod:`tracer_cli.rundir`."""

    def __init__(self, path: str | Path, checkpoint: str | Path | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise UsageError(f"run directory '{self.path}' does not exist")
        self.lock_path = rundir.recipe_lock_path(self.path)
        if not self.lock_path.is_file():
            raise UsageError(f"'{self.path}' is not a tracer run directory (no "
                             f"{rundir.RECIPE_LOCK})")
        # Another checkpoint of the run instead of last.pt (checkpoints/step_N.pt: relative to
        # the run works).
        self._checkpoint_path = (None if checkpoint is None else
                                 rundir.resolve_checkpoint(self.path, Path(checkpoint)))

    @cached_property
    def _lock_file(self) -> tuple[dict[str, Any], dict[str, Any]]:
        return rundir.read_recipe_lock(self.path)

    @property
    def tables(self) -> dict[str, Any]:
        """The resolved recipe's tables (the lock file without its ``[lock]`` table)."""
        return self._lock_file[0]

    @property
    def trained_with(self) -> dict[str, Any]:
        """The lock file's ``[lock]`` table: versions, git hash, device, precision, backbone."""
        return self._lock_file[1]

    @cached_property
    def recipe(self) -> recipe_mod.Recipe:
        return recipe_mod.from_dict(copy.deepcopy(self.tables), source=str(self.lock_path))

    @property
    def checkpoint_path(self) -> Path:
        return self._checkpoint_path or rundir.last_path(self.path)

    @cached_property
    def checkpoint(self) -> dict[str, Any]:
        if self._checkpoint_path is None and not self.checkpoint_path.is_file():
            raise UsageError(f"run directory '{self.path}' has no checkpoint ({rundir.LAST}); the "
                             "run may not have reached its first checkpoint")
        return read_checkpoint(self.checkpoint_path)

    def weights(self, which: str = "student") -> dict[str, torch.Tensor]:
        """The student's or the teacher's state dict from the last checkpoint."""
        return checkpoint_weights(self.checkpoint, which, f"run '{self.path}'")

    def backbone(self) -> Backbone:
        """The backbone as the recipe built it, holding the pretrained weights θ₀; checked
        against the network the lock file says the run was trained in."""
        backbone = pretrained_backbone(self.recipe)
        notice = rundir.check_built_as_locked(self.path, self.trained_with.get("backbone") or {},
                                              backbone.describe())
        if notice:
            current_reporter().notice(notice)
        return backbone

    def model(self, which: str = "student", wise_alpha: float | None = None
              ) -> tuple[Backbone, nn.Module]:
        """(backbone, module) with the run's weights, or their WiSE-FT mix with θ₀."""
        backbone = self.backbone()
        tuned = self.weights(which)
        if wise_alpha is not None:
            tuned = interpolate(backbone.model.state_dict(), tuned, wise_alpha)
        load_weights(backbone.model, tuned, self.checkpoint_path)
        return backbone, backbone.model

    def metrics(self) -> Iterator[dict[str, Any]]:
        """Records of ``metrics.jsonl`` (a line being written right now is skipped)."""
        return rundir.read_metrics(self.path)


def checkpoint_head(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor],
                                                    dict[str, torch.Tensor]] | None:
    """(trained head, head at θ₀) of a run that trained a task head (lp/ft/lpft, vqa), or None.

    The teacher has no head of its own; it is read with the student's."""
    head = state.get("head")
    if not isinstance(head, dict):
        return None
    init = state.get("head_init")
    return head, (init if isinstance(init, dict) else head)


def build_head(task: Any, state: dict[str, torch.Tensor], source: Path | str) -> nn.Module:
    """The task's head rebuilt from a checkpoint's head state."""
    load = getattr(task, "load_head", None)
    if load is None:
        raise UsageError(f"'{source}' holds a trained task head, but this task cannot load one "
                         "(it has no load_head)")
    return load(state)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A tracer checkpoint file (``last.pt``, ``checkpoints/step_N.pt``), checked against the
    checksums recorded for it and to be one."""
    verdict = checksums.verify(Path(path)) if Path(path).is_file() else checksums.Verdict(True)
    if not verdict.ok:
        raise UsageError(f"checkpoint '{path}' is damaged ({verdict.reason}); {_DAMAGED_FIX}")
    state = checkpoint.load(Path(path))
    if not isinstance(state, dict) or "state_dict" not in state:
        raise UsageError(f"'{path}' is not a tracer checkpoint (no 'state_dict' key)")
    return state


def checkpoint_weights(state: dict[str, Any], which: str, owner: str) -> dict[str, torch.Tensor]:
    """The student's (``state_dict``) or the teacher's weights of a loaded checkpoint."""
    if which not in WHICH:
        raise UsageError(f"--which '{which}': allowed: {', '.join(WHICH)}")
    if which == "student":
        return state["state_dict"]
    teacher = state.get("teacher") or {}
    if teacher.get("module") is None:
        kind = teacher.get("kind") or "none"
        raise UsageError(f"{owner} has no teacher weights (teacher.kind = '{kind}'); use "
                         "--which student")
    return teacher["module"]


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """Strict load with an error that says the checkpoint belongs to another architecture."""
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise UsageError(f"checkpoint '{source}' does not fit this model's architecture "
                         f"({first})") from None
