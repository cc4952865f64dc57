"""Retention (``data.retain``, :func:`tracer_cli.sdk.task_metrics.retention`) end to end on tiny
runs: the sets of another task scored zero-shot before and after finetuning, in ``tracer
finetune`` (summary.json, --json, the table), ``tracer eval`` (JSON, table, gates), ``tracer
compare`` and the model card; the key's validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.conftest import TINY_RECIPE
from tracer_cli.cli import app
from tracer_cli.sdk.task_metrics import retention

COLOUR = 'data.retain=[{name = "synth-colour", size = 40}]'


def _finetune(base: Path, *args: str):
    recipe = base / "tiny.toml"
    recipe.write_text(TINY_RECIPE)
    return CliRunner().invoke(app, ["finetune", str(recipe), "--output-dir", str(base / "runs"),
                                    "--max-steps", "2", "--set", COLOUR, *args])


@pytest.fixture(scope="module")
def retain_run(tmp_path_factory) -> tuple[Path, dict, str]:
    """A TRACER run (student and teacher) with one retention set: (run dir, --json, stderr)."""
    base = tmp_path_factory.mktemp("retain")
    result = _finetune(base, "--json")
    assert result.exit_code == 0, result.stderr
    return base / "runs" / "tiny", json.loads(result.stdout), result.stderr


@pytest.fixture(scope="module")
def plain_run(make_tiny_run) -> Path:
    """The same run without retention sets."""
    return make_tiny_run("retain-plain")


def _eval(*args: str) -> dict:
    result = CliRunner().invoke(app, ["eval", *map(str, args), "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.numerics
def test_retention_is_the_mean_accuracy_and_its_change_from_before():
    after = {"a": {"accuracy": 0.5}, "b": {"accuracy": 0.9}, "c": {"accuracy": 0.1}}
    before = {"a": {"accuracy": 0.75}, "b": {"accuracy": 0.95}}
    out = retention(after, ["a", "b"], before)
    assert out["retain_accuracy"] == pytest.approx(0.7, abs=1e-12)
    assert out["retain_change"] == pytest.approx(0.7 - 0.85, abs=1e-12)
    # Unmeasured before (a set the pretrained model was not scored on): no change to report.
    assert retention(after, ["a", "c"], before)["retain_change"] is None
    assert retention(after, ["a"], None)["retain_change"] is None
    assert retention(after, [], before) == {}


@pytest.mark.numerics
def test_summary_reports_retention_before_and_after(retain_run):
    run, doc, stderr = retain_run
    summary = json.loads((run / "summary.json").read_text())
    assert doc == summary  # --json prints the summary
    ev = summary["eval"]
    assert ev["retain"] == ["synth-colour"]
    assert set(ev["models"]) == {"zeroshot", "student", "teacher"}
    before = ev["models"]["zeroshot"]["synth-colour"]["accuracy"]
    for model in ("zeroshot", "student", "teacher"):
        entry = ev["models"][model]
        after = entry["synth-colour"]["accuracy"]
        assert entry["synth-colour"]["n"] == 40
        assert entry["retain_accuracy"] == pytest.approx(after, abs=1e-12)
        assert entry["retain_change"] == pytest.approx(after - before, abs=1e-12)
    assert ev["models"]["zeroshot"]["retain_change"] == 0
    # Retention sets stay out of the ID and OOD averages.
    student = ev["models"]["student"]
    oods = [student[n]["accuracy"] for n in ev["ood"]]
    assert student["avg_ood_accuracy"] == pytest.approx(sum(oods) / len(oods), abs=1e-12)
    assert "retained (mean)" in stderr and "change vs pretrained" in stderr


def test_retention_sets_leave_training_and_the_other_numbers_unchanged(retain_run, plain_run):
    """Retention only evaluates: the same losses step by step, the same ID and OOD metrics."""
    run, _, _ = retain_run

    def train_records(path: Path) -> list[dict]:
        lines = (path / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        return [{k: v for k, v in r.items() if k not in ("img_per_s", "time")}
                for r in records if r.get("event") == "train"]

    assert train_records(run) == train_records(plain_run)
    for tag in ("zeroshot", "final_student", "final_teacher"):
        with_retain = json.loads((run / "eval" / f"{tag}.json").read_text())
        without = json.loads((plain_run / "eval" / f"{tag}.json").read_text())
        assert {k: v for k, v in with_retain.items() if k != "synth-colour"} == without


def test_eval_of_the_run_measures_before_on_the_pretrained_model(retain_run):
    run, _, _ = retain_run
    saved = {tag: json.loads((run / "eval" / f"{tag}.json").read_text())
             for tag in ("zeroshot", "final_student")}
    doc = _eval(run)
    assert doc["retain"] == ["synth-colour"]
    # The same weights and data as finetune's own evaluation: the same numbers.
    assert doc["datasets"]["synth-colour"] == saved["final_student"]["synth-colour"]
    assert doc["retain_before"] == {"synth-colour": saved["zeroshot"]["synth-colour"]}
    after = doc["datasets"]["synth-colour"]["accuracy"]
    before = doc["retain_before"]["synth-colour"]["accuracy"]
    assert doc["retain_accuracy"] == after
    assert doc["retain_change"] == pytest.approx(after - before, abs=1e-12)


def test_eval_retain_flag_with_wise_and_a_zero_shot_model(retain_run, tiny_recipe):
    run, _, _ = retain_run
    doc = _eval(run, "--retain", "synth-colour", "--wise-alpha", "0,1",
                "--set", "data.retain[0].size=40")
    assert [e["alpha"] for e in doc["wise"]] == [0.0, 1.0]
    assert doc["wise"][0]["retain_change"] == 0  # α = 0 is θ₀ itself
    assert doc["wise"][1]["retain_change"] == doc["retain_change"]
    # A model evaluated zero-shot is its own "before".
    zero = _eval("--recipe", tiny_recipe, "--retain", "synth-colour",
                 "--set", "data.retain[0].size=40")
    assert zero["retain_before"] == {"synth-colour": zero["datasets"]["synth-colour"]}
    assert zero["retain_change"] == 0


def test_eval_gates_on_retention(retain_run):
    run, _, _ = retain_run
    result = CliRunner().invoke(app, ["eval", str(run), "--fail-under", "retain_accuracy=1.0",
                                      "--fail-under", "retain_change=-1"])
    doc_value = _eval(run)["retain_accuracy"]
    assert result.exit_code == (3 if doc_value < 1.0 else 0), result.stderr
    wrong = CliRunner().invoke(app, ["eval", str(run), "--fail-over", "retain_change=0.1"])
    assert wrong.exit_code == 2 and "--fail-under retain_change" in wrong.stderr
    none = CliRunner().invoke(app, ["eval", str(run), "--set", "data.retain=[]",
                                    "--fail-under", "retain_accuracy=0.5"])
    assert none.exit_code == 2 and "no retention datasets" in none.stderr


def test_head_method_scores_retention_through_the_text_tower(tmp_path):
    """lp trains only a head for the finetuning classes on a frozen backbone: retention goes
    through the text tower, so nothing changes (a head of 10 shape classes could not even score
    the 8 colours)."""
    result = _finetune(tmp_path, "--set", "train.method=lp", "--set", "teacher.kind=none",
                       "--set", "distill.lambda_sd=0", "--set", "distill.crd=0",
                       "--set", "distill.fd=0", "--set", "distill.icl=0", "--set", "distill.xkd=0",
                       "--set", "distill.lambda_fn=0")
    assert result.exit_code == 0, result.stderr
    ev = json.loads((tmp_path / "runs" / "tiny" / "summary.json").read_text())["eval"]
    zero, student = ev["models"]["zeroshot"], ev["models"]["student"]
    assert student["synth-colour"] == zero["synth-colour"]
    assert student["retain_change"] == 0


@pytest.mark.parametrize("value, fragment", [
    ('["synth-colur"]', "did you mean"),
    ("5", "data.retain"),
    ('["synth-sketch"]', "appear twice"),
])
def test_bad_retain_key_exits_2(tmp_path, value, fragment):
    result = _finetune(tmp_path, "--set", f"data.retain={value}")
    assert result.exit_code == 2
    assert fragment in result.stderr


def test_compare_reports_retention_and_refuses_other_retention_sets(retain_run, plain_run):
    run, _, _ = retain_run
    result = CliRunner().invoke(app, ["compare", str(run), "--json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["retain"] == ["synth-colour"]
    assert doc["keys"][-2:] == ["retain_accuracy", "retain_change"]
    rows = {r["model"]: r for r in doc["panels"][0]["rows"]}
    summary = json.loads((run / "summary.json").read_text())["eval"]["models"]
    assert rows["student"]["retain_accuracy"][0] == summary["student"]["retain_accuracy"]
    assert rows["student"]["retain_change"][0] == summary["student"]["retain_change"]
    text = CliRunner().invoke(app, ["compare", str(run), "--markdown"]).stdout
    assert "synth-colour (retain)" in text and "retained change" in text
    mixed = CliRunner().invoke(app, ["compare", str(run), str(plain_run)])
    assert mixed.exit_code == 2 and "retain synth-colour" in mixed.stderr


def test_model_card_shows_retention(retain_run, tmp_path):
    run, _, _ = retain_run
    out = tmp_path / "export"
    result = CliRunner().invoke(app, ["export", str(run), "--output", str(out),
                                      "--format", "safetensors"])
    assert result.exit_code == 0, result.stderr
    card = json.loads((out / "model_card.json").read_text())
    assert card["eval"]["retain"] == ["synth-colour"]
    text = (out / "MODEL_CARD.md").read_text()
    assert "synth-colour (retain) acc %" in text and "retained change" in text
    student = card["eval"]["models"]["student"]
    assert f"{100 * student['retain_change']:+.2f}" in text
