"""The eval library without running a model: spec grammar, α lists, gates, dataset resolution."""

from __future__ import annotations

import pytest
import torch

from tracer_cli.commands import evaluate as evaluation
from tracer_cli.errors import GateError, UsageError
from tracer_cli.commands.evaluate import EvalRequest, Gate, prepare


@pytest.mark.parametrize("text, section", [
    ("openclip:ViT-B-16:openai", {"backbone": "openclip", "arch": "ViT-B-16",
                                  "pretrained": "openai"}),
    ("openclip:RN50:/w/weights.pt", {"backbone": "openclip", "arch": "RN50",
                                     "pretrained": "/w/weights.pt"}),
    ("openclip:RN50:/odd:name.pt", {"backbone": "openclip", "arch": "RN50",
                                    "pretrained": "/odd:name.pt"}),
    ("openclip:local-dir:/models/clip:v2", {"backbone": "openclip",
                                            "arch": "local-dir:/models/clip:v2"}),
    ("openclip:hf-hub:timm/ViT-B-16-SigLIP", {"backbone": "openclip",
                                              "arch": "hf-hub:timm/ViT-B-16-SigLIP"}),
    ("my-backbone:small", {"backbone": "my-backbone", "arch": "small"}),
    # location archs and required weights are the openclip factory's declarations, not the core's
    ("my-backbone:local-dir:/x", {"backbone": "my-backbone", "arch": "local-dir",
                                  "pretrained": "/x"}),
])
def test_model_spec_grammar(text, section):
    assert evaluation.parse_model_spec(text) == section


@pytest.mark.parametrize("text", ["openclip", "openclip:ViT-B-16", "openclip:RN50:", ":RN50:x",
                                  "openclip:local-dir", "openclip::openai"])
def test_bad_model_specs_show_the_grammar(text):
    with pytest.raises(UsageError, match=r"BACKBONE:ARCH\[:PRETRAINED\]"):
        evaluation.parse_model_spec(text)


def test_alphas_and_names():
    assert evaluation.parse_alphas("1, 0,0.5,0.5") == [0.0, 0.5, 1.0]
    assert evaluation.parse_alphas(None) is None
    for bad, fragment in (("0,x", "'x' is not a number"), ("-0.1", r"outside \[0, 1\]")):
        with pytest.raises(UsageError, match=fragment):
            evaluation.parse_alphas(bad)
    assert evaluation.parse_names("a, b,,a", "--ood") == ["a", "b"]
    with pytest.raises(UsageError, match="--id ','"):
        evaluation.parse_names(",", "--id")


def test_gate_parsing_validation_and_results():
    gates = evaluation.parse_gates(["avg_ood_accuracy=0.55", "r.accuracy=0.7"],
                                   ["avg_ood_ece=0.1"])
    assert gates == [Gate("avg_ood_accuracy", 0.55, "under"), Gate("r.accuracy", 0.7, "under"),
                     Gate("avg_ood_ece", 0.1, "over")]
    evaluation.validate_gates(gates, ["in"], ["r"])
    with pytest.raises(UsageError, match="expected METRIC=VALUE"):
        evaluation.parse_gates(["accuracy"])
    with pytest.raises(UsageError, match="no OOD datasets to average"):
        evaluation.validate_gates([Gate("avg_ood_ece", 0.1, "over")], ["in"], [])
    with pytest.raises(UsageError, match="use --fail-under r.top5=0.5"):
        evaluation.validate_gates([Gate("r.top5", 0.5, "over")], [], ["r"])
    with pytest.raises(UsageError, match="did you mean r.nll"):
        evaluation.validate_gates([Gate("r.nl", 1.0, "over")], [], ["r"])

    doc = {"avg_ood_accuracy": 0.5, "datasets": {"r": {"accuracy": 0.8}}}
    results = evaluation.gate_results(gates[:2], doc)
    assert [r["passed"] for r in results] == [False, True]
    with pytest.raises(GateError, match=r"^gate failed: avg_ood_accuracy = 0.5 is below 0.55 "
                                        r"\(--fail-under\)$") as info:
        evaluation.check_gates({"gates": results})
    assert info.value.exit_code == 3
    evaluation.check_gates({"gates": results[1:]})


def test_prepare_resolves_names_against_the_recipe(tiny_recipe):
    plan = prepare(EvalRequest(recipe=tiny_recipe, ood_names=["synth-sketch", "synth-cartoon"],
                               overrides=["data.options.size=20"]))
    assert plan.id_names == ["synth-photo"] and plan.ood_names == ["synth-sketch", "synth-cartoon"]
    sizes = {s["name"]: s["size"] for s in plan.recipe.data.id + plan.recipe.data.ood}
    assert sizes == {"synth-photo": 48, "synth-sketch": 48, "synth-cartoon": 20}
    assert plan.model["source"] == "recipe" and plan.load_weights is None
    assert plan.reported_alpha is None


def test_prepare_without_recipe_uses_the_default_eval_recipe():
    plan = prepare(EvalRequest(model="openclip:tracer-tiny-rn:none", id_names=["synth-photo"],
                               overrides=["data.options.size=10"]))
    assert plan.recipe.data.eval_batch_size == 256 and plan.recipe.run.device == "auto"
    assert plan.recipe.data.id == [{"name": "synth-photo", "size": 10}]
    assert plan.model["spec"] == "openclip:tracer-tiny-rn:none"
    assert plan.model["arch"] == "tracer-tiny-rn" and plan.model["pretrained"] == "none"


def test_checkpoint_without_a_recipe_needs_one(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(UsageError, match="carries no recipe; pass --recipe FILE"):
        prepare(EvalRequest(checkpoint=path))
    torch.save({"weights": {}}, path)
    with pytest.raises(UsageError, match="is not a tracer checkpoint"):
        prepare(EvalRequest(checkpoint=path))


def test_reported_alpha_is_one_else_the_largest():
    plan = evaluation.EvalPlan(recipe=None, model={}, load_weights=None, alphas=[0.0, 0.5],
                               gates=[])
    assert plan.reported_alpha == 0.5
    plan.alphas = [0.0, 1.0]
    assert plan.reported_alpha == 1.0


def test_safe_filename():
    assert evaluation.safe_filename("imagenet-r") == "imagenet-r"
    assert evaluation.safe_filename("my set/v2 (test)") == "my_set_v2_test"


def test_gates_and_summaries_follow_the_tasks_metric_spec():
    from tracer_cli.sdk.contracts import TaskMetrics

    spec = TaskMetrics(primary="score", columns=("score", "error", "n"),
                       higher_is_better=frozenset({"score", "n"}),
                       fractions=frozenset({"score", "error"}), averaged=("score", "error"),
                       id_averaged=("score",))
    assert spec.summary_keys == ("avg_ood_score", "avg_ood_error", "id_score")
    evaluation.validate_gates([Gate("avg_ood_error", 0.2, "over"), Gate("id_score", 0.5, "under"),
                               Gate("my.set.v2.n", 10, "under")], ["in"], ["my.set.v2"], spec)
    with pytest.raises(UsageError, match="use --fail-over avg_ood_error=0.2"):
        evaluation.validate_gates([Gate("avg_ood_error", 0.2, "under")], ["in"], ["r"], spec)
    with pytest.raises(UsageError, match="no ID datasets to average"):
        evaluation.validate_gates([Gate("id_score", 0.5, "under")], [], ["r"], spec)
    with pytest.raises(UsageError, match=r"use one of avg_ood_score, avg_ood_error, id_score"):
        evaluation.validate_gates([Gate("avg_ood_accuracy", 0.5, "under")], ["in"], ["r"], spec)
    metrics = {"in": {"score": 0.9, "error": 0.1}, "a": {"score": 0.5, "error": 0.3},
               "b": {"score": 0.7, "error": 0.1}}
    summary = evaluation.summarize(metrics, ["in"], ["a", "b"], spec)
    assert list(summary) == ["datasets", "avg_ood_score", "avg_ood_error", "id_score"]
    assert summary["avg_ood_score"] == pytest.approx(0.6) and summary["id_score"] == 0.9
    # Classification (the default) keeps its keys.
    assert list(evaluation.summarize(metrics | {"in": {"accuracy": 1, "ece": 0}},
                                     ["in"], [])) == ["datasets", "avg_ood_accuracy",
                                                      "avg_ood_ece", "id_accuracy"]


def test_macro_f1_headline_spec_for_classification():
    from tracer_cli.sdk.contracts import CLASSIFICATION_METRICS
    from tracer_cli.sdk.task_metrics import classification_spec

    assert classification_spec("accuracy") is CLASSIFICATION_METRICS
    spec = classification_spec("macro_f1")
    # The reference's macro-F1 leads, WILDS' beside it (a hidden gate key under accuracy).
    assert spec.primary == "macro_f1" and spec.columns[:2] == ("macro_f1", "macro_f1_wilds")
    assert set(spec.columns) == set(CLASSIFICATION_METRICS.columns) | {"macro_f1_wilds"}
    assert set(spec.dataset_metrics) == set(CLASSIFICATION_METRICS.dataset_metrics)
    assert spec.summary_keys == ("avg_ood_macro_f1", "avg_ood_macro_f1_wilds", "avg_ood_accuracy",
                                 "avg_ood_ece", "id_macro_f1", "id_macro_f1_wilds", "id_accuracy")
    assert {"macro_f1", "macro_f1_wilds"} <= spec.percent and spec.higher("avg_ood_macro_f1")
    assert spec.higher("avg_ood_macro_f1_wilds") and spec.fraction("id_macro_f1_wilds")
    evaluation.validate_gates([Gate("avg_ood_macro_f1", 0.3, "under"),
                               Gate("id_macro_f1", 0.3, "under")], ["in"], ["ood"], spec)
    with pytest.raises(UsageError, match="fraction in"):
        evaluation.validate_gates([Gate("avg_ood_macro_f1", 30, "under")], ["in"], ["ood"], spec)
    # With the accuracy headline there is no macro-F1 average to gate on.
    with pytest.raises(UsageError, match="unknown metric"):
        evaluation.validate_gates([Gate("avg_ood_macro_f1", 0.3, "under")], ["in"], ["ood"])
    metrics = {"in": {"accuracy": 0.9, "ece": 0.1, "macro_f1": 0.8, "macro_f1_wilds": 0.85},
               "a": {"accuracy": 0.5, "ece": 0.3, "macro_f1": 0.2, "macro_f1_wilds": 0.3},
               "b": {"accuracy": 0.7, "ece": 0.1, "macro_f1": 0.4, "macro_f1_wilds": 0.5}}
    summary = evaluation.summarize(metrics, ["in"], ["a", "b"], spec)
    assert summary["avg_ood_macro_f1"] == pytest.approx(0.3) and summary["id_macro_f1"] == 0.8
    assert summary["avg_ood_macro_f1_wilds"] == pytest.approx(0.4)
    assert summary["id_macro_f1_wilds"] == 0.85
    with pytest.raises(ValueError, match="allowed: accuracy, macro_f1"):
        classification_spec("balanced")
