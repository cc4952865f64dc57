"""tracer_cli.analysis.stats: the t quantile behind the 95% intervals (against published table
values), and the SE of a mean over seeds on shared test images on constructed correctness vectors
with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tracer_cli.analysis import stats

pytestmark = pytest.mark.numerics


@pytest.mark.parametrize("p, df, expected", [
    (0.975, 1, 12.706205), (0.975, 2, 4.302653), (0.975, 4, 2.776445), (0.975, 10, 2.228139),
    (0.975, 30, 2.042272), (0.95, 5, 2.015048), (0.995, 3, 5.840909), (0.025, 4, -2.776445),
    (0.975, None, 1.959964),
])
def test_t_quantile_matches_table_values_to_1e_5(p, df, expected):
    assert stats.t_quantile(p, df) == pytest.approx(expected, abs=1e-5)


def test_t_quantile_approaches_the_normal_for_large_df():
    assert stats.t_quantile(0.975, 10_000) == pytest.approx(1.96, abs=1e-3)


def test_betainc_known_values():
    # I_x(1, 1) = x; I_x(a, 1) = x^a; I_0.5(a, a) = 0.5
    assert stats.betainc(1.0, 1.0, 0.3) == pytest.approx(0.3, abs=1e-12)
    assert stats.betainc(2.5, 1.0, 0.4) == pytest.approx(0.4 ** 2.5, abs=1e-12)
    assert stats.betainc(7.0, 7.0, 0.5) == pytest.approx(0.5, abs=1e-12)


def test_ci95_uses_t_with_n_minus_1_degrees_of_freedom_and_the_normal_for_one_run():
    lo, hi = stats.ci95(0.5, 0.1, 5)
    assert (hi - lo) / 2 == pytest.approx(0.1 * 2.776445, abs=1e-6)
    lo, hi = stats.ci95(0.5, 0.1, 1)
    assert (hi - lo) / 2 == pytest.approx(0.1 * 1.959964, abs=1e-6)
    assert stats.ci95(0.5, None, 3) is None


def test_paired_differences_carry_their_t_interval():
    d = stats.paired_difference({0: 0.7, 1: 0.8}, {0: 0.6, 1: 0.6})
    # differences .1 and .2: mean .15, SE .05, t(0.975, 1) = 12.706
    assert d["ci95"] == pytest.approx([0.15 - 0.05 * 12.706205, 0.15 + 0.05 * 12.706205],
                                      abs=1e-6)


def _vector(p: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(n, dtype=bool)
    out[rng.permutation(n)[:round(p * n)]] = True
    return out


def test_shared_images_se_of_identical_seeds_is_one_runs_binomial_se_not_the_naive_one():
    """Three seeds that get exactly the same images right: the mean over seeds is one
    measurement, SE sqrt(p(1 − p)/n); the naive SE divides the binomial variance by 3."""
    n, p = 4000, 0.8
    c = _vector(p, n, 0)
    naive = stats.mean_se([p] * 3, [stats.binomial_var(p, n)] * 3)[1]
    shared = stats.shared_images_se([[c], [c], [c]])
    one_run = math.sqrt(p * (1 - p) / n)
    assert naive == pytest.approx(one_run / math.sqrt(3))
    assert shared == pytest.approx(one_run, rel=1e-3)  # ddof 1 over images: n / (n − 1)
    assert shared > 1.5 * naive


def test_shared_images_se_of_disjoint_errors_is_below_the_naive_one():
    """Two seeds at 80% whose errors fall on different images: every image is right at least
    once (mean correctness 0.5 or 1 per image), so the mean over seeds varies less than the
    naive formula, made for independent errors, says."""
    n, p = 4000, 0.8
    first = np.zeros(n, dtype=bool)
    first[800:] = True
    second = np.zeros(n, dtype=bool)
    second[:3200] = True
    means = (first.astype(float) + second) / 2  # 0.5 on 1600 images, 1 on 2400
    expected = math.sqrt(means.var(ddof=1) / n)
    naive = stats.mean_se([p, p], [stats.binomial_var(p, n)] * 2)[1]
    assert stats.shared_images_se([[first], [second]]) == pytest.approx(expected, rel=1e-9)
    assert expected < naive


def test_shared_images_se_of_an_average_over_sets_adds_the_spread_between_runs():
    """Two sets, two runs identical on the first set and one image apart on the second: the
    image term is the sum over sets / K², the runs' averages differ by 0.5 / n."""
    n = 3000
    a, b = _vector(0.5, n, 1), _vector(0.9, n, 2)
    b2 = b.copy()
    b2[np.flatnonzero(~b)[0]] = True  # one more image right on set 2
    per_image = [a.astype(float), (b.astype(float) + b2) / 2]
    images = sum(m.var(ddof=1) / n for m in per_image) / 4
    runs = np.var([(a.mean() + b.mean()) / 2, (a.mean() + b2.mean()) / 2], ddof=1) / 2
    assert stats.shared_images_se([[a, b], [a, b2]]) == pytest.approx(
        math.sqrt(images + runs), rel=1e-9)


def test_packed_correctness_round_trips_through_json():
    import json

    from tracer_cli.analysis import tables

    vector = _vector(0.3, 21, 3)
    packed = json.loads(json.dumps(tables.pack_correct(vector)))
    back = tables.unpack_correct(packed)
    assert back.dtype == bool and (back == vector).all()
