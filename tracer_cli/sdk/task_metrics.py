"""What a task measures, declared once: :class:`TaskMetrics`.

Run summaries, ``tracer eval`` documents, gates, result tables, WiSE-FT curves and model cards all
read a task's metrics through this declaration instead of assuming classification. It lives apart
from :mod:`tracer_cli.sdk.contracts` (which re-exports it) because it needs no torch: the CLI reads
it while drawing tables. Plugins import these names from :mod:`tracer_cli.sdk`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Mapping


@dataclass(frozen=True)
class TaskMetrics:
    """What a task reports per dataset, and how tables, summaries and gates should read it.

    A task declares one as its class attribute ``metrics``; tasks that declare none are read as
    classification (:data:`CLASSIFICATION_METRICS`). From it the engine and ``tracer eval``
    derive:

    - summary keys ``avg_ood_<m>`` (mean over the OOD sets) for each ``m`` of ``averaged``, and
      in eval documents also ``id_<m>`` (mean over the ID sets) for each ``m`` of ``id_averaged``
      (default: ``averaged``);
    - gate keys: every summary key and ``DATASET.<m>`` for ``m`` in ``columns`` + ``hidden``,
      failing *under* the threshold for ``higher_is_better`` metrics and *over* it for the others;
      thresholds of ``fractions`` must lie in [0, 1]. A summary key inherits both from its ``m``;
    - table columns (``columns``, titled by ``headers``, shown ×100 when in ``percent``) and the
      headline ``primary`` metric (the finetune table, WiSE-FT curves, the model card).
    """

    primary: str
    columns: tuple[str, ...]
    higher_is_better: frozenset[str] = frozenset()
    fractions: frozenset[str] = frozenset()
    averaged: tuple[str, ...] = ()
    id_averaged: tuple[str, ...] | None = None
    hidden: tuple[str, ...] = ()
    headers: Mapping[str, str] = field(default_factory=dict)
    percent: frozenset[str] = frozenset()

    @property
    def dataset_metrics(self) -> tuple[str, ...]:
        """Every per-dataset metric a gate may name: the columns, then the hidden ones."""
        return (*self.columns, *self.hidden)

    @property
    def ood_keys(self) -> tuple[str, ...]:
        return tuple(f"avg_ood_{m}" for m in self.averaged)

    @property
    def id_keys(self) -> tuple[str, ...]:
        ids = self.averaged if self.id_averaged is None else self.id_averaged
        return tuple(f"id_{m}" for m in ids)

    @property
    def summary_keys(self) -> tuple[str, ...]:
        """Keys of an eval document's averages, OOD first: ``avg_ood_<m>``..., ``id_<m>``..."""
        return (*self.ood_keys, *self.id_keys)

    def base(self, name: str) -> str:
        """The per-dataset metric behind ``name`` (``avg_ood_ece`` -> ``ece``)."""
        if name in self.ood_keys:
            return name.removeprefix("avg_ood_")
        if name in self.id_keys:
            return name.removeprefix("id_")
        return name

    def higher(self, name: str) -> bool:
        return self.base(name) in self.higher_is_better

    def fraction(self, name: str) -> bool:
        return self.base(name) in self.fractions

    def header(self, name: str) -> str:
        return self.headers.get(name, name)


CLASSIFICATION_METRICS = TaskMetrics(
    primary="accuracy",
    columns=("accuracy", "top5", "ece", "nll", "brier", "macro_f1", "n"),
    hidden=("macro_f1_wilds", "mean_per_class_recall", "accuracy_se"),
    higher_is_better=frozenset({"accuracy", "top5", "macro_f1", "macro_f1_wilds",
                                "mean_per_class_recall", "n"}),
    # A threshold of 70 for accuracy is a typo for 0.70, not a gate.
    fractions=frozenset({"accuracy", "top5", "macro_f1", "macro_f1_wilds",
                         "mean_per_class_recall", "ece", "accuracy_se"}),
    averaged=("accuracy", "ece"),
    id_averaged=("accuracy",),
    headers={"accuracy": "acc %", "top5": "top-5 %", "ece": "ECE", "nll": "NLL",
             "brier": "Brier", "macro_f1": "macro-F1", "macro_f1_wilds": "macro-F1 (WILDS)",
             "mean_per_class_recall": "mean per-class recall", "n": "n"},
    percent=frozenset({"accuracy", "top5"}),
)


# The headlines a classification run may report (``task.headline``): accuracy, or macro-F1 for
# long-tailed benchmarks such as iWildCam, where accuracy mostly counts the frequent classes.
CLASSIFICATION_HEADLINES = ("accuracy", "macro_f1")


def classification_spec(headline: str = "accuracy") -> TaskMetrics:
    """Classification's metrics with ``headline`` as the primary metric.

    ``"accuracy"`` is :data:`CLASSIFICATION_METRICS` itself. ``"macro_f1"`` leads with macro-F1
    (the paper's reference definition, :func:`tracer_cli.results.metrics.macro_f1`) and puts WILDS'
    ``macro_f1_wilds`` beside it: both columns shown in %, averaged over the OOD sets
    (``avg_ood_macro_f1``, ``avg_ood_macro_f1_wilds``, then the accuracy and ECE averages as
    before) and over the ID sets in eval documents (``id_macro_f1``, ``id_macro_f1_wilds``,
    ``id_accuracy``).
    """
    if headline not in CLASSIFICATION_HEADLINES:
        raise ValueError(f"unknown classification headline {headline!r}; allowed: "
                         f"{', '.join(CLASSIFICATION_HEADLINES)}")
    if headline == "accuracy":
        return CLASSIFICATION_METRICS
    base = CLASSIFICATION_METRICS
    f1s = ("macro_f1", "macro_f1_wilds")
    return replace(
        base, primary="macro_f1",
        columns=(*f1s, *(c for c in base.columns if c not in f1s)),
        hidden=tuple(c for c in base.hidden if c not in f1s),
        averaged=(*f1s, *base.averaged),
        id_averaged=(*f1s, *(base.id_averaged or base.averaged)),
        headers={**base.headers, "macro_f1": "macro-F1 %", "macro_f1_wilds": "macro-F1 WILDS %"},
        percent=base.percent | set(f1s))


def task_metrics(task: Any) -> TaskMetrics:
    """The task's declared :class:`TaskMetrics`, or the classification spec when it has none."""
    spec = getattr(task, "metrics", None)
    return spec if isinstance(spec, TaskMetrics) else CLASSIFICATION_METRICS


# Retention (``data.retain``): datasets of other tasks, scored zero-shot with the classification
# task's text head before and after finetuning. Their summaries, in every summary, eval document,
# comparison and model card that has retention sets: the mean accuracy over the retention sets,
# and its change from the pretrained model (after minus before; negative is forgetting).
RETAIN_KEYS = ("retain_accuracy", "retain_change")


def retention(after: Mapping[str, Mapping[str, Any]], names: list[str] | tuple[str, ...],
              before: Mapping[str, Mapping[str, Any]] | None) -> dict[str, float | None]:
    """``retain_accuracy``, the mean accuracy of ``after`` over the retention sets ``names``, and
    ``retain_change``, that mean minus the same mean of ``before`` (the pretrained model's
    metrics; None when it was not measured). Empty without retention sets."""
    if not names:
        return {}
    mean = sum(after[n]["accuracy"] for n in names) / len(names)
    change = None
    if before is not None and all(n in before for n in names):
        change = mean - sum(before[n]["accuracy"] for n in names) / len(names)
    return {"retain_accuracy": mean, "retain_change": change}
