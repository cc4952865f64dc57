"""An example third-party tracer plugin: the ``example-stripes`` dataset, the
``example-balanced`` task and the ``example-csv`` logger.

``example-stripes``: three procedurally drawn classes (horizontal stripes, vertical stripes,
checkerboard) in random colours. Every image is drawn from a generator seeded by (seed, split,
index), so the data is identical across runs and processes and needs no files. Recipe options:
``size`` (images per split, default 60), ``image_size`` (pixels per side, default 32) and ``seed``
(default 0).

``example-balanced``: tracer's classification task (same training texts, zero-shot and trained
heads, same ``[task]`` keys) with one more metric, ``balanced_accuracy`` (the mean over classes of
each class's recall), declared as the task's headline metric through
:class:`tracer_cli.sdk.TaskMetrics`, so run summaries, ``tracer eval`` tables and gates
(``--fail-under avg_ood_balanced_accuracy=0.6``) use it. Its factory also declares a capability,
``resume_free_keys``: like classification, a resumed run may change its evaluation prompts.

``example-csv``: a logger (``run.loggers = ["example-csv"]``) that appends what tracer logs to a
CSV file in the run directory, one number per row: ``event,step,key,value``. Option in
``[loggers.example-csv]``: ``file`` (default ``example-log.csv``).

tracer finds this module through the ``tracer`` entry-point group declared in pyproject.toml and
calls :func:`tracer_register_datasets`, :func:`tracer_register_tasks` and
:func:`tracer_register_loggers` once each, when its plugin host loads.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from tracer_cli.sdk import DatasetBundle, Options, TaskMetrics, flat_scalars, hookimpl
from tracer_plugins.tasks.classification import ClassificationTask
from tracer_plugins.tasks.classification import make_task as make_classification

CLASSNAMES = ["horizontal stripes", "vertical stripes", "checkerboard"]
TEMPLATES = ["a picture of {}."]
_SPLIT_SEEDS = {"train": 0, "test": 1}


def draw(label: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``image_size`` x ``image_size`` RGB uint8 image of class ``label``."""
    width = int(rng.integers(2, max(3, image_size // 4)))
    first = rng.integers(0, 256, size=3)
    # Push the second colour away from the first so the pattern is always visible.
    second = (first + rng.integers(96, 160, size=3)) % 256
    rows, cols = np.indices((image_size, image_size)) // width
    if label == 0:
        mask = rows % 2 == 0
    elif label == 1:
        mask = cols % 2 == 0
    else:
        mask = (rows + cols) % 2 == 0
    return np.where(mask[..., None], first, second).astype(np.uint8)


class StripesDataset(Dataset):
    """``size`` images, labels cycling through the three classes."""

    def __init__(self, size: int, image_size: int, seed: int, split: str,
                 transform: Callable[[Any], torch.Tensor] | None):
        self.size = size
        self.image_size = image_size
        self.seed = (seed, _SPLIT_SEEDS[split])
        self.transform = transform

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        label = index % len(CLASSNAMES)
        pixels = draw(label, self.image_size, np.random.default_rng((*self.seed, index)))
        if self.transform is None:
            image = torch.from_numpy(pixels).permute(2, 0, 1).float() / 255.0
        else:
            image = self.transform(Image.fromarray(pixels))
        return {"image": image, "label": label}


def make_stripes(spec: dict[str, Any], split: str,
                 transform: Callable[[Any], torch.Tensor] | None) -> DatasetBundle:
    """The dataset factory: ``factory(spec, split, transform) -> DatasetBundle``."""
    if split not in _SPLIT_SEEDS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    table = dict(spec)
    # tracer passes the recipe key path of this table so errors can name e.g. 'data.train.size'.
    opts = Options(table, path=table.pop("_path", "data"))
    size = opts.int("size", default=60, minimum=1)
    image_size = opts.int("image_size", default=32, minimum=4)
    seed = opts.int("seed", default=0, minimum=0)
    opts.done()  # reject unknown (misspelt) keys
    return DatasetBundle(
        dataset=StripesDataset(size, image_size, seed, split, transform),
        classnames=list(CLASSNAMES), templates=list(TEMPLATES),
        info={"source": "example-stripes", "size": size, "image_size": image_size,
              "seed": seed, "split": split})


@hookimpl
def tracer_register_datasets(registry) -> None:
    registry.add("example-stripes", make_stripes)


# --- the example-balanced task --------------------------------------------------------------------

BALANCED_METRICS = TaskMetrics(
    primary="balanced_accuracy",
    columns=("balanced_accuracy", "accuracy", "ece", "n"),
    higher_is_better=frozenset({"balanced_accuracy", "accuracy", "n"}),
    fractions=frozenset({"balanced_accuracy", "accuracy", "ece"}),
    averaged=("balanced_accuracy", "accuracy", "ece"),   # avg_ood_<m> (and id_<m> in tracer eval)
    headers={"balanced_accuracy": "bal. acc %", "accuracy": "acc %", "ece": "ECE", "n": "n"},
    percent=frozenset({"balanced_accuracy", "accuracy"}),
)


def balanced_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the share of their items predicted right."""
    predicted, labels = logits.argmax(dim=1), labels.long()
    recalls = [float((predicted[labels == c] == c).float().mean()) for c in labels.unique()]
    return float(np.mean(recalls))


class BalancedClassificationTask(ClassificationTask):
    """Classification with ``balanced_accuracy`` as its headline metric."""

    name = "example-balanced"
    metrics = BALANCED_METRICS

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # ClassificationTask sets its metrics per instance (from task.headline); this task's
        # declaration must win over that, or its headline would silently be accuracy.
        self.metrics = BALANCED_METRICS

    def evaluate(self, backbone, module, datasets, device, autocast, head=None):
        results = super().evaluate(backbone, module, datasets, device, autocast, head=head)
        for result in results.values():
            result["metrics"] = {
                "balanced_accuracy": balanced_accuracy(result["logits"], result["labels"]),
                **result["metrics"]}
        return results


def make_balanced(options: dict[str, Any]) -> BalancedClassificationTask:
    """The task factory: ``factory(task_section) -> task``; the classification keys apply."""
    base = make_classification(options)  # reads and checks the [task] keys
    return BalancedClassificationTask(base.templates, base.train_templates, base.train_text,
                                      base.classnames)


# A factory capability (tracer_cli.sdk.contracts), read without building the task: the [task] keys a
# resumed run may change. These are classification's, whose keys this task takes.
make_balanced.resume_free_keys = make_classification.resume_free_keys


@hookimpl
def tracer_register_tasks(registry) -> None:
    registry.add("example-balanced", make_balanced)


# --- the example-csv logger -----------------------------------------------------------------------


class CsvLogger:
    """Satisfies :class:`tracer_cli.sdk.Logger`: start, log_scalars, log_eval, finish."""

    def __init__(self, file_name: str):
        self.file_name = file_name
        self.path: Path | None = None

    def _rows(self, rows: list[tuple[Any, ...]]) -> None:
        with open(self.path, "a", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows(rows)

    def start(self, run_dir: Path, recipe: dict[str, Any], resume_step: int | None) -> None:
        self.path = Path(run_dir) / self.file_name
        if resume_step is None or not self.path.is_file():
            self.path.write_text("event,step,key,value\n", encoding="utf-8")
        self._rows([("start", "" if resume_step is None else resume_step, "run",
                     recipe["run"]["name"])])

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self._rows([("train", step, k, v) for k, v in flat_scalars(scalars).items()])

    def log_eval(self, model: str, step: int, metrics: Mapping[str, Mapping[str, Any]],
                 primary: str) -> None:
        self._rows([("eval", step, k, v) for k, v in flat_scalars(metrics, f"{model}/").items()])

    def finish(self, outcome: str) -> None:
        self._rows([("finish", "", "outcome", outcome)])


def make_csv_logger(options: dict[str, Any]) -> CsvLogger:
    """The logger factory: ``factory(options) -> logger``; checks its table, does no I/O."""
    opts = Options(options, path="loggers.example-csv")
    file_name = opts.str("file", default="example-log.csv")
    opts.done()
    return CsvLogger(file_name)


@hookimpl
def tracer_register_loggers(registry) -> None:
    registry.add("example-csv", make_csv_logger)
