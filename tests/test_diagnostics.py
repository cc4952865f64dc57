"""Teacher-collapse diagnostics: the kernel curves against closed forms and the list definitions,
the empirical series and their verdict, the parameter-distance tracker, JSON and plot."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from torch import nn

from tracer_cli.commands import teacher_diagnostics as diagnostics
from tracer_cli import recipe as recipe_mod
from tracer_cli.teacher import kernels
from tracer_cli.engine.step import DriftTracker
from tracer_cli.engine.teachers import EmaTeacher, StaticTeacher, WmaTeacher
from tracer_cli.errors import UsageError


def _recipe(**teacher) -> recipe_mod.Recipe:
    steps = teacher.pop("steps", 300)
    return recipe_mod.from_dict({"data": {"train": "synth-photo-narrow"},
                                 "train": {"steps": steps}, "teacher": teacher})


# --------------------------------------------------------------------------- closed forms


@pytest.mark.parametrize("m, k", [(0.9, 1), (0.9, 5), (0.99, 2), (0.5, 500)])
def test_ema_lag_tends_to_k_m_over_1_minus_m(m, k):
    total = 200_000 if m == 0.5 else 20_000  # far past convergence
    curve = kernels.ema_curve(total, lambda steps: m, k)
    last = int(curve.updates[-1])  # updates at 1, k + 1, ...: right after the last one
    assert last == total - k + 1
    assert curve.lag[last] == pytest.approx(k * m / (1 - m), rel=1e-9)
    assert curve.relative_lag[last] == pytest.approx(k * m / (1 - m) / last, rel=1e-9)
    assert curve.log_anchor_mass[-1] == pytest.approx((total // k) * math.log(m), rel=1e-12)
    # The trailing half-life of m^(t/k) is k·ln 2/ln(1/m), rounded down to whole updates, plus
    # the steps after the last update.
    assert curve.anchor_half_life() == (k * math.floor(math.log(2) / math.log(1 / m))
                                        + total - last)


def test_ema_with_momentum_warmup_ends_at_the_final_momentum_lag():
    total, k = 100_000, 500  # 160 updates at the final momentum after the ramp
    curve = kernels.spec_curve(diagnostics.TeacherSpec("ema", k, momentum_start=0.05,
                                                        momentum_end=0.9, momentum_warmup=0.2),
                               total)
    assert curve.lag[int(curve.updates[-1])] == pytest.approx(k * 0.9 / 0.1, rel=1e-6)
    assert len(curve.updates) == total // k


@pytest.mark.parametrize("total, k", [(300, 1), (1000, 1), (25_000, 1), (1000, 10), (5000, 500)])
def test_wma_half_beta_ends_at_relative_lag_one_half(total, k):
    curve = kernels.wma_curve(total, 0.5, k)
    assert curve.updates[0] == 1 and curve.updates[-1] == total  # first and last step folded in
    if k == 1:
        assert curve.relative_lag[-1] == pytest.approx(0.5, rel=0.01)
    else:
        # The update right after step 1 is a second heavy weight at the kernel's start (θ₀ is
        # the first), so the teacher leans a little towards θ₀: 0.53 (k = 10), 0.60 (k = 500).
        assert 0.5 < curve.relative_lag[-1] < 0.65
    assert np.nanmin(curve.relative_lag) > 0.45  # bounded away from zero over the whole run


@pytest.mark.parametrize("total", [10, 300, 25_000])
def test_uniform_wma_is_centred_with_anchor_one_over_n(total):
    curve = kernels.wma_curve(total, 1.0, 1)
    np.testing.assert_allclose(curve.relative_lag[1:], 0.5, rtol=1e-9)
    np.testing.assert_allclose(curve.anchor_mass, 1 / (np.arange(total + 1) + 1), rtol=1e-9)
    assert curve.anchor_half_life() == pytest.approx(total / 2, abs=1)


def test_static_teacher_holds_everything_back():
    curve = kernels.static_curve(500)
    np.testing.assert_array_equal(curve.relative_lag[1:], 1.0)
    np.testing.assert_array_equal(curve.anchor_mass, 1.0)
    assert math.isnan(curve.relative_lag[0]) and curve.anchor_half_life() is None


@pytest.mark.parametrize("k", [1, 3, 7])
def test_curves_match_the_weight_list_definitions(k):
    total = 40
    momentum = lambda s: kernels.linear_warmup_momentum(s, total, 0.05, 0.9, 0.3)  # noqa: E731
    curves = {
        "wma": (kernels.wma_curve(total, 0.5, k), lambda t: kernels.wma_weights(total, 0.5, k, t)),
        "wma0.2": (kernels.wma_curve(total, 0.2, k),
                   lambda t: kernels.wma_weights(total, 0.2, k, t)),
        "ema": (kernels.ema_curve(total, lambda s: kernels.linear_warmup_momenta(
            s, total, 0.05, 0.9, 0.3), k), lambda t: kernels.ema_weights(total, momentum, k, t)),
    }
    for name, (curve, weights_at) in curves.items():
        for t in range(1, total + 1):
            w = weights_at(t)
            assert curve.lag[t] == pytest.approx(kernels.teacher_lag(w, t), abs=1e-9), (name, t)
            assert curve.relative_lag[t] == pytest.approx(kernels.relative_lag(w, t), abs=1e-9)
            assert curve.anchor_mass[t] == pytest.approx(kernels.anchor_mass(w), abs=1e-12)


def test_curves_match_the_running_teachers():
    """The WMA/EMA engine teachers' own bookkeeping agrees with the curves' anchor mass."""
    total = 30
    student = nn.Linear(2, 2)
    wma = WmaTeacher(student, total, beta=0.5, update_every=2)
    for step in range(1, total + 1):
        wma.update(step, student)
    curve = kernels.wma_curve(total, 0.5, 2)
    assert wma.describe()["anchor_mass"] == pytest.approx(curve.anchor_mass[-1], rel=1e-12)
    ema = EmaTeacher(student, total, 0.05, 0.9, 0.2, update_every=3)
    anchor = np.prod([ema.momentum(s - 1) for s in range(1, total + 1, 3)])
    assert kernels.ema_curve(total, lambda s: kernels.linear_warmup_momenta(
        s, total, 0.05, 0.9, 0.2), 3).anchor_mass[-1] == pytest.approx(anchor, rel=1e-12)


def test_affine_scan_equals_the_recursion():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(0, 1, 1000), rng.uniform(0, 10, 1000)
    x, expected = 0.0, []
    for an, bn in zip(a, b):
        x = an * x + bn
        expected.append(x)
    np.testing.assert_allclose(kernels._affine_scan(a, b), expected, rtol=1e-12)


def test_momenta_vector_form_matches_scalar_form():
    steps = np.arange(0, 101)
    vector = kernels.linear_warmup_momenta(steps, 100, 0.05, 0.9, 0.2)
    assert vector.tolist() == pytest.approx(
        [kernels.linear_warmup_momentum(s, 100, 0.05, 0.9, 0.2) for s in steps])
    assert kernels.linear_warmup_momenta(steps, 100, 0.05, 0.9, 0.0).tolist() == [0.9] * 101


def test_long_horizon_is_instant():
    start = time.perf_counter()
    result = diagnostics.check(_recipe(kind="ema", steps=25_000, update_every=1))
    result.to_dict()
    assert time.perf_counter() - start < 1.0
    assert result.teacher.curve.anchor_mass[-1] == 0.0  # underflows, but its log does not
    assert result.teacher.log10_anchor_mass_final < -2000
    assert result.teacher.curve.anchor_half_life() == 6


# --------------------------------------------------------------------------- analytic verdict


def test_ema_point_nine_every_step_collapses_and_wma_persists():
    ema = diagnostics.check(_recipe(kind="ema", momentum_start=0.9, update_every=1))
    assert ema.collapsed and ema.verdict == "collapsed"
    assert ema.teacher.relative_lag_final == pytest.approx(9 / 300, rel=1e-6)
    wma = diagnostics.check(_recipe(kind="wma"))
    assert not wma.collapsed and wma.teacher.relative_lag_final == pytest.approx(0.5)
    assert "ρ(300) = 0.5 ≥ 0.05" in wma.reasons()[0] and wma.reasons(failing_only=True) == []
    assert diagnostics.check(_recipe(kind="ema", momentum_start=0.9, update_every=1),
                             threshold=0.01).verdict == "persistent"


def test_alternatives_share_the_recipe_update_interval():
    labels = [a.spec.label for a in diagnostics.check(_recipe(kind="wma", steps=1000)).alternatives]
    assert labels == ["ema m=0.05→0.9 over 20%, k=1", "ema m=0.05→0.9 over 20%, k=500",
                      "wma β=1, k=1", "static (θ₀)"]
    ema = diagnostics.check(_recipe(kind="ema", steps=300))  # k = 500 > T: one update, after step 1
    assert ema.teacher.spec.update_every == 500 and ema.teacher.curve.updates.tolist() == [1]
    assert any("updates only after step 1" in n for n in ema.notes)
    assert [a.spec.label for a in ema.alternatives] == ["wma β=0.5, k=500", "wma β=1, k=500",
                                                        "static (θ₀)"]


def test_bad_input_is_a_usage_error():
    with pytest.raises(UsageError, match="no teacher to check"):
        diagnostics.check(_recipe(kind="none"))
    for threshold in (0.0, 1.0, -1.0):
        with pytest.raises(UsageError, match="--threshold"):
            diagnostics.check(_recipe(kind="wma"), threshold=threshold)


# --------------------------------------------------------------------------- empirical series


def _records(ratios, kls=None, start=1):
    out = [{"event": "eval", "step": 0}]
    for i, ratio in enumerate(ratios):
        r = {"event": "train", "step": start + i, "param_ratio": ratio, "agreement": 0.9}
        if kls is not None:
            r.update(kl_i2t=kls[i], kl_t2i=kls[i])
        out.append(r)
    return out


def test_decayed_ratio_is_collapsed_and_steady_is_persistent():
    t = np.arange(1, 101)
    decaying = diagnostics.empirical_from_records(_records(0.9 * 3 / (t + 2)), "x", 100, 0.05)
    summary = decaying.summaries()["param_ratio"]
    assert summary.peak == pytest.approx(0.9) and summary.peak_step == 1
    assert summary.tail == pytest.approx(np.mean(0.9 * 3 / (t[-10:] + 2)))
    assert decaying.collapsed and decaying.summaries()["kl"] is None
    steady = diagnostics.empirical_from_records(_records(0.5 + 0.1 * np.sin(t)), "x", 100, 0.05)
    assert not steady.collapsed


def test_kl_peak_ignores_the_start_transient():
    kls = np.r_[[5.0] * 5, np.full(95, 0.2)]  # a fresh model moves fastest in its first steps
    emp = diagnostics.empirical_from_records(_records(np.full(100, 0.6), kls), "x", 100, 0.05)
    assert emp.summaries()["kl"].peak == pytest.approx(0.2) and not emp.collapsed
    kls = np.r_[np.full(50, 0.2), np.full(50, 0.001)]  # the teacher caught up with the student
    emp = diagnostics.empirical_from_records(_records(np.full(100, 0.6), kls), "x", 100, 0.05)
    assert emp.collapsed and "kl tail/peak" in emp.reasons(failing_only=True)[0]


def test_records_repeat_steps_and_may_lack_keys():
    records = _records([0.5, 0.4, 0.3]) + [{"event": "train", "step": 2, "param_ratio": 0.45}]
    records.append({"event": "train", "step": 4, "loss": 1.0})  # no teacher statistics
    emp = diagnostics.empirical_from_records(records, "x", 10, 0.05)
    assert emp.steps.tolist() == [1, 2, 3] and emp.series["param_ratio"][1] == 0.45
    assert math.isnan(emp.series["kl_i2t"][0])
    with pytest.raises(UsageError, match="no teacher-student statistics"):
        diagnostics.empirical_from_records([{"event": "train", "step": 1}], "run 'r'", 10, 0.05)


def test_json_document_shape():
    emp = diagnostics.empirical_from_records(_records(np.full(300, 0.6), np.full(300, 0.1)),
                                             "first 300 steps", 1000, 0.05)
    doc = json.loads(json.dumps(diagnostics.check(_recipe(kind="wma", steps=1000), 0.05,
                                                  emp).to_dict()))
    assert {"teacher", "horizon", "relative_lag_final", "anchor_mass_final", "anchor_half_life",
            "collapsed", "empirical", "alternatives"} <= set(doc)
    assert doc["horizon"] == 1000 and doc["collapsed"] is False
    assert doc["teacher"]["kind"] == "wma" and doc["teacher"]["beta"] == 0.5
    assert len(doc["teacher"]["curve"]["step"]) == diagnostics.CURVE_POINTS
    assert doc["empirical"]["coverage"] == 0.3
    assert doc["empirical"]["kl"]["decay"] == pytest.approx(1.0)
    assert len(doc["empirical"]["series"]["step"]) == diagnostics.SERIES_POINTS
    assert any("covers steps 1..300 of 1000" in note for note in doc["notes"])
    assert all("curve" not in a for a in doc["alternatives"])


def test_plot_is_written_atomically(tmp_path):
    emp = diagnostics.empirical_from_records(_records(np.full(20, 0.6), np.full(20, 0.1)),
                                             "first 20 steps", 300, 0.05)
    path = diagnostics.plot(diagnostics.check(_recipe(kind="wma"), 0.05, emp), tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]
    with pytest.raises(UsageError, match="unknown image format 'bmpx'"):
        diagnostics.plot_format(tmp_path / "p.bmpx")


# --------------------------------------------------------------------------- parameter distances


def test_drift_tracker_measures_distances_to_start_and_teacher():
    student = nn.Linear(3, 2)
    teacher = EmaTeacher(student, total_steps=10, momentum_start=0.5, momentum_end=0.5,
                         update_every=1)
    tracker = DriftTracker(student, teacher)
    assert tracker.stats() == {"drift": 0.0, "gap": 0.0}  # no ratio before the student moves
    start = [p.detach().clone() for p in student.parameters()]
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    teacher.update(1, student)  # φ halfway between θ₀ and θ
    n = sum(p.numel() for p in student.parameters())
    stats = tracker.stats()
    assert stats["drift"] == pytest.approx(math.sqrt(n))
    assert stats["gap"] == pytest.approx(0.5 * math.sqrt(n))
    assert stats["param_ratio"] == pytest.approx(0.5)
    assert tracker.theta0.where == "file"  # CPU parameters: θ₀ lives in a temporary file
    for i, p0 in enumerate(start):
        assert torch.equal(tracker.theta0.tensor(i), p0)  # θ₀ is a byte copy: exact
    static = DriftTracker(student, StaticTeacher(student))
    assert static.theta0 is None  # a static teacher is θ₀: no second copy, read from it
    with torch.no_grad():
        for p in student.parameters():
            p.add_(1.0)
    moved = static.stats()
    assert moved["drift"] == moved["gap"] == pytest.approx(math.sqrt(n))
