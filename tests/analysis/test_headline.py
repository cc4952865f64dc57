"""The headline of a comparison (each method's gap to the best baseline's WiSE-FT frontier at
matched ID accuracy, with its SE, t interval and verdict), grouping without the keys that cannot
change training, and the plot's legend, on constructed numbers with hand-computed answers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tracer_cli.analysis import groups, stats, tables

KEYS = ["id_accuracy", "avg_ood_accuracy", "avg_ood_ece"]
N = 100


def _model(id_acc: float, ood_acc: float) -> dict:
    def ds(acc):
        return {"accuracy": acc, "ece": 0.05, "nll": 1.0, "n": N}

    return {"photo": ds(id_acc), "sketch": ds(ood_acc), "noisy": ds(ood_acc),
            "avg_ood_accuracy": ood_acc, "avg_ood_ece": 0.05}


def _record(name, group, seed, student, wise=()):
    ev = {"id": ["photo"], "ood": ["sketch", "noisy"],
          "models": {"student": _model(*student), "zeroshot": _model(0.6, 0.5)}}
    return {"name": name, "method": group, "group": group, "pretrained": "P", "seed": seed,
            "zeroshot_key": None, "models": {m: tables.model_numbers(ev, m) for m in ev["models"]},
            "wise": [{"alpha": a, "id_accuracy": i, "avg_ood_accuracy": o, "avg_ood_ece": 0.05}
                     for a, i, o in wise], "wall_time_s": 1.0}


def world():
    """Curves (α = 0 from the zero-shot model at (.60, .50), α = 1 from the students):
    ft (.60, .50) (.70, .60) (.80, .58), every point the same in both runs (SE 0);
    flyp (.60, .50) (.70, .62 ± .01) (.80, .57); tracer's students at ID .75, OOD .64 and .66."""
    return [
        _record("ft0", "ft", 0, (0.80, 0.58), [(0.5, 0.70, 0.60)]),
        _record("ft1", "ft", 1, (0.80, 0.58), [(0.5, 0.70, 0.60)]),
        _record("flyp0", "flyp", 0, (0.80, 0.57), [(0.5, 0.70, 0.61)]),
        _record("flyp1", "flyp", 1, (0.80, 0.57), [(0.5, 0.70, 0.63)]),
        _record("tr0", "tracer", 0, (0.75, 0.64)),
        _record("tr1", "tracer", 1, (0.75, 0.66)),
    ]


def _tracer_ood_var() -> float:
    """The SE² of tracer's avg OOD mean: spread (.64, .66) / 2 + mean binomial variance / 2,
    each run's binomial variance 2 p(1 − p)/n / 2² (two OOD sets at p)."""
    binom = [2 * p * (1 - p) / N / 4 for p in (0.64, 0.66)]
    return 0.0002 / 2 + sum(binom) / 2 / 2


@pytest.mark.numerics
def test_headline_is_the_gap_to_the_highest_baseline_curve_at_matched_id():
    (panel,) = tables.analyse(world(), ["ft", "flyp", "tracer"], [], KEYS)
    head = {e["row"]: e for e in panel["headline"]}
    tracer = head["tracer"]
    # at ID .75: ft's curve .59, flyp's .595 -> flyp; its SE there (0 + .01) / 2
    assert tracer["curve"] == "flyp" and tracer["curve_ood"] == pytest.approx(0.595)
    assert tracer["gap"] == pytest.approx(0.65 - 0.595)
    se = math.sqrt(_tracer_ood_var() + 0.005 ** 2)
    assert tracer["se"] == pytest.approx(se)
    assert tracer["verdict"] == "above"  # .055 > 2 × .0263
    half = stats.t_quantile(0.975, 1) * se
    assert tracer["ci95"] == pytest.approx([0.055 - half, 0.055 + half])
    rows = {r["label"]: r for r in panel["rows"]}
    assert tracer["effective_robustness"] == rows["tracer"]["effective_robustness"]
    # a baseline is measured against the other baselines' curves, never its own
    assert head["ft"]["curve"] == "flyp" and head["ft"]["gap"] == pytest.approx(0.01)
    assert head["flyp"]["curve"] == "ft"


@pytest.mark.numerics
def test_with_a_baseline_only_its_curve_is_the_frontier():
    (panel,) = tables.analyse(world(), ["ft", "flyp", "tracer"], ["ft"], KEYS)
    head = {e["row"]: e for e in panel["headline"]}
    assert head["tracer"]["curve"] == "ft" and head["tracer"]["gap"] == pytest.approx(0.06)
    assert head["tracer"]["se"] == pytest.approx(math.sqrt(_tracer_ood_var()))
    assert "ft" not in head  # no other baseline curve to stand against


def test_a_point_beyond_every_curve_is_said_to_be_outside():
    records = [_record("ft0", "ft", 0, (0.80, 0.58), [(0.5, 0.70, 0.60)]),
               _record("tr0", "tracer", 0, (0.95, 0.70))]
    (panel,) = tables.analyse(records, ["ft", "tracer"], [], KEYS)
    (entry,) = panel["headline"]
    assert entry["gap"] is None and entry["verdict"] == "outside the curve's ID range"


def _run(seed: int, **edits) -> groups.RunData:
    tables_ = {"run": {"name": f"r{seed}", "seed": seed, "loggers": []},
               "model": {"backbone": "openclip", "arch": "tracer-tiny-rn", "pretrained": "none"},
               "task": {"name": "classification"},
               "train": {"method": "ft", "lr": 1e-4, "checkpoint_every": 100}}
    for key, value in edits.items():
        section, name = key.split("__")
        tables_[section][name] = value
    return groups.RunData(Path(f"r{seed}"), f"r{seed}", tables_, {})


def test_groups_ignore_keys_that_cannot_change_training():
    runs = [_run(0), _run(1, run__loggers=["tensorboard"]), _run(2, train__checkpoint_every=7),
            _run(3, train__lr=1e-5)]
    labels = groups.group_labels(runs, None)
    assert labels[:3] == [labels[0]] * 3 and labels[3] != labels[0]
    assert labels == ["train.lr=0.0001"] * 3 + ["train.lr=1e-05"]


def test_plot_names_every_row_in_the_legend_not_beside_its_point():
    from matplotlib.figure import Figure

    from tracer_cli.analysis import plots

    long = "lr=0.0001, beta=0.2, a long label that used to overprint its neighbour"
    records = [_record("ft0", "ft", 0, (0.80, 0.58), [(0.5, 0.70, 0.60)]),
               _record("tr0", long, 0, (0.79, 0.60))]
    (panel,) = tables.analyse(records, ["ft", long], [], KEYS)
    ax = Figure().subplots()
    colors = {r["label"]: f"C{i}" for i, r in enumerate(panel["rows"])}
    plots._panel(ax, panel, KEYS[0], KEYS[1], colors)
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert {"ft", long, tables.PRETRAINED_ROW} <= set(legend)
    assert not any(t.get_text() in (long, "ft") for t in ax.texts)
