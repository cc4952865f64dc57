"""The classification task: prompt files, the subset head sliced from its parent, classes grouped
over a parent label space (max of the parents' logits), label checks."""

from __future__ import annotations

import contextlib

import pytest
import torch

from tests.conftest import LOGIT_TOLERANCE, assert_same_predictions
from tracer_cli.engine.modes import eval_mode
from tracer_cli.errors import RecipeError, UsageError
from tracer_cli.results.metrics import classification_metrics
from tracer_cli.sdk.contracts import DatasetBundle
from tracer_plugins.backbones.openclip import make_backbone
from tracer_plugins.datasets.synth import CLASSNAMES
from tracer_plugins.tasks.classification import (
    LinearHead, group_max, make_task, zero_shot_head)

TEMPLATES = ["a photo of a {}.", "a sketch of a {}."]
SUBSET = [7, 1, 4]  # deliberately unsorted: rows must follow the subset's order


class _CountingBackbone:
    """The tiny backbone, counting the prompts it encodes."""

    def __init__(self):
        torch.manual_seed(0)
        self.inner = make_backbone({"arch": "tracer-tiny-rn"})
        self.model = self.inner.model
        self.texts = 0

    def tokenize(self, texts):
        self.texts += len(texts)
        return self.inner.tokenize(texts)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@pytest.fixture(scope="module")
def backbone() -> _CountingBackbone:
    return _CountingBackbone()


def _bundle(labels, classnames, subset=None) -> tuple[DatasetBundle, list]:
    gen = torch.Generator().manual_seed(len(labels))
    images = torch.rand(len(labels), 3, 32, 32, generator=gen)
    batches = [{"image": images[i:i + 4], "label": torch.tensor(labels[i:i + 4])}
                for i in range(0, len(labels), 4)]
    bundle = DatasetBundle(dataset=list(range(len(labels))), classnames=list(classnames),
                           templates=TEMPLATES, class_subset=subset)
    return bundle, batches


def _evaluate(task, backbone, datasets):
    backbone.texts = 0
    return task.evaluate(backbone, backbone.model, datasets, torch.device("cpu"),
                         contextlib.nullcontext)


@pytest.mark.numerics
def test_subset_head_is_sliced_from_the_parent_and_equals_encoding_it(backbone):
    task = make_task({})
    parent = _bundle([0, 3, 7, 9, 1, 4], CLASSNAMES)
    child = _bundle([0, 2, 1, 1, 0], [CLASSNAMES[i] for i in SUBSET], subset=SUBSET)
    together = _evaluate(task, backbone, {"child": child, "parent": parent})
    assert backbone.texts == len(CLASSNAMES) * len(TEMPLATES)  # the subset was not re-encoded
    alone = _evaluate(task, backbone, {"child": child})
    assert backbone.texts == len(SUBSET) * len(TEMPLATES)
    # Sliced rows of a 10-class head vs a 3-class head encoded alone: other matrix shapes, so
    # equal to float32 rounding (not bit for bit) and the same predictions.
    sliced, encoded = together["child"]["logits"], alone["child"]["logits"]
    torch.testing.assert_close(sliced, encoded, **LOGIT_TOLERANCE)
    assert_same_predictions(sliced, encoded)
    assert together["child"]["metrics"] == pytest.approx(alone["child"]["metrics"], rel=1e-5,
                                                         abs=1e-6)
    assert together["parent"]["logits"].shape == (6, 10)

    # Other templates are another head: nothing to slice from.
    other = DatasetBundle(child[0].dataset, child[0].classnames, ["art of a {}."], False, SUBSET)
    _evaluate(task, backbone, {"parent": parent, "other": (other, child[1])})
    assert backbone.texts == len(CLASSNAMES) * len(TEMPLATES) + len(SUBSET) * 1


def test_classnames_file_renames_and_checks_counts(backbone, tmp_path):
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"shape {c}" for c in CLASSNAMES) + "\n\n")
    task = make_task({"classnames_file": str(names)})
    parent = _bundle([0, 1], CLASSNAMES)
    child = _bundle([0, 1], [CLASSNAMES[i] for i in SUBSET], subset=SUBSET)
    # The parent's list serves the subset dataset too (one file for the ImageNet family).
    out = _evaluate(task, backbone, {"parent": parent, "child": child})
    assert set(out) == {"parent", "child"}
    assert backbone.texts == len(CLASSNAMES) * len(TEMPLATES)
    texts = task.train_texts({"label": torch.tensor([3])}, parent[0], torch.Generator())
    assert texts[0] in {t.format("shape star") for t in TEMPLATES}

    names.write_text("circle\nsquare\n")
    with pytest.raises(UsageError, match=r"names\.txt' has 2 class names but dataset 'parent' "
                                         r"has 10 classes"):
        _evaluate(make_task({"classnames_file": str(names)}), backbone, {"parent": parent})


def test_templates_file(tmp_path):
    path = tmp_path / "templates.txt"
    path.write_text("a photo of a {}.\n\n  a render of a {}.  \n")
    assert make_task({"templates_file": str(path)}).templates == ["a photo of a {}.",
                                                                  "a render of a {}."]
    with pytest.raises(RecipeError, match="set either 'templates' or 'templates_file'"):
        make_task({"templates_file": str(path), "templates": "openai"})
    path.write_text("no slot here\n")
    with pytest.raises(RecipeError, match="exactly one"):
        make_task({"templates_file": str(path)})
    with pytest.raises(RecipeError, match="task.classnames_file.*does not exist"):
        make_task({"classnames_file": str(tmp_path / "missing.txt")})


def test_clip_benchmark_templates_are_the_same_prompts(backbone):
    """A ``{c}`` template (CLIP_benchmark's form) prompts exactly as its ``{}`` twin."""
    heads = [zero_shot_head(backbone, backbone.model, CLASSNAMES[:3], [template],
                            torch.device("cpu"), contextlib.nullcontext)
             for template in ("a photo of a {}.", "a photo of a {c}.")]
    assert torch.equal(*heads)  # the same texts encoded twice
    bundle, batches = _bundle([0, 1, 2, 3], CLASSNAMES)
    texts = make_task({"train_templates": ["a {c} sketch"]}).train_texts(
        batches[0], bundle, torch.Generator().manual_seed(0))
    assert texts == [f"a {name} sketch" for name in CLASSNAMES[:4]]


@pytest.mark.parametrize("template", ["a {} or a {c}", "no slot here", "{c} and {c}"])
def test_a_template_needs_exactly_one_placeholder(template):
    with pytest.raises(RecipeError) as err:
        make_task({"templates": [template]})
    assert err.value.key == "task.templates"
    assert f"template {template!r} must contain exactly one '{{}}' or '{{c}}'" in str(err.value)


def test_labels_outside_the_head_are_a_usage_error(backbone):
    bundle, batches = _bundle([0, 1, 12], CLASSNAMES)
    with pytest.raises(UsageError, match="dataset 'odd' has label 12, outside the head's 10"):
        _evaluate(make_task({}), backbone, {"odd": (bundle, batches)})


def test_headline_key_picks_the_tasks_metric_spec():
    from tracer_cli.sdk.contracts import CLASSIFICATION_METRICS, task_metrics

    assert task_metrics(make_task({})) is CLASSIFICATION_METRICS
    task = make_task({"headline": "macro_f1"})
    assert task_metrics(task).primary == "macro_f1"
    assert "avg_ood_macro_f1" in task_metrics(task).ood_keys
    assert task_metrics(make_task({})).primary == "accuracy"  # per instance, not per class
    with pytest.raises(RecipeError) as err:
        make_task({"headline": "f1"})
    assert err.value.key == "task.headline" and "allowed: accuracy, macro_f1" in str(err.value)


# --------------------------------------------------------------------------- grouped classes

GROUPS = [[0, 3], [7], [9, 2, 5]]  # each class of the grouped dataset = these parent classes


def test_group_max_by_hand():
    logits = torch.tensor([[1.0, 5.0, 2.0, 0.0], [3.0, -1.0, 4.0, 2.0]])
    expected = torch.tensor([[5.0, 2.0, 1.0], [3.0, 4.0, 3.0]])
    assert torch.equal(group_max(logits, [[0, 1], [2], [3, 0]]), expected)
    assert group_max(logits, None) is logits


def _grouped(labels):
    bundle, batches = _bundle(labels, ["round", "pointy", "other"])
    bundle.class_groups, bundle.parent_classnames = GROUPS, list(CLASSNAMES)
    return bundle, batches


def _parent_view(grouped):
    """The grouped dataset's images scored over the whole parent label space."""
    bundle, batches = grouped
    return DatasetBundle(bundle.dataset, list(CLASSNAMES), TEMPLATES), batches


@pytest.mark.numerics
def test_grouped_classes_take_the_max_of_their_parents_logits(backbone):
    task = make_task({})
    grouped = _grouped([0, 2, 1, 1, 0, 2])
    out = _evaluate(task, backbone, {"parent": _parent_view(grouped), "grouped": grouped})
    assert backbone.texts == len(CLASSNAMES) * len(TEMPLATES)  # rows sliced from the parent
    parent = out["parent"]["logits"]
    expected = torch.stack([parent[:, g].max(dim=1).values for g in GROUPS], dim=1)
    logits = out["grouped"]["logits"]
    assert logits.shape == (6, 3)
    torch.testing.assert_close(logits, expected, **LOGIT_TOLERANCE)
    # Every metric, calibration included, is read from the reduced 3-way logits.
    assert out["grouped"]["metrics"] == pytest.approx(
        classification_metrics(expected, out["grouped"]["labels"]), rel=1e-5, abs=1e-6)
    alone = _evaluate(task, backbone, {"grouped": grouped})
    assert backbone.texts == len({i for g in GROUPS for i in g}) * len(TEMPLATES)
    torch.testing.assert_close(alone["grouped"]["logits"], expected, **LOGIT_TOLERANCE)


@pytest.mark.numerics
def test_a_trained_head_scores_grouped_classes_through_its_parent_columns(backbone):
    torch.manual_seed(1)
    head = LinearHead(torch.randn(len(CLASSNAMES), backbone.model.text_projection.shape[1]))
    grouped = _grouped([0, 1, 2, 2])
    out = make_task({}).evaluate(
        backbone, backbone.model, {"grouped": grouped}, torch.device("cpu"),
        contextlib.nullcontext, head=head)
    images = torch.cat([b["image"] for b in grouped[1]])
    with torch.no_grad(), eval_mode(backbone.model):
        full = head(backbone.encode_image(backbone.model, images)).float()
    expected = torch.stack([full[:, g].max(dim=1).values for g in GROUPS], dim=1)
    torch.testing.assert_close(out["grouped"]["logits"], expected, **LOGIT_TOLERANCE)


def test_grouped_bundles_are_checked(backbone):
    bundle, batches = _grouped([0])
    bundle.parent_classnames = None
    with pytest.raises(UsageError, match="dataset 'odd' declares class_groups / "
                                         "parent_classnames that do not fit"):
        _evaluate(make_task({}), backbone, {"odd": (bundle, batches)})
    bundle.parent_classnames, bundle.class_groups = list(CLASSNAMES), [[0], [1], [10]]
    with pytest.raises(UsageError, match="each index below the 10 parent class names"):
        _evaluate(make_task({}), backbone, {"odd": (bundle, batches)})
