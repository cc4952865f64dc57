"""Task ``vqa``: the contrastive form's texts and loss, the answer vocabulary, the head and its
loss, zero-shot VQA on a hand-built toy, and tiny runs of ``recipes/quickstart_vqa.toml`` (TRACER
in the contrastive form with its teacher, the ``ft`` and ``lp`` head methods) through ``tracer
finetune``, ``tracer eval`` and ``tracer export``."""

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
from tracer_cli.sdk.contracts import DatasetBundle, task_metrics
from tracer_cli.engine import checkpoint, step
from tracer_cli.engine.distill import teacher_logits
from tracer_cli.engine.losses import clip_loss
from tracer_cli.errors import RecipeError, UsageError
from tracer_plugins.tasks.vqa import VQA_METRICS, VqaHead, VqaTask, make_task, top_answers

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "quickstart_vqa.toml"
TINY = ["model.pretrained=none", "run.device=cpu", "data.options.size=32",
        "data.eval_batch_size=32", "train.steps=2", "train.batch_size=16", "train.warmup_steps=1",
        "train.checkpoint_every=0", "run.log_every=1", "train.head_lr=1e-2"]
BASELINE = ["train.method=lp", "teacher={}", "distill={}"]
FT = ["train.method=ft", "teacher={}", "distill={}"]
CPU = torch.device("cpu")


def _sets(*pairs: str) -> list[str]:
    return [arg for pair in pairs for arg in ("--set", pair)]


# --------------------------------------------------------------------------- a toy world

WORDS = ("red", "blue", "circle", "square")


class WordBackbone:
    """Texts ending in one of WORDS point along that word's axis (plus a shared question axis);
    images are their own features. ``encoded`` lists every text tokenized."""

    def __init__(self):
        self.encoded: list[str] = []

    def tokenize(self, texts):
        self.encoded.extend(texts)
        rows = []
        for text in texts:
            row = torch.zeros(len(WORDS) + 1)
            for i, word in enumerate(WORDS):
                if text.split()[-1] == word:
                    row[i] = 1.0
            row[-1] = 0.5
            rows.append(row)
        return torch.stack(rows)

    def encode_text(self, module, tokens):
        return F.normalize(tokens.float(), dim=-1)

    def encode_image(self, module, images):
        return F.normalize(images.float(), dim=-1)

    def logit_scale(self, module):
        return torch.tensor(10.0)


def _image(word: str) -> torch.Tensor:
    return torch.eye(len(WORDS) + 1)[WORDS.index(word)]


# (question, canonical answer, what the image shows): the third image shows red, not blue.
ITEMS = [("what colour?", "red", "red"), ("what colour?", "red", "red"),
         ("what colour?", "blue", "red"), ("what shape?", "circle", "circle"),
         ("what shape?", "square", "square")]


def _toy() -> tuple[DatasetBundle, list[dict]]:
    bundle = DatasetBundle(dataset=ITEMS, classnames=[], templates=[],
                           info={"kind": "vqa", "answers": [a for _, a, _ in ITEMS],
                                 "questions": [q for q, _, _ in ITEMS]})
    batches = [ITEMS[:3], ITEMS[3:]]  # two batches: one question spans only the first
    loader = [{"image": torch.stack([_image(s) for _, _, s in b]),
               "question": [q for q, _, _ in b], "answer": [a for _, a, _ in b],
               "answers": [[a] for _, a, _ in b]} for b in batches]
    return bundle, loader


# --------------------------------------------------------------------------- the contrastive form


def _toy_batch() -> dict:
    return {"image": torch.stack([_image(s) for _, _, s in ITEMS]),
            "question": [q for q, _, _ in ITEMS], "answer": [a for _, a, _ in ITEMS]}


def test_train_pairs_scores_each_image_against_its_question_with_every_batch_answer():
    texts, pairing = VqaTask().train_pairs(_toy_batch(), None, None)
    answers = ["blue", "circle", "red", "square"]  # the batch's answers, sorted
    assert texts == [f"{q} {a}" for q in ("what colour?", "what shape?") for a in answers]
    assert not pairing.symmetric
    # Rows 0-2 ask "what colour?" (texts 0-3), rows 3-4 "what shape?" (texts 4-7).
    assert pairing.candidates.tolist() == [[0, 1, 2, 3]] * 3 + [[4, 5, 6, 7]] * 2
    assert pairing.targets.tolist() == [2, 2, 0, 1, 3]
    again = VqaTask().train_pairs(_toy_batch(), None, None)  # deterministic
    assert again[0] == texts and torch.equal(again[1].candidates, pairing.candidates)
    templated = VqaTask(zeroshot_template="Q: {question} A: {answer}")
    assert templated.train_pairs(_toy_batch(), None, None)[0][0] == "Q: what colour? A: blue"


@pytest.mark.numerics
def test_contrastive_loss_is_cross_entropy_over_each_images_answer_texts():
    backbone = WordBackbone()
    batch = _toy_batch()
    texts, pairing = VqaTask().train_pairs(batch, None, None)
    fi = backbone.encode_image(None, batch["image"]).double()
    ft = backbone.encode_text(None, backbone.tokenize(texts)).double()
    loss = clip_loss(fi, ft, 10.0, pairing)
    # By hand: image i against the K = 4 texts of its question, −log p(its answer's text).
    total = 0.0
    for i, (question, answer, _) in enumerate(ITEMS):
        mine = [j for j, t in enumerate(texts) if t.startswith(question)]
        logits = torch.stack([10.0 * fi[i] @ ft[j] for j in mine])
        right = mine.index(texts.index(f"{question} {answer}"))
        total += float(torch.logsumexp(logits, 0) - logits[right])
    torch.testing.assert_close(loss, torch.tensor(total / len(ITEMS), dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- vocabulary and head


def test_vocabulary_is_the_top_k_answers_with_alphabetical_ties():
    answers = ["b", "a", "c", "a", "c", "d", "e", "e", "e"]
    assert top_answers(answers) == ["e", "a", "c", "b", "d"]
    assert top_answers(answers, 3) == ["e", "a", "c"]
    assert top_answers(reversed(answers), 3) == ["e", "a", "c"]  # order of the data: no effect


def test_make_head_stores_its_vocabulary_and_load_head_restores_it():
    bundle = DatasetBundle(dataset=[], classnames=[], templates=[],
                           info={"answers": ["b", "a", "c", "a", "c", "d"]})
    task = VqaTask(vocab_size=3, hidden=8, dropout=0.0)
    head = task.make_head(WordBackbone(), nn.Identity(), bundle, CPU, contextlib.nullcontext)
    assert head.vocab == ["a", "c", "b"] and head.dim == len(WORDS) + 1 and head.answers == 3
    state = head.state_dict()
    assert state["_extra_state"]["vocab"] == ["a", "c", "b"]
    loaded = VqaTask().load_head(state)
    assert loaded.vocab == head.vocab and loaded.hidden == 8
    fi, fq = F.normalize(torch.randn(4, 5), dim=-1), F.normalize(torch.randn(4, 5), dim=-1)
    torch.testing.assert_close(loaded.eval()(fi, fq), head.eval()(fi, fq))
    described = head.describe()
    assert described["kind"] == "vqa-mlp" and described["vocab"] == ["a", "c", "b"]
    assert "f_i*f_q" in described["formula"]
    with pytest.raises(UsageError, match="not a VQA head"):
        VqaTask().load_head({"linear.weight": torch.zeros(2, 3)})


def test_head_fuses_image_and_question_features():
    head = VqaHead(dim=4, vocab=["x", "y"], hidden=3, dropout=0.0)
    fi, fq = torch.eye(4)[:1], torch.eye(4)[[0]] * 0.5
    # [2·f_i, 2·f_q, 4·f_i⊙f_q] for D = 4.
    assert head.fuse(fi, fq).tolist() == [[2, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0]]
    with pytest.raises(Exception, match="question features"):
        head(fi)


def test_head_loss_ignores_answers_outside_the_vocabulary():
    bundle = DatasetBundle(dataset=[], classnames=[], templates=[],
                           info={"answers": ["a", "a", "b", "c"]})
    task = VqaTask(vocab_size=3)
    task.make_head(WordBackbone(), nn.Identity(), bundle, CPU, contextlib.nullcontext)
    logits = torch.randn(4, 3, requires_grad=True)
    loss = task.head_loss(logits, {"answer": ["a", "unknown", "c", "b"]})
    expected = F.cross_entropy(logits[[0, 2, 3]], torch.tensor([0, 2, 1]))
    torch.testing.assert_close(loss, expected)
    none = task.head_loss(logits, {"answer": ["x", "y", "z", "w"]})
    assert float(none.detach()) == 0.0 and none.requires_grad
    with pytest.raises(Exception, match="before make_head"):
        VqaTask().head_loss(logits, {"answer": ["a"] * 4})


# --------------------------------------------------------------------------- evaluation


def test_zero_shot_scores_question_answer_texts_once_per_question():
    bundle, loader = _toy()
    backbone, module = WordBackbone(), nn.Linear(1, 1).train()
    out = VqaTask().evaluate(backbone, module, {"toy": (bundle, loader)}, CPU,
                             contextlib.nullcontext)["toy"]
    # Candidates: the dataset's answers, most frequent first: red (2), then blue, circle, square.
    candidates = ["red", "blue", "circle", "square"]
    assert sorted(backbone.encoded) == sorted(f"{q} {a}" for q in ("what colour?", "what shape?")
                                              for a in candidates)
    assert out["logits"].shape == (5, 4) and out["labels"].tolist() == [0, 0, 1, 2, 3]
    assert out["logits"].argmax(1).tolist() == [0, 0, 0, 2, 3]  # the red image answers red
    m = out["metrics"]
    assert m["accuracy"] == pytest.approx(4 / 5) and m["coverage"] == 1.0 and m["n"] == 5
    assert m["vqa_score"] == pytest.approx(4 / 5 / 3)  # one annotator: min(1/3, 1) per hit
    assert 0.0 <= m["ece"] <= 1.0 and module.training

    few = VqaTask(zeroshot_answers=2).evaluate(backbone, module, {"toy": (bundle, loader)}, CPU,
                                               contextlib.nullcontext)["toy"]
    assert few["logits"].shape == (5, 2) and few["labels"].tolist() == [0, 0, 1, -1, -1]
    assert few["metrics"]["coverage"] == pytest.approx(3 / 5)


def test_evaluation_through_a_head_scores_its_vocabulary():
    bundle, loader = _toy()
    head = VqaHead(dim=5, vocab=["square", "red"], hidden=4, dropout=0.0).eval()
    out = VqaTask().evaluate(WordBackbone(), nn.Identity(), {"toy": (bundle, loader)}, CPU,
                             contextlib.nullcontext, head=head)["toy"]
    assert out["logits"].shape == (5, 2) and out["labels"].tolist() == [1, 1, -1, -1, 0]
    assert out["metrics"]["coverage"] == pytest.approx(3 / 5)


def test_options_and_metric_spec():
    assert task_metrics(make_task({})) is VQA_METRICS
    assert VQA_METRICS.summary_keys == ("avg_ood_accuracy", "avg_ood_vqa_score", "avg_ood_ece",
                                        "id_accuracy", "id_vqa_score")
    assert not VQA_METRICS.higher("avg_ood_ece")
    with pytest.raises(RecipeError, match="task.zeroshot_template"):
        make_task({"zeroshot_template": "{question}"})
    with pytest.raises(RecipeError, match="task.dropout"):
        make_task({"dropout": 1.0})
    with pytest.raises(RecipeError, match="task.vocab"):
        make_task({"vocab": 10})
    with pytest.raises(UsageError, match="needs a VQA dataset"):
        VqaTask().train_texts({"caption": ["x"]}, None, None)
    with pytest.raises(UsageError, match="needs a VQA dataset"):
        VqaTask().train_pairs({"caption": ["x"], "answer": ["y"]}, None, None)


# --------------------------------------------------------------------------- end to end


def test_quickstart_recipe_validates():
    rec = recipe_mod.load(RECIPE)
    assert rec.task.name == "vqa" and rec.train.method == "tracer" and rec.train.head_lr > 0
    assert rec.model.options["pretrained"] == "embedded" and rec.model.freeze_bn_stats
    assert (rec.teacher.kind, rec.distill.lambda_sd) == ("wma", 0.9)
    lp = recipe_mod.load(RECIPE, BASELINE)
    assert lp.teacher.kind == "none" and lp.distill.lambda_sd == 0


def _finetune(tmp_path_factory, name: str, *sets: str) -> tuple[Path, dict]:
    from typer.testing import CliRunner

    out = tmp_path_factory.mktemp(name) / "runs"
    result = CliRunner().invoke(app, ["finetune", str(RECIPE), "--output-dir", str(out), "--json",
                                      *_sets(*TINY, *sets)])
    assert result.exit_code == 0, result.stderr
    return out / "quickstart_vqa", json.loads(result.stdout)


class _Seen:
    """What reached the distillation function: the pairing, the teacher's logits, the texts."""

    def __init__(self):
        self.calls: list[tuple] = []
        self.texts: list[list[str]] = []


@pytest.fixture(scope="module")
def tracer_run(tmp_path_factory):
    """The quickstart's TRACER run (contrastive form), recording what its views received."""
    seen, monkeypatch = _Seen(), pytest.MonkeyPatch()
    distill, pairs = step.distillation_loss, VqaTask.train_pairs

    def recording_distill(fi, ft, gi, gt, s, s_t, w, pairing=step.CLIP_PAIRING):
        seen.calls.append((pairing, teacher_logits(gi, gt, s_t, pairing=pairing), len(fi)))
        return distill(fi, ft, gi, gt, s, s_t, w, pairing)

    def recording_pairs(self, batch, bundle, rng):
        texts, pairing = pairs(self, batch, bundle, rng)
        seen.texts.append(texts)
        return texts, pairing

    monkeypatch.setattr(step, "distillation_loss", recording_distill)
    monkeypatch.setattr(VqaTask, "train_pairs", recording_pairs)
    try:
        yield (*_finetune(tmp_path_factory, "vqa-tracer"), seen)
    finally:
        monkeypatch.undo()


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory):
    return _finetune(tmp_path_factory, "vqa-ft", *FT)


def test_tracer_run_distils_the_teachers_answer_distribution(tracer_run):
    from tracer_cli.engine.run import pretrained_backbone

    run_dir, summary, seen = tracer_run
    models = summary["eval"]["models"]
    assert set(models) == {"zeroshot", "student", "teacher"}
    for entry in models.values():
        assert {"avg_ood_accuracy", "avg_ood_vqa_score", "avg_ood_ece"} <= set(entry)
    state = checkpoint.load(run_dir / "last.pt")
    assert "head" not in state  # the contrastive form has no head
    theta0 = pretrained_backbone(recipe_mod.load(RECIPE, TINY)).model.state_dict()
    moved = [k for k, v in state["state_dict"].items()
             if v.is_floating_point() and not torch.equal(v, theta0[k])]
    assert moved
    # Step 0 has no teacher term (φ = θ); step 1's views got the teacher's B×K answer logits
    # over texts that carry answers.
    assert len(seen.calls) == 1 and len(seen.texts) == 2
    pairing, teacher, batch = seen.calls[0]
    k = pairing.candidates.shape[1]
    assert not pairing.symmetric and teacher.shape == (batch, k) == (16, k) and k > 1
    texts = seen.texts[1]
    assert len(texts) == k * len({t.rsplit(" ", 1)[0] for t in texts}) > batch
    answers = {t.rsplit(" ", 1)[1] for t in texts}
    assert len(answers) == k and all(t.split()[-1] in answers for t in texts)
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e.get("event") == "train"]
    assert "loss_clip" in steps[-1] and "loss_sd" in steps[-1] and "loss_head" not in steps[-1]
    assert steps[-1]["kl_i2t"] == steps[-1]["kl_t2i"]  # one direction: answers per image


def test_contrastive_run_is_evaluated_by_the_zero_shot_scorer(tracer_run, runner):
    run_dir, summary, _ = tracer_run
    doc = json.loads(runner.invoke(app, ["eval", str(run_dir), "--json"]).stdout)
    assert doc["datasets"] == json.loads((run_dir / "eval" / "final_student.json").read_text())
    assert "head" not in doc["model"]
    teacher = json.loads(runner.invoke(app, ["eval", str(run_dir), "--which", "teacher",
                                             "--json"]).stdout)
    assert teacher["datasets"] == json.loads((run_dir / "eval" / "final_teacher.json").read_text())


def test_contrastive_form_refuses_gradient_accumulation(tmp_path, runner):
    result = runner.invoke(app, ["finetune", str(RECIPE), "--output-dir", str(tmp_path),
                                 *_sets(*TINY, "train.accum_steps=2")])
    assert result.exit_code == 2
    assert "train.accum_steps = 2" in result.stderr and "head method" in result.stderr
    assert not (tmp_path / "quickstart_vqa" / "last.pt").exists()


def test_ft_trains_the_head_on_question_features(ft_run):
    from tracer_plugins.datasets.synth import synth_vqa

    run_dir, summary = ft_run
    assert set(summary["eval"]["models"]) == {"zeroshot", "student"}
    state = checkpoint.load(run_dir / "last.pt")
    spec = {k: v for k, v in recipe_mod.load(RECIPE, TINY).data.train.items() if k != "name"}
    assert spec["size"] == 32
    train = synth_vqa(spec, "train")
    assert state["head"]["_extra_state"]["vocab"] == top_answers(train.info["answers"], 1000)
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [e for e in events if e.get("event") == "train"]
    assert "loss_head" in steps[-1] and "loss_clip" not in steps[-1]


def test_eval_and_export_read_the_run_through_its_head(ft_run, runner, tmp_path):
    run_dir, summary = ft_run
    result = runner.invoke(app, ["eval", str(run_dir), "--json", "--output-dir",
                                 str(tmp_path / "out"), "--save-predictions",
                                 "--fail-under", "avg_ood_vqa_score=0"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["datasets"] == json.loads((run_dir / "eval" / "final_student.json").read_text())
    assert doc["avg_ood_accuracy"] == summary["eval"]["models"]["student"]["avg_ood_accuracy"]
    assert doc["model"]["head"] is True and doc["gates"][0]["passed"]
    assert "VQA score %" in result.stderr
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"eval.json", "reliability_vqa-photo.png", "predictions"} <= names

    out = tmp_path / "export"
    exported = runner.invoke(app, ["export", str(run_dir), "--format", "safetensors",
                                   "--output", str(out)])
    assert exported.exit_code == 0, exported.stderr
    config = json.loads((out / "head.json").read_text())
    vocab = checkpoint.load(run_dir / "last.pt")["head"]["_extra_state"]["vocab"]
    assert config["kind"] == "vqa-mlp" and config["task"] == "vqa" and config["vocab"] == vocab
    assert config["tensors"]["mlp.3.weight"][0] == len(vocab)
    card = (out / "MODEL_CARD.md").read_text()
    assert "vqa-photo acc %" in card and "avg OOD VQA score %" in card


def test_lp_baseline_trains_the_head_alone(tmp_path_factory, runner):
    from tracer_cli.engine.run import pretrained_backbone

    run_dir, summary = _finetune(tmp_path_factory, "vqa-lp", *BASELINE)
    assert set(summary["eval"]["models"]) == {"zeroshot", "student"}
    state = checkpoint.load(run_dir / "last.pt")
    theta0 = pretrained_backbone(recipe_mod.load(RECIPE, [*TINY, *BASELINE])).model.state_dict()
    for key, value in state["state_dict"].items():
        assert torch.equal(value, theta0[key]), key  # BatchNorm statistics included
    assert not torch.equal(state["head"]["mlp.3.weight"], state["head_init"]["mlp.3.weight"])
    doc = json.loads(runner.invoke(app, ["eval", str(run_dir), "--json"]).stdout)
    assert doc["datasets"] == json.loads((run_dir / "eval" / "final_student.json").read_text())


def test_zeroshot_run_keeps_no_head(tmp_path_factory, runner):
    run_dir, summary = _finetune(tmp_path_factory, "vqa-zero", "train.method=zeroshot",
                                 "teacher={}", "distill={}")
    assert "head" not in checkpoint.load(run_dir / "last.pt")
    doc = json.loads(runner.invoke(app, ["eval", str(run_dir), "--json"]).stdout)
    assert doc["datasets"] == json.loads((run_dir / "eval" / "zeroshot.json").read_text())
    assert "head" not in doc["model"]
