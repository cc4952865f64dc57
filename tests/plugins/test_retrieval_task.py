"""Task ``retrieval``: caption sampling, recall@k against a hand-worked example, and a tiny run of
``recipes/quickstart_retrieval.toml`` through ``tracer finetune`` / ``tracer eval`` (gates
included)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tracer_cli import recipe as recipe_mod
from tracer_cli.cli import app
from tracer_cli.errors import RecipeError, UsageError
from tracer_cli.sdk.contracts import task_metrics
from tracer_plugins.tasks.retrieval import RETRIEVAL_METRICS, RetrievalTask, make_task

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "quickstart_retrieval.toml"
# The quickstart recipe, shrunk to seconds: random weights, 24 images per set, 2 steps.
TINY = ["model.pretrained=none", "run.device=cpu", "data.options.size=24",
        "data.eval_batch_size=24", "train.steps=2", "train.batch_size=16", "train.warmup_steps=1",
        "train.checkpoint_every=0", "run.log_every=1"]


def _sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


# --------------------------------------------------------------------------- training texts


def test_train_texts_draw_among_each_images_captions():
    task = RetrievalTask()
    batch = {"captions": [["a0", "a1", "a2"], ["b0"], ["c0", "c1"]]}
    gen = torch.Generator().manual_seed(0)
    draws = [task.train_texts(batch, None, gen) for _ in range(60)]
    for texts in draws:
        assert texts[0][0] == "a" and texts[1] == "b0" and texts[2][0] == "c"
    assert {t[0] for t in draws} == {"a0", "a1", "a2"} and {t[2] for t in draws} == {"c0", "c1"}
    again = torch.Generator().manual_seed(0)
    assert [task.train_texts(batch, None, again) for _ in range(60)] == draws  # seeded
    other = torch.Generator().manual_seed(1)
    assert [task.train_texts(batch, None, other) for _ in range(60)] != draws


def test_train_texts_need_captions():
    task = RetrievalTask()
    gen = torch.Generator().manual_seed(0)
    assert task.train_texts({"caption": ["x", "y"]}, None, gen) == ["x", "y"]
    with pytest.raises(UsageError, match="needs a caption dataset"):
        task.train_texts({"label": torch.tensor([0, 1])}, None, gen)
    with pytest.raises(RecipeError, match="task.ks"):
        make_task({"ks": [1]})


# --------------------------------------------------------------------------- evaluation


class AxisBackbone:
    """Images are their own features; each caption's features come from a table."""

    def __init__(self, texts: dict[str, list[float]]):
        self.names = list(texts)
        self.table = torch.tensor(list(texts.values()))

    def tokenize(self, texts):
        return torch.tensor([self.names.index(t) for t in texts])

    def encode_text(self, module, tokens):
        return F.normalize(self.table[tokens], dim=-1)

    def encode_image(self, module, images):
        return F.normalize(images.float(), dim=-1)

    def logit_scale(self, module):
        return torch.tensor(100.0)


def test_evaluate_gives_the_hand_computed_recalls():
    # Three images on the axes; captions t0, t1 of image 0, t2 of image 1, t3, t4 of image 2.
    texts = {"t0": [0.0, 1.0, 0.0], "t1": [0.8, 0.6, 0.0], "t2": [0.0, 0.0, 1.0],
             "t3": [0.0, 0.6, 0.8], "t4": [0.6, 0.8, 0.0]}
    # Two batches: the caption -> image mapping must continue across them.
    loader = [{"image": torch.eye(3)[:2], "captions": [["t0", "t1"], ["t2"]]},
              {"image": torch.eye(3)[2:], "captions": [["t3", "t4"]]}]
    module = nn.Linear(1, 1).train()
    out = RetrievalTask().evaluate(AxisBackbone(texts), module, {"toy": (None, loader)},
                                   torch.device("cpu"), contextlib.nullcontext)
    m = out["toy"]["metrics"]
    # By hand (ties to the lower index). Image -> text: image 0's best caption t1 ranks first;
    # image 1 sees t0, t4, t1, t3 before its t2 (rank 4); image 2 sees t2 before its t3 (rank 1).
    # Text -> image: t0 ranks image 0 second (after image 1), t1 first, t2 its image 1 third,
    # t3 first, t4 its image 2 third.
    assert m["i2t_r1"] == pytest.approx(1 / 3) and m["i2t_r5"] == m["i2t_r10"] == 1.0
    assert m["t2i_r1"] == pytest.approx(2 / 5) and m["t2i_r5"] == m["t2i_r10"] == 1.0
    assert m["mean_recall"] == pytest.approx((1 / 3 + 2 / 5 + 4) / 6)
    assert (m["n_images"], m["n_texts"]) == (3, 5)
    assert "logits" not in out["toy"] and module.training  # nothing to calibrate; mode restored


def test_evaluate_needs_captions():
    loader = [{"image": torch.eye(3), "label": torch.tensor([0, 1, 2])}]
    with pytest.raises(UsageError, match="dataset 'plain' has no captions"):
        RetrievalTask().evaluate(AxisBackbone({}), nn.Identity(), {"plain": (None, loader)},
                                 torch.device("cpu"), contextlib.nullcontext)


def test_metric_spec():
    spec = task_metrics(RetrievalTask())
    assert spec is RETRIEVAL_METRICS and spec.primary == "mean_recall"
    assert spec.ood_keys == ("avg_ood_mean_recall", "avg_ood_i2t_r1", "avg_ood_t2i_r1")
    assert spec.id_keys == ("id_mean_recall", "id_i2t_r1", "id_t2i_r1")
    assert spec.higher("avg_ood_t2i_r1") and spec.fraction("id_mean_recall")
    assert not spec.fraction("n_texts")


# --------------------------------------------------------------------------- end to end


def test_quickstart_recipe_validates():
    rec = recipe_mod.load(RECIPE)
    assert rec.task.name == "retrieval" and rec.train.method == "tracer"
    assert rec.model.options["pretrained"] == "embedded" and rec.model.freeze_bn_stats
    assert (rec.teacher.kind, rec.distill.lambda_sd, rec.distill.fd) == ("wma", 0.9, 2000.0)
    assert [s["domain"] for s in rec.data.id + rec.data.ood] == ["photo", "sketch", "cartoon",
                                                                 "noisy"]
    # The tie: in the finetuning and ID photos, never in the OOD sets.
    assert rec.data.train["colour_bias"] == rec.data.id[0]["colour_bias"] == 0.95
    assert not any("colour_bias" in s for s in rec.data.ood)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp("retrieval") / "runs"
    result = CliRunner().invoke(app, ["finetune", str(RECIPE), "--output-dir", str(out),
                                      "--json", *_sets(*TINY)])
    assert result.exit_code == 0, result.stderr
    return out / "quickstart_retrieval", json.loads(result.stdout), result.stderr


def test_tiny_run_summarizes_recalls(run):
    run_dir, summary, stderr = run
    models = summary["eval"]["models"]
    assert set(models) == {"zeroshot", "student", "teacher"}
    ood = summary["eval"]["ood"]
    for entry in models.values():
        for name in summary["eval"]["id"] + ood:
            assert entry[name]["n_images"] == 24 and entry[name]["n_texts"] == 72
        assert entry["avg_ood_mean_recall"] == pytest.approx(
            sum(entry[n]["mean_recall"] for n in ood) / len(ood))
        assert "avg_ood_accuracy" not in entry and "avg_ood_i2t_r1" in entry
    assert "mean recall (%)" in stderr  # the finetune table reads the task's headline metric
    events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    final = next(e for e in events if e.get("model") == "final_student")
    assert final["captions-photo/mean_recall"] == models["student"]["captions-photo"]["mean_recall"]


def test_eval_reproduces_the_run_and_gates_on_recall(run, runner, tmp_path):
    run_dir, summary, _ = run
    student = summary["eval"]["models"]["student"]
    result = runner.invoke(app, ["eval", str(run_dir), "--json", "--output-dir",
                                 str(tmp_path / "out"),
                                 "--fail-under", "avg_ood_mean_recall=0"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    saved = json.loads((run_dir / "eval" / "final_student.json").read_text())
    assert doc["datasets"] == saved
    assert doc["avg_ood_mean_recall"] == pytest.approx(student["avg_ood_mean_recall"])
    assert doc["id_t2i_r1"] == doc["datasets"]["captions-photo"]["t2i_r1"]
    assert "avg_ood_accuracy" not in doc and doc["gates"][0]["passed"]
    assert "T→I@1 %" in result.stderr and "mean R %" in result.stderr
    # Retrieval has no logits: eval.json only, no reliability diagrams.
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["eval.json"]

    value = doc["datasets"]["captions-sketch"]["i2t_r5"]
    assert value < 1.0  # random weights: far from perfect, so a gate just above it fails
    failing = runner.invoke(app, ["eval", str(run_dir), "--json", "--fail-under",
                                  f"captions-sketch.i2t_r5={value + 0.01:.6f}"])
    assert failing.exit_code == 3, failing.stderr
    assert json.loads(failing.stdout)["gates"][0]["passed"] is False
    assert "gate failed: captions-sketch.i2t_r5" in failing.stderr


@pytest.mark.parametrize("flag, message", [
    (["--fail-over", "avg_ood_mean_recall=0.5"], "use --fail-under avg_ood_mean_recall=0.5"),
    (["--fail-under", "captions-photo.accuracy=0.5"], "METRIC in i2t_r1, i2t_r5"),
    (["--fail-under", "avg_ood_accuracy=0.5"], "use one of avg_ood_mean_recall"),
    (["--fail-under", "id_mean_recall=50"], "fraction in [0, 1]"),
])
def test_gates_check_retrieval_metrics_before_evaluating(run, runner, flag, message):
    result = runner.invoke(app, ["eval", str(run[0]), *flag])
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert "evaluating" not in result.stderr


def test_head_methods_are_refused_before_any_work(runner, tmp_path):
    result = runner.invoke(app, ["finetune", str(RECIPE), "--output-dir", str(tmp_path),
                                 *_sets(*TINY, "train.method=ft", "teacher={}", "distill={}")])
    assert result.exit_code == 2
    assert ("train.method = 'ft' trains a task head, but task 'retrieval' has none; use "
            "train.method 'zeroshot', 'flyp', 'carot' or 'tracer'") in result.stderr
    assert not any(tmp_path.iterdir())  # refused before the run directory was made
