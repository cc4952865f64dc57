"""Distillation views and the contrastive loss: golden reference numbers and explicit formulas."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from tracer_cli.engine import distill
from tracer_cli.engine.losses import clip_loss, contrastive_loss, gather_features
from tracer_cli.errors import RecipeError
from tracer_cli.recipe import TRACER_WEIGHTS, DistillWeights

# Golden numbers and explicit formulas in float64, within stated tolerances; CI reruns these
# under other CPU kernels (.ci/run).
pytestmark = pytest.mark.numerics

GOLDEN = Path(__file__).parents[1] / "data" / "golden_reference_values.json"


@pytest.fixture(scope="module")
def golden():
    data = json.loads(GOLDEN.read_text())
    inp = data["inputs"]
    feats = {k: torch.tensor(inp[k], dtype=torch.float64)
             for k in ("student_img", "student_txt", "teacher_img", "teacher_txt")}
    return {"views": data["views"], "s": inp["student_logit_scale"],
            "s_t": inp["teacher_logit_scale"], **feats}


def _golden_view(g, name):
    fi, ft, gi, gt = g["student_img"], g["student_txt"], g["teacher_img"], g["teacher_txt"]
    S = distill.student_logits(fi, ft, g["s"])
    T = distill.teacher_logits(gi, gt, g["s_t"], temperature=1.0)
    return {
        "crd": lambda: distill.crd(S, T),
        "temp_distil": lambda: distill.crd(S, T),
        "fd": lambda: distill.fd(fi, ft, gi, gt),
        "icl": lambda: distill.icl(fi, ft, gi, gt, g["s"]),
        "cross_kd": lambda: distill.xkd(T, fi, ft, gi, gt, g["s"]),
        "plain_sd": lambda: distill.plain_sd(S, T),
    }[name]()


@pytest.mark.parametrize("name", ["crd", "temp_distil", "fd", "icl", "cross_kd", "plain_sd"])
def test_views_match_reference_implementation(golden, name):
    value = _golden_view(golden, name)
    assert value.dtype == torch.float64
    assert value.item() == pytest.approx(golden["views"][name], abs=1e-10, rel=0)


@pytest.mark.parametrize("name,weights", [
    ("crd", dict(crd=1, fd=0, icl=0, xkd=0)),
    ("fd", dict(crd=0, fd=1, icl=0, xkd=0)),
    ("icl", dict(crd=0, fd=0, icl=1, xkd=0)),
    ("cross_kd", dict(crd=0, fd=0, icl=0, xkd=1)),
    ("plain_sd", dict(crd=0, fd=0, icl=0, xkd=0)),
])
def test_distillation_loss_single_view_matches_reference(golden, name, weights):
    w = DistillWeights(lambda_sd=1.0, temperature=1.0, **weights)
    loss, _ = distill.distillation_loss(golden["student_img"], golden["student_txt"],
                                        golden["teacher_img"], golden["teacher_txt"],
                                        golden["s"], golden["s_t"], w)
    assert loss.item() == pytest.approx(golden["views"][name], abs=1e-10, rel=0)


# ---- explicit formulas, written with numpy loops independently of the implementation ----------

def _np_softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def _np_kl_rows(target, logits):
    """KL(softmax(target_i) || softmax(logits_i)) summed over each row, averaged over rows."""
    total = 0.0
    for t_row, s_row in zip(target, logits):
        p, q = _np_softmax(t_row), _np_softmax(s_row)
        total += sum(p[j] * (math.log(p[j]) - math.log(q[j])) for j in range(len(p)))
    return total / len(target)


def _np_ce_diag(logits):
    return float(np.mean([-math.log(_np_softmax(row)[i]) for i, row in enumerate(logits)]))


def _np_soft_ce(target, logits):
    return float(np.mean([-(_np_softmax(t) * np.log(_np_softmax(s))).sum()
                          for t, s in zip(target, logits)]))


@pytest.fixture
def rand():
    gen = torch.Generator().manual_seed(7)

    def unit(b, d):
        x = torch.randn(b, d, generator=gen, dtype=torch.float64)
        return x / x.norm(dim=1, keepdim=True)

    fi, ft, gi, gt = (unit(5, 6) for _ in range(4))
    return fi, ft, gi, gt, 13.0, 17.0


def test_views_match_explicit_formulas(rand):
    fi, ft, gi, gt, s, s_t = rand
    n = {k: v.numpy() for k, v in dict(fi=fi, ft=ft, gi=gi, gt=gt).items()}
    S_np, T_np = s * n["fi"] @ n["ft"].T, s_t * n["gi"] @ n["gt"].T
    S, T = distill.student_logits(fi, ft, s), distill.teacher_logits(gi, gt, s_t)
    x_i2t, x_t2i = s * n["fi"] @ n["gt"].T, s * n["ft"] @ n["gi"].T

    expected = {
        "crd": 0.5 * (_np_kl_rows(T_np, S_np) + _np_kl_rows(T_np.T, S_np.T)),
        "fd": np.mean((n["fi"] - n["gi"]) ** 2) + np.mean((n["ft"] - n["gt"]) ** 2),
        "icl": 0.5 * (_np_ce_diag(x_i2t) + _np_ce_diag(x_t2i)),
        "xkd": 0.5 * (_np_kl_rows(T_np, x_i2t) + _np_kl_rows(T_np.T, x_t2i)),
        "plain_sd": _np_soft_ce(T_np, S_np) + _np_soft_ce(T_np.T, S_np.T),
    }
    got = {
        "crd": distill.crd(S, T), "fd": distill.fd(fi, ft, gi, gt),
        "icl": distill.icl(fi, ft, gi, gt, s), "xkd": distill.xkd(T, fi, ft, gi, gt, s),
        "plain_sd": distill.plain_sd(S, T),
    }
    for key, value in expected.items():
        assert got[key].item() == pytest.approx(value, abs=1e-12), key


def test_teacher_student_kl_and_agreement_explicit(rand):
    fi, ft, gi, gt, s, s_t = rand
    S, T = distill.student_logits(fi, ft, s), distill.teacher_logits(gi, gt, s_t)
    kl_i2t, kl_t2i = distill.teacher_student_kl(S, T)
    assert kl_i2t.item() == pytest.approx(_np_kl_rows(T.numpy(), S.numpy()), abs=1e-12)
    assert kl_t2i.item() == pytest.approx(_np_kl_rows(T.numpy().T, S.numpy().T), abs=1e-12)
    S_np, T_np = S.numpy(), T.numpy()
    rows = np.mean([S_np[i].argmax() == T_np[i].argmax() for i in range(len(S_np))])
    cols = np.mean([S_np[:, j].argmax() == T_np[:, j].argmax() for j in range(len(S_np))])
    assert distill.top1_agreement(S, T).item() == pytest.approx(0.5 * (rows + cols))
    assert distill.top1_agreement(S, S).item() == 1.0


def test_plain_sd_is_used_when_all_view_weights_are_zero(rand):
    fi, ft, gi, gt, s, s_t = rand
    w = DistillWeights(lambda_sd=0.3, crd=0, fd=0, icl=0, xkd=0)
    assert not w.uses_views
    loss, parts = distill.distillation_loss(fi, ft, gi, gt, s, s_t, w)
    plain = distill.plain_sd(distill.student_logits(fi, ft, s), distill.teacher_logits(gi, gt, s_t))
    assert set(parts) == {"plain_sd", "sd"}
    assert loss.item() == pytest.approx(0.3 * plain.item(), abs=1e-12)


def test_weighted_views_and_parts(rand):
    fi, ft, gi, gt, s, s_t = rand
    w = DistillWeights(lambda_sd=0.9, crd=1.0, fd=2000.0, icl=0.0, xkd=0.5)
    loss, parts = distill.distillation_loss(fi, ft, gi, gt, s, s_t, w)
    assert set(parts) == {"crd", "fd", "xkd", "sd"}  # zero-weight views are not computed
    sd = parts["crd"] + 2000.0 * parts["fd"] + 0.5 * parts["xkd"]
    assert parts["sd"].item() == pytest.approx(sd.item(), abs=1e-12)
    assert loss.item() == pytest.approx(0.9 * sd.item(), abs=1e-12)


def test_temperature_softens_plain_distillation_only(rand):
    """As in the reference: τ divides the teacher logits of plain soft distillation; the views
    (CRD, XKD) compare with the untempered teacher, so τ ≠ 1 with a view weight is refused."""
    fi, ft, gi, gt, s, s_t = rand
    tau = 2.5
    T = distill.teacher_logits(gi, gt, s_t, temperature=tau)
    assert torch.allclose(T, s_t * gi @ gt.t() / tau)
    S = distill.student_logits(fi, ft, s)
    plain = DistillWeights(lambda_sd=1.0, crd=0, fd=0, icl=0, xkd=0, temperature=tau)
    loss, parts = distill.distillation_loss(fi, ft, gi, gt, s, s_t, plain)
    S_np, T_np = S.numpy(), s_t * gi.numpy() @ gt.numpy().T / tau
    expected = _np_soft_ce(T_np, S_np) + _np_soft_ce(T_np.T, S_np.T)
    assert parts["plain_sd"].item() == pytest.approx(expected, abs=1e-12)
    assert loss.item() == pytest.approx(expected, abs=1e-12)
    untempered, _ = distill.distillation_loss(fi, ft, gi, gt, s, s_t,
                                              DistillWeights(lambda_sd=1.0, crd=0, fd=0, icl=0,
                                                             xkd=0))
    assert loss.item() != pytest.approx(untempered.item())
    with pytest.raises(RecipeError, match="softens the teacher only in plain soft-label"):
        DistillWeights(lambda_sd=1.0, crd=1.0, fd=0, icl=0, xkd=1.0, temperature=tau)


def test_gradient_reaches_student_not_teacher(rand):
    fi, ft, gi, gt, s, s_t = (t.clone().requires_grad_(True) if torch.is_tensor(t) else t
                              for t in rand)
    loss, _ = distill.distillation_loss(fi, ft, gi, gt, s, s_t, TRACER_WEIGHTS)
    loss.backward()
    assert fi.grad is not None and ft.grad is not None
    assert gi.grad is None and gt.grad is None


def test_views_compute_in_float32_under_autocast(rand):
    fi, ft, gi, gt, s, s_t = (t.float() if torch.is_tensor(t) else t for t in rand)
    exact, _ = distill.distillation_loss(fi, ft, gi, gt, s, s_t, TRACER_WEIGHTS)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        auto, _ = distill.distillation_loss(fi.bfloat16(), ft.bfloat16(), gi.bfloat16(),
                                            gt.bfloat16(), s, s_t, TRACER_WEIGHTS)
        crd = distill.crd(fi @ ft.t() * s, gi @ gt.t() * s_t)
    assert auto.dtype == torch.float32 and crd.dtype == torch.float32
    assert auto.item() == pytest.approx(exact.item(), rel=0.05)


def test_weights_are_validated():
    with pytest.raises(RecipeError, match="distill.crd"):
        DistillWeights(crd=-1.0)
    with pytest.raises(RecipeError, match="distill.temperature"):
        DistillWeights(temperature=0.0)


def test_projection_norms_match_numpy():
    gen = np.random.default_rng(3)
    V, Tp = gen.normal(size=(7, 4)), gen.normal(size=(5, 4))
    fn = distill.cross_fnorm(torch.tensor(V), torch.tensor(Tp)).item()
    assert fn == pytest.approx(math.sqrt(sum(
        sum(V[i, d] * Tp[j, d] for d in range(4)) ** 2 for i in range(7) for j in range(5))))
    orth = distill.orthogonality(torch.tensor(V)).item()
    assert orth == pytest.approx(np.sqrt(((V.T @ V - np.eye(4)) ** 2).sum()))
    Q, _ = np.linalg.qr(gen.normal(size=(7, 4)))
    assert distill.orthogonality(torch.tensor(Q)).item() == pytest.approx(0.0, abs=1e-12)

    w = DistillWeights(lambda_fn=0.5, lambda_orth=0.25)
    loss, parts = distill.projection_penalty(torch.tensor(V), torch.tensor(Tp), w)
    assert loss.item() == pytest.approx(0.5 * fn + 0.25 * orth)
    assert set(parts) == {"cross_fnorm", "orthogonality"}
    _, parts = distill.projection_penalty(torch.tensor(V), torch.tensor(Tp),
                                          DistillWeights(lambda_fn=0.5, lambda_orth=0.0))
    assert set(parts) == {"cross_fnorm"}


def test_clip_loss_explicit(rand):
    fi, ft, _, _, s, _ = rand
    S = s * fi.numpy() @ ft.numpy().T
    expected = 0.5 * (_np_ce_diag(S) + _np_ce_diag(S.T))
    assert clip_loss(fi, ft, s).item() == pytest.approx(expected, abs=1e-12)
    assert contrastive_loss(fi, ft, s).item() == pytest.approx(expected, abs=1e-12)


def test_gather_features_is_identity_without_process_group(rand):
    fi, ft = rand[0], rand[1]
    gi, gt = gather_features(fi, ft)
    assert gi is fi and gt is ft


def test_gather_features_keeps_local_gradient(tmp_path, rand):
    fi, ft = (t.clone().requires_grad_(True) for t in rand[:2])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}",
                            rank=0, world_size=1)
    try:
        gi, gt = gather_features(fi, ft)
        assert torch.equal(gi, fi) and torch.equal(gt, ft)
        contrastive_loss(fi, ft, 10.0).backward()
    finally:
        dist.destroy_process_group()
    assert fi.grad is not None and ft.grad is not None


# --------------------------------------------------------------------------- candidate texts


def _kl_rows(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    p = target.softmax(1)
    return (p * (p.log() - logits.log_softmax(1))).sum(1).mean()


@pytest.mark.numerics
def test_views_with_candidate_texts_act_on_each_images_candidates():
    """With a Pairing, every view is its image→text direction over the B×K candidate logits
    (written out here with explicit loops), and FD is unchanged."""
    from tracer_cli.sdk.contracts import Pairing

    g = torch.Generator().manual_seed(3)
    B, T, D = 4, 6, 5
    fi, gi = (torch.nn.functional.normalize(torch.randn(B, D, generator=g, dtype=torch.float64),
                                            dim=1) for _ in range(2))
    ft, gt = (torch.nn.functional.normalize(torch.randn(T, D, generator=g, dtype=torch.float64),
                                            dim=1) for _ in range(2))
    candidates = torch.tensor([[0, 1, 2], [0, 1, 2], [3, 4, 5], [3, 4, 5]])
    pairing = Pairing(candidates, torch.tensor([2, 0, 1, 1]))
    s, st = 7.0, 5.0

    def over_candidates(a, b, scale):
        return torch.stack([torch.stack([scale * a[i] @ b[j] for j in candidates[i]])
                            for i in range(B)])

    S, Tl = over_candidates(fi, ft, s), over_candidates(gi, gt, st)
    ce = torch.nn.functional.cross_entropy(over_candidates(fi, gt, s), pairing.targets)
    expected = {"crd": _kl_rows(Tl, S), "icl": ce,
                "xkd": _kl_rows(Tl, over_candidates(fi, gt, s)),
                "fd": ((fi - gi) ** 2).mean() + ((ft - gt) ** 2).mean()}
    w = DistillWeights(lambda_sd=0.5, crd=1.0, fd=2.0, icl=3.0, xkd=4.0)
    loss, parts = distill.distillation_loss(fi, ft, gi, gt, s, st, w, pairing)
    for name, value in expected.items():
        torch.testing.assert_close(parts[name], value, rtol=1e-10, atol=1e-12)
    total = 0.5 * (expected["crd"] + 2 * expected["fd"] + 3 * expected["icl"]
                   + 4 * expected["xkd"])
    torch.testing.assert_close(loss, total, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(clip_loss(fi, ft, s, pairing),
                               torch.nn.functional.cross_entropy(S, pairing.targets),
                               rtol=1e-10, atol=1e-12)
    kl_i2t, kl_t2i = distill.teacher_student_kl(S, Tl, symmetric=False)
    assert float(kl_i2t) == float(kl_t2i)
    with pytest.raises(ValueError, match="both candidates and targets"):
        Pairing(candidates)
