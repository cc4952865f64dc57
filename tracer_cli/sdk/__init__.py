"""The plugin SDK: the one import a tracer plugin needs, public and stable.

A plugin (a backbone, a dataset, a task or a logger; built-in or third-party) imports tracer
only from here, as a pytest plugin imports only ``pytest``::

    from tracer_cli.sdk import DatasetBundle, Options, RecipeError, hookimpl

    @hookimpl
    def tracer_register_datasets(registry):
        registry.add("my-dataset", make_my_dataset)

Every name in ``__all__`` is public and stable: it keeps its name and meaning within a major
version, and a change to it is announced in CHANGELOG.md. Everything else under ``tracer_cli``
(the engine, the run directory, the commands, and the modules these names come from) is internal
and may move without notice; ``tests/test_sdk_boundary.py`` fails when a built-in plugin or the
example plugin imports it. The hooks themselves are documented in
:mod:`tracer_cli.sdk.hookspecs`; the objects below in :mod:`tracer_cli.sdk.contracts`,
:mod:`tracer_cli.sdk.options` and :mod:`tracer_cli.sdk.task_metrics` (the plugin contract, which
lives in this package).

What is here, by kind of plugin:

- every plugin: ``hookimpl`` (the marker of a hook implementation; plugins never import pluggy),
  :class:`Options` (typed reading of the plugin's recipe table, errors that name the key path),
  the errors a factory raises (:class:`UsageError`, :class:`RecipeError` for a bad recipe value,
  :class:`MissingResourceError` for absent files, weights or packages, :class:`RunError` for a
  failure while running), ``require_module`` (import an optional package, or stop with the pip
  command that installs it), and ``MAX_SEED`` (the largest seed a recipe accepts).
- backbones: the :class:`Backbone` protocol, :class:`WeightsBuild` (weights a backbone builds
  itself), :class:`ExportFormat` and :class:`ExportedModel` (``tracer export`` formats a
  backbone declares), the checksum of a file and its ``<file>.sha256`` sidecar (``file_sha256``,
  ``sha_path``, ``recorded_sha``: tracer's one checksum home,
  :mod:`tracer_cli.rundir.checksums`), ``shipped_recipe_text`` (a recipe shipped with tracer),
  ``quiet_pickle_warnings`` and ``unreadable_reason`` (loading a ``torch.save`` file and saying
  why it cannot be read).
- datasets: :class:`DatasetBundle`, :class:`SkippedItem` and ``skipped_item`` (an undecodable
  item, dropped and counted by the engine), ``TEMPLATE_PLACEHOLDERS`` and ``template_problem``.
- tasks: the :class:`Task` protocol, :class:`Pairing`, :class:`TaskMetrics` (what a task
  measures), ``CLASSIFICATION_METRICS``, ``CLASSIFICATION_HEADLINES``, ``classification_spec``,
  ``fill_template``, ``eval_mode``, and the metric functions ``classification_metrics``,
  ``retrieval_metrics`` (with ``RETRIEVAL_KS``), ``vqa_metrics``, ``ece`` and ``softmax``.
- loggers: the :class:`Logger` protocol, ``eval_scalars``, ``flat_params``, ``flat_scalars``,
  ``atomic_write_json``, ``append_metrics`` / ``end_partial_metrics_line`` (the run's
  ``metrics.jsonl``, written by the ``jsonl`` logger), and where a logger keeps its files in the
  run directory, as the run directory declares them: ``logger_folder`` (``tensorboard/``,
  ``wandb/``) and ``tracker_record_path`` (a tracker's run id, ``<name>_run.json``).

Names load on first use (PEP 562), so ``import tracer_cli.sdk`` stays cheap: the recipe loader
and the command line read :mod:`tracer_cli.sdk.options` and :mod:`tracer_cli.sdk.task_metrics`
without importing torch, which only the names that need it pull in.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the same names, for type checkers and editors; __getattr__ loads them
    from tracer_cli import hookimpl
    from tracer_cli.engine.checkpoint import quiet_pickle_warnings, unreadable_reason
    from tracer_cli.engine.modes import eval_mode
    from tracer_cli.errors import MissingResourceError, RecipeError, RunError, UsageError
    from tracer_cli.io import atomic_write_json
    from tracer_cli.results.metrics import (
        RETRIEVAL_KS, classification_metrics, ece, retrieval_metrics, softmax, vqa_metrics)
    from tracer_cli.sdk.host import require_module
    from tracer_cli.recipe import MAX_SEED
    from tracer_cli.recipes import shipped_recipe_text
    from tracer_cli.rundir import (
        append_metrics, end_partial_metrics_line, logger_folder, sha_path, tracker_record_path)
    from tracer_cli.rundir.checksums import file_sha256, recorded_sha
    from tracer_cli.sdk.contracts import (
        CLASSIFICATION_METRICS, TEMPLATE_PLACEHOLDERS, Backbone, DatasetBundle, ExportedModel,
        ExportFormat, Logger, Pairing, SkippedItem, Task, WeightsBuild, eval_scalars,
        fill_template, flat_params, flat_scalars, skipped_item, template_problem)
    from tracer_cli.sdk.options import Options
    from tracer_cli.sdk.task_metrics import (
        CLASSIFICATION_HEADLINES, TaskMetrics, classification_spec)

# Where each public name is defined: the module __getattr__ imports on first use.
_HOMES: dict[str, tuple[str, ...]] = {
    "tracer_cli": ("hookimpl",),
    "tracer_cli.engine.checkpoint": ("quiet_pickle_warnings", "unreadable_reason"),
    "tracer_cli.engine.modes": ("eval_mode",),
    "tracer_cli.errors": ("MissingResourceError", "RecipeError", "RunError", "UsageError"),
    "tracer_cli.io": ("atomic_write_json",),
    "tracer_cli.results.metrics": ("RETRIEVAL_KS", "classification_metrics", "ece",
                                   "retrieval_metrics", "softmax", "vqa_metrics"),
    "tracer_cli.sdk.host": ("require_module",),
    "tracer_cli.recipe": ("MAX_SEED",),
    "tracer_cli.recipes": ("shipped_recipe_text",),
    "tracer_cli.rundir": ("append_metrics", "end_partial_metrics_line", "logger_folder",
                          "sha_path", "tracker_record_path"),
    "tracer_cli.rundir.checksums": ("file_sha256", "recorded_sha"),
    "tracer_cli.sdk.contracts": (
        "CLASSIFICATION_METRICS", "TEMPLATE_PLACEHOLDERS", "Backbone", "DatasetBundle",
        "ExportedModel", "ExportFormat", "Logger", "Pairing", "SkippedItem", "Task",
        "WeightsBuild", "eval_scalars", "fill_template", "flat_params", "flat_scalars",
        "skipped_item", "template_problem"),
    "tracer_cli.sdk.options": ("Options",),
    "tracer_cli.sdk.task_metrics": ("CLASSIFICATION_HEADLINES", "TaskMetrics",
                                    "classification_spec"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [
    # every plugin
    "hookimpl", "Options", "UsageError", "RecipeError", "MissingResourceError", "RunError",
    "require_module", "MAX_SEED",
    # backbones
    "Backbone", "WeightsBuild", "ExportFormat", "ExportedModel", "file_sha256", "sha_path",
    "recorded_sha",
    "shipped_recipe_text", "quiet_pickle_warnings", "unreadable_reason",
    # datasets
    "DatasetBundle", "SkippedItem", "skipped_item", "TEMPLATE_PLACEHOLDERS", "template_problem",
    # tasks
    "Task", "Pairing", "TaskMetrics", "CLASSIFICATION_METRICS", "CLASSIFICATION_HEADLINES",
    "classification_spec", "fill_template", "eval_mode", "classification_metrics",
    "retrieval_metrics", "RETRIEVAL_KS", "vqa_metrics", "ece", "softmax",
    # loggers
    "Logger", "eval_scalars", "flat_params", "flat_scalars", "atomic_write_json",
    "append_metrics", "end_partial_metrics_line", "logger_folder", "tracker_record_path",
]


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}; the plugin SDK's "
                             f"public names are listed in tracer_cli.sdk.__all__")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
