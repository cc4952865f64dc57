"""Teachers: WMA against the reference implementation and the explicit weighted average; EMA,
static and no teacher; the closed-form kernel weights used by the diagnostics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from tracer_cli.teacher import kernels
from tracer_cli.engine.teachers import (
    EmaTeacher,
    NoTeacher,
    StaticTeacher,
    WmaTeacher,
    make_teacher,
)
from tracer_cli.errors import UsageError

# Teacher averages against explicit sums (stated float64 tolerances), resume bit for bit; CI
# reruns these under other CPU kernels (.ci/run).
pytestmark = pytest.mark.numerics

GOLDEN = Path(__file__).parents[1] / "data" / "golden_reference_values.json"


class Vector(nn.Module):
    """The golden trajectories' 4-parameter model."""

    def __init__(self, values):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(values, dtype=torch.float64))


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).double()


def _trajectory(model: nn.Module, steps: int):
    """Train ``model`` for ``steps`` SGD steps; yield (step, state snapshot) after each."""
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    gen = torch.Generator().manual_seed(1)
    model.train()
    for step in range(1, steps + 1):
        x = torch.randn(8, 3, generator=gen, dtype=torch.float64)
        loss = (model(x) ** 2).mean() + model[0].weight.sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        yield step, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_weighted_average(teacher, snapshots, weights):
    """Teacher floats equal Σ w θ / Σ w; integer buffers equal the latest student's."""
    total = sum(weights.values())
    latest = snapshots[max(weights)]
    for key, value in teacher.module.state_dict().items():
        if value.is_floating_point():
            expected = sum(w * snapshots[s][key] for s, w in weights.items()) / total
            torch.testing.assert_close(value, expected, atol=1e-12, rtol=0)
        else:
            assert torch.equal(value, latest[key]), key


@pytest.mark.parametrize("beta", ["0.5", "1.0", "0.2"])
def test_wma_matches_reference_implementation(beta):
    ref = json.loads(GOLDEN.read_text())[f"wma_beta_{beta}"]
    student = Vector(ref["students"][0])
    teacher = WmaTeacher(student, total_steps=ref["total_steps"], beta=float(beta))
    for u, expected_w in enumerate(ref["weights"]):
        assert teacher.weight(u) == pytest.approx(expected_w, abs=1e-12, rel=0)
    for u in range(1, ref["total_steps"] + 1):
        with torch.no_grad():
            student.w.copy_(torch.tensor(ref["students"][u], dtype=torch.float64))
        teacher.update(u, student)
        expected = torch.tensor(ref["teachers"][u], dtype=torch.float64)
        torch.testing.assert_close(teacher.module.w, expected, atol=1e-12, rtol=0)
    assert teacher.weight_sum == pytest.approx(sum(ref["weights"]), abs=1e-12)


@pytest.mark.parametrize("update_every", [1, 3, 4])
def test_wma_is_weighted_average_of_trajectory(update_every):
    student, total = _mlp(), 10
    snapshots = {0: {k: v.detach().clone() for k, v in student.state_dict().items()}}
    teacher = WmaTeacher(student, total_steps=total, beta=0.5, update_every=update_every)
    for step, snap in _trajectory(student, total):
        snapshots[step] = snap
        teacher.update(step, student)
    # The reference schedule: after step 1, every k steps from there, and after the last step
    # (k = 3: 1, 4, 7, 10; k = 4: 1, 5, 9 and 10). Positions follow the step, not the update count.
    updated = [0, *sorted({*range(1, total + 1, update_every), total})]
    weights = {s: kernels.beta_pdf((s + 0.5) / (total + 1), 0.5, 0.5) for s in updated}
    _assert_weighted_average(teacher, snapshots, weights)
    assert dict(kernels.wma_weights(total, 0.5, update_every)) == pytest.approx(weights)
    assert teacher.last_step == updated[-1]


def test_fused_update_equals_reference_recursion():
    student, total = _mlp(), 6
    teacher = WmaTeacher(student, total_steps=total, beta=0.5)
    phi = {k: v.detach().clone() for k, v in student.state_dict().items()}
    w_sum = kernels.wma_kernel_weight(0, total, 0.5)
    for step, snap in _trajectory(student, total):
        teacher.update(step, student)
        w = kernels.wma_kernel_weight(step, total, 0.5)
        r = w / w_sum
        phi = {k: (phi[k] + r * snap[k]) / (1 + r) if v.is_floating_point() else snap[k]
               for k, v in phi.items()}
        w_sum += w
    for key, value in teacher.module.state_dict().items():
        torch.testing.assert_close(value, phi[key], atol=1e-12, rtol=0)


def test_teacher_is_frozen_and_stays_in_eval():
    student = _mlp()
    for teacher in (WmaTeacher(student, 5), EmaTeacher(student, 5), StaticTeacher(student)):
        assert all(not p.requires_grad for p in teacher.module.parameters())
        student.train()
        teacher.module.train()
        assert not any(m.training for m in teacher.module.modules())
        assert all(p.requires_grad for p in student.parameters())
        assert student.training


def test_wma_resume_is_exact():
    total = 8
    straight_student = _mlp()
    straight = WmaTeacher(straight_student, total)
    for step, _ in _trajectory(straight_student, total):
        straight.update(step, straight_student)

    first_student = _mlp()
    first = WmaTeacher(first_student, total)
    trajectory = _trajectory(first_student, total)
    for step, _ in trajectory:
        first.update(step, first_student)
        if step == 4:
            break
    state = first.state_dict()
    resumed = WmaTeacher(first_student, total)  # fresh copy: its weights are overwritten
    resumed.load_state_dict(state)
    for step, _ in trajectory:
        resumed.update(step, first_student)
    assert resumed.weight_sum == pytest.approx(straight.weight_sum, abs=1e-15)
    for key, value in resumed.module.state_dict().items():
        torch.testing.assert_close(value, straight.module.state_dict()[key], atol=1e-12, rtol=0)
    with pytest.raises(ValueError):
        WmaTeacher(first_student, total, beta=1.0).load_state_dict(state)


def test_wma_repeated_step_and_horizon():
    student = Vector([1.0, 2.0, 3.0, 4.0])
    teacher = WmaTeacher(student, total_steps=3)
    teacher.update(1, student)
    w_sum = teacher.weight_sum
    teacher.update(1, student)  # a repeated call must not count the same weights twice
    assert teacher.weight_sum == w_sum
    with pytest.raises(ValueError):
        teacher.update(4, student)


def test_update_checks_the_student():
    student = _mlp()
    teacher = WmaTeacher(student, total_steps=3)
    wrapped = nn.Module()
    wrapped.module = student  # how DDP holds the model: accepted
    teacher.update(1, wrapped)
    with pytest.raises(ValueError, match="different student"):
        teacher.update(2, _mlp())


def test_ema_momentum_schedule():
    teacher = EmaTeacher(Vector([0.0] * 4), total_steps=100, momentum_start=0.05,
                         momentum_end=0.9, warmup=0.2, update_every=1)
    assert teacher.momentum(0) == pytest.approx(0.05)
    assert teacher.momentum(1) == pytest.approx(0.0925)
    assert teacher.momentum(10) == pytest.approx(0.475)
    assert teacher.momentum(20) == pytest.approx(0.9)
    assert teacher.momentum(90) == pytest.approx(0.9)


def test_ema_matches_explicit_recursion_and_closed_form():
    student, total, k = _mlp(), 10, 2
    teacher = EmaTeacher(student, total_steps=total, momentum_start=0.1, momentum_end=0.8,
                         warmup=0.5, update_every=k)
    phi = {key: v.detach().clone() for key, v in student.state_dict().items()}
    snapshots = {0: dict(phi)}
    for step, snap in _trajectory(student, total):
        snapshots[step] = snap
        teacher.update(step, student)
        if (step - 1) % k == 0:  # the reference: 0-based step index divisible by k
            m = teacher.momentum(step - 1)
            phi = {key: m * phi[key] + (1 - m) * snap[key] if v.is_floating_point()
                   else snap[key] for key, v in phi.items()}
    for key, value in teacher.module.state_dict().items():
        torch.testing.assert_close(value, phi[key], atol=1e-12, rtol=0)
    closed = dict(kernels.ema_weights(total, teacher.momentum, k))
    assert sorted(closed) == [0, 1, 3, 5, 7, 9]  # no fold of the last step for the EMA
    assert sum(closed.values()) == pytest.approx(1.0)
    _assert_weighted_average(teacher, snapshots, closed)


def test_static_and_no_teacher():
    student = _mlp()
    static = StaticTeacher(student)
    before = {k: v.clone() for k, v in static.module.state_dict().items()}
    for step, _ in _trajectory(student, 3):
        static.update(step, student)
    for key, value in static.module.state_dict().items():
        assert torch.equal(value, before[key])
    none = NoTeacher(student)
    assert none.module is None and not none.active and static.active
    none.update(1, student)
    none.load_state_dict(none.state_dict())
    assert none.describe()["kind"] == "none"


def test_make_teacher():
    student = _mlp()
    assert isinstance(make_teacher("wma", student, 10, beta=0.2), WmaTeacher)
    assert isinstance(make_teacher("ema", student, 10, update_every=5), EmaTeacher)
    assert isinstance(make_teacher("static", student, 10), StaticTeacher)
    assert isinstance(make_teacher("none", student, 10), NoTeacher)
    assert make_teacher("wma", student, 10, beta=0.2).describe()["beta"] == 0.2
    with pytest.raises(UsageError, match="unknown teacher kind"):
        make_teacher("swa", student, 10)
    with pytest.raises(UsageError, match="momentum_end"):
        make_teacher("wma", student, 10, momentum_end=0.9)


def test_kernel_diagnostics():
    # EMA with constant momentum: the lag tends to k·m/(1 − m), so the relative lag vanishes.
    k, m, total = 5, 0.9, 5000
    ema = kernels.ema_weights(total, lambda step: m, k)
    # Updates at 1, k + 1, ..., 4996: the last is k − 1 steps before the horizon.
    assert kernels.teacher_lag(ema, total) == pytest.approx(k * m / (1 - m) + k - 1, rel=1e-6)
    assert kernels.relative_lag(ema, total) < 0.01
    assert kernels.anchor_mass(ema) == pytest.approx(m ** (total // k))
    assert kernels.teacher_lag(ema, total - k + 1) == pytest.approx(k * m / (1 - m), rel=1e-6)
    # WMA with β = 0.5 keeps far more of θ₀, and its symmetric kernel centres the teacher at
    # mid-training: the relative lag at the horizon is exactly one half.
    wma = kernels.wma_weights(total, 0.5, 1)
    assert kernels.anchor_mass(wma) > 1e-3 > 1e30 * kernels.anchor_mass(ema)
    assert kernels.relative_lag(wma, total) == pytest.approx(0.5, abs=1e-9)
    partial = kernels.wma_weights(total, 0.5, 1, upto=100)
    assert partial[-1][0] == 100 and len(partial) == 101


def test_update_schedule_follows_the_reference():
    # The reference updates after 0-based step indices divisible by k, i.e. after steps 1, k + 1,
    # ...; its WMA also after the last step (index total − 1), its EMA never (its extra condition
    # compares the 0-based index with total_steps, which the loop never reaches).
    total, k = 10, 4
    wma = [s for s in range(1, total + 1) if kernels.is_update_step(s, total, k, fold_final=True)]
    ema = [s for s in range(1, total + 1) if kernels.is_update_step(s, total, k, fold_final=False)]
    assert wma == [1, 5, 9, 10] and ema == [1, 5, 9]
    assert kernels.update_steps(total, k, True) == wma
    assert kernels.update_steps(total, k, False) == ema
    assert kernels.update_steps(total, k, True, upto=8) == [1, 5]
    assert kernels.update_steps(total, 1, True) == list(range(1, total + 1))
    assert not kernels.is_update_step(0, total, 1, fold_final=True)


def test_ema_first_update_follows_the_first_step():
    """CaRot's EMA in the reference: the first update comes right after step 1 with the momentum
    of step index 0 (momentum_start), so θ₀ keeps only momentum_start of the teacher."""
    student = Vector([0.0, 0.0, 0.0, 0.0])
    teacher = EmaTeacher(student, total_steps=100, momentum_start=0.05, momentum_end=0.9,
                         warmup=0.2, update_every=500)
    with torch.no_grad():
        student.w.fill_(1.0)
    teacher.update(1, student)
    torch.testing.assert_close(teacher.module.w, torch.full((4,), 0.95, dtype=torch.float64),
                               atol=1e-12, rtol=0)
    for step in range(2, 101):  # k = 500 > 100 steps: no further update, no final fold
        with torch.no_grad():
            student.w.fill_(float(step))
        teacher.update(step, student)
    assert teacher.last_step == 1
    torch.testing.assert_close(teacher.module.w, torch.full((4,), 0.95, dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_wma_folds_in_the_final_step():
    student = Vector([0.0, 0.0, 0.0, 0.0])
    total = 7
    teacher = WmaTeacher(student, total_steps=total, beta=0.5, update_every=3)
    for step in range(1, total + 1):
        with torch.no_grad():
            student.w.fill_(float(step))
        teacher.update(step, student)
    assert teacher.last_step == total  # 7 is not 1 + 3n, yet the final student is in
    weights = {s: kernels.wma_kernel_weight(s, total, 0.5) for s in (0, 1, 4, 7)}
    expected = sum(w * s for s, w in weights.items()) / sum(weights.values())
    torch.testing.assert_close(teacher.module.w, torch.full((4,), expected, dtype=torch.float64),
                               atol=1e-12, rtol=0)
