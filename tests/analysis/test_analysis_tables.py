"""tracer_cli.analysis: mean ± SE, pairing by seed, the WiSE-FT frontier, effective robustness
and the per-pretrained-model panels, on constructed numbers with known answers.

The constructed world: every OOD accuracy of the zero-shot model and of the WiSE-FT curve lies
on the line logit(OOD) = logit(ID) + log(2/3) (odds times 2/3), so the fit is known exactly and
a point's effective robustness is its OOD accuracy minus odds(ID)·2/3 as a probability."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tracer_cli.analysis import stats, tables

KEYS = ["id_accuracy", "avg_ood_accuracy", "avg_ood_ece"]
N = 100


def on_line(id_acc: float) -> float:
    odds = id_acc / (1 - id_acc) * 2 / 3
    return odds / (1 + odds)


def summary_eval(id_acc: float, ood_acc: float, ece: float = 0.05) -> dict:
    """A summary.json ``eval`` model entry: one ID set, two OOD sets at the same accuracy."""
    def ds(acc):
        return {"accuracy": acc, "ece": ece, "nll": 1.0, "n": N, "accuracy_se": 0.0}

    return {"photo": ds(id_acc), "sketch": ds(ood_acc), "noisy": ds(ood_acc),
            "avg_ood_accuracy": ood_acc, "avg_ood_ece": ece}


def record(name, group, seed, student, pretrained="P", zeroshot=(0.6, 0.5), wise=()):
    ev = {"id": ["photo"], "ood": ["sketch", "noisy"],
          "models": {"student": summary_eval(*student), "zeroshot": summary_eval(*zeroshot)}}
    return {"name": name, "method": group, "group": group, "pretrained": pretrained,
            "seed": seed, "zeroshot_key": None,
            "models": {m: tables.model_numbers(ev, m) for m in ev["models"]},
            "wise": [{"alpha": a, "id_accuracy": i, "avg_ood_accuracy": o, "avg_ood_ece": 0.05}
                     for a, i, o in wise], "wall_time_s": 10.0}


def world():
    wise = [(0.5, 0.8, on_line(0.8))]
    ft_ood = on_line(0.85)  # the mean of ft's two runs lies on the line as well
    return [
        record("ft0", "ft", 0, (0.80, ft_ood - 0.01, 0.05), wise=wise),
        record("ft1", "ft", 1, (0.90, ft_ood + 0.01, 0.07), wise=wise),
        # listed in another order and with a seed ft lacks: pairing is by seed
        record("tr1", "tracer", 1, (0.70, 0.70, 0.06)),
        record("tr0", "tracer", 0, (0.70, 0.66, 0.06)),
        record("tr2", "tracer", 2, (0.70, 0.68, 0.06)),
    ]


def test_mean_se_of_a_group_against_a_hand_computed_value():
    (panel,) = tables.analyse(world(), ["ft", "tracer"], ["ft"], KEYS)
    rows = {r["label"]: r for r in panel["rows"]}
    mean, se = rows["ft"]["id_accuracy"]
    # spread var(.8, .9) / 2 = .0025; binomial mean(.0016, .0009) / 2 = .000625
    assert mean == pytest.approx(0.85) and se == pytest.approx(math.sqrt(0.0025 + 0.000625))
    assert rows["ft"]["datasets"]["photo"]["accuracy"][1] == pytest.approx(se)
    assert rows["ft"]["n_runs"] == 2 and rows["ft"]["runs"] == ["ft0", "ft1"]
    # ECE has no binomial term; the pretrained model is one row, one model (not per run)
    assert rows["ft"]["avg_ood_ece"] == pytest.approx([0.06, 0.01])
    assert rows["zero-shot (pretrained)"]["n_runs"] == 1


def test_paired_differences_pair_by_seed_and_judge_noise():
    (panel,) = tables.analyse(world(), ["ft", "tracer"], ["ft"], KEYS)
    (entry,) = panel["paired"]
    assert (entry["group"], entry["reference"]) == ("tracer", "ft")
    ood = entry["avg_ood_accuracy"]
    # seed 0: .66 − (m − .01), seed 1: .70 − (m + .01); seed 2 has no partner
    m = on_line(0.85)
    assert ood["n"] == 2 and ood["mean"] == pytest.approx(0.68 - m)
    assert ood["se"] == pytest.approx(0.01) and ood["verdict"] == "beyond noise"
    assert entry["id_accuracy"]["mean"] == pytest.approx(-0.15)
    assert entry["id_accuracy"]["se"] == pytest.approx(0.05)
    assert entry["avg_ood_ece"]["mean"] == pytest.approx(0.0)
    assert entry["avg_ood_ece"]["verdict"] == "within noise"


def test_wise_frontier_and_effective_robustness_have_known_answers():
    (panel,) = tables.analyse(world(), ["ft", "tracer"], [], KEYS)
    curve = panel["wise"]["ft"]
    assert [p["alpha"] for p in curve] == [0.0, 0.5, 1.0]  # 0 and 1 from the runs themselves
    assert curve[0]["id_accuracy"][0] == pytest.approx(0.6)
    assert curve[2]["avg_ood_accuracy"][0] == pytest.approx(on_line(0.85))
    fit = panel["fit"]
    assert fit["slope"] == pytest.approx(1.0) and fit["intercept"] == pytest.approx(
        math.log(2 / 3))
    rows = {r["label"]: r for r in panel["rows"]}
    assert rows["tracer"]["effective_robustness"]["value"] == pytest.approx(0.68 - on_line(0.7))
    assert rows["ft"]["effective_robustness"]["value"] == pytest.approx(0.0, abs=1e-9)
    (gap,) = [e for e in panel["frontier"] if e["row"] == "tracer"]
    # the curve between (.6, .5) and (.8, on_line(.8)), at ID .7: the midpoint
    assert gap["curve_ood"] == pytest.approx((0.5 + on_line(0.8)) / 2)
    assert gap["gap"] == pytest.approx(0.68 - (0.5 + on_line(0.8)) / 2)
    spread = 0.0004 / 3  # var(.66, .70, .68) = .0004 (ddof 1), over 3 runs
    binom = sum(p * (1 - p) / N / 2 for p in (0.66, 0.70, 0.68)) / 3 / 3
    assert gap["se"] == pytest.approx(math.sqrt(spread + binom))
    assert gap["verdict"] == "above"


def test_runs_from_different_pretrained_weights_are_never_pooled():
    records = world() + [record("ft_other", "ft", 0, (0.50, 0.40), pretrained="Q")]
    first, second = tables.analyse(records, ["ft", "tracer"], ["ft"], KEYS)
    assert (first["pretrained"], second["pretrained"]) == ("P", "Q")
    ft = {r["label"]: r for r in first["rows"]}["ft"]
    assert ft["n_runs"] == 2 and ft["id_accuracy"][0] == pytest.approx(0.85)
    other = {r["label"]: r for r in second["rows"]}
    assert other["ft"]["runs"] == ["ft_other"] and "tracer" not in other
    assert second["paired"] == []  # no tracer run on Q to pair with


def test_paired_differences_pool_over_pretrained_models_by_model_and_seed():
    """Pairs are (pretrained model, seed): a difference is only taken within one model, and the
    pooled SE is the spread of every pair's difference. One pretrained model: nothing to pool."""
    assert tables.pooled_paired(world(), ["ft", "tracer"], ["ft"], KEYS) == []
    other = [record("ftQ0", "ft", 0, (0.50, 0.40), pretrained="Q"),
             record("trQ0", "tracer", 0, (0.52, 0.46), pretrained="Q"),
             record("trQ5", "tracer", 5, (0.52, 0.46), pretrained="Q")]  # no ft partner
    (entry,) = tables.pooled_paired(world() + other, ["ft", "tracer"], ["ft"], KEYS)
    assert (entry["group"], entry["reference"]) == ("tracer", "ft")
    m = on_line(0.85)
    diffs = [0.66 - (m - 0.01), 0.70 - (m + 0.01), 0.46 - 0.40]  # P seed 0, P seed 1, Q seed 0
    ood = entry["avg_ood_accuracy"]
    assert ood["n"] == 3 and ood["mean"] == pytest.approx(sum(diffs) / 3)
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / 2)
    assert ood["se"] == pytest.approx(sd / math.sqrt(3))
    ids = entry["id_accuracy"]
    assert ids["mean"] == pytest.approx((-0.10 - 0.20 + 0.02) / 3)


def test_logit_fit_needs_two_id_accuracies():
    assert stats.logit_fit([(0.6, 0.5), (0.6, 0.4)]) is None
    assert stats.effective_robustness(None, 0.7, 0.6) is None
    fit = stats.logit_fit([(0.5, 0.5), (0.75, 0.75)])
    assert fit["slope"] == pytest.approx(1.0) and fit["intercept"] == pytest.approx(0.0)
    assert stats.effective_robustness(fit, 0.6, 0.65) == pytest.approx(0.05)


def test_retrieval_and_vqa_runs_are_read_through_their_task_metrics():
    """Headline keys come from the task's TaskMetrics; recalls have no binomial term."""
    from tracer_cli.analysis.groups import RunData, task_keys

    def run(task):
        return RunData(Path("x"), "x", {"task": {"name": task}}, {})

    assert task_keys([run("retrieval")]) == ("mean_recall", [
        "id_mean_recall", "avg_ood_mean_recall", "avg_ood_i2t_r1", "avg_ood_t2i_r1",
        "id_i2t_r1", "id_t2i_r1"])
    assert task_keys([run("vqa")])[1][:3] == ["id_accuracy", "avg_ood_accuracy",
                                              "avg_ood_vqa_score"]
    ev = {"id": ["coco"], "ood": ["flickr"], "models": {"student": {
        d: {"i2t_r1": r, "t2i_r1": r, "mean_recall": r, "n_images": 50, "n_texts": 250}
        for d, r in (("coco", 0.4), ("flickr", 0.3))}}}
    records = [{"name": f"r{s}", "method": "flyp", "group": "flyp", "pretrained": "P",
                "seed": s, "zeroshot_key": None, "wise": [], "wall_time_s": None,
                "models": {"student": tables.model_numbers(ev, "student")}} for s in (0, 1)]
    records[1]["models"]["student"]["avg_ood_mean_recall"] = 0.5
    row = tables.aggregate(records, "student")
    assert row["id_mean_recall"] == [pytest.approx(0.4), pytest.approx(0.0)]
    assert row["avg_ood_mean_recall"] == pytest.approx([0.4, 0.1])  # spread only: |.5−.3|/2
    assert row["datasets"]["flickr"]["n_images"] == 50


def test_zero_shot_recipe_runs_count_once_per_pretrained_model():
    """Three seeds of a zero-shot recipe evaluate one model: one measurement (the binomial error
    of one run, not divided by sqrt(3)), while pairing against it still finds every seed."""
    zero = [record(f"zs{s}", "zeroshot", s, (0.60, 0.50)) for s in range(3)]
    records = zero + [record(f"tr{s}", "tracer", s, (0.70, 0.50 + 0.01 * s)) for s in range(3)]
    (panel,) = tables.analyse(records, ["zeroshot", "tracer"], ["zeroshot"], KEYS)
    rows = {r["label"]: r for r in panel["rows"]}
    assert rows["zeroshot"]["n_runs"] == 1 and rows["zeroshot"]["runs"] == ["zs0"]
    mean, se = rows["zeroshot"]["id_accuracy"]
    assert mean == pytest.approx(0.60) and se == pytest.approx(math.sqrt(0.6 * 0.4 / N))
    assert rows["tracer"]["n_runs"] == 3  # trained runs stay separate measurements
    (entry,) = panel["paired"]
    assert entry["avg_ood_accuracy"]["n"] == 3
    assert entry["avg_ood_accuracy"]["mean"] == pytest.approx(0.01)
