"""Hook specifications: the whole contract between tracer and its plugins.

Every hook receives a *registrar* and adds named factories to it; return values are ignored.
Built-in plugins (package ``tracer_plugins``) use exactly these hooks through the same entry-point
group, ``tracer``, that third-party packages use. Hooks are called once per process, when the
:class:`tracer_cli.sdk.host.PluginHost` loads, with keyword arguments only.
"""

from __future__ import annotations

from tracer_cli import hookspec


@hookspec
def tracer_register_backbones(registry) -> None:
    """Register backbone factories.

    Called once when the plugin host loads. Call ``registry.add(name, factory)`` for each backbone;
    ``name`` is lowercase-kebab (``"openclip"``). ``factory(options: dict)`` receives the recipe's
    ``[model]`` table without ``backbone`` and ``freeze_bn_stats`` (``arch``, ``pretrained`` and
    backbone-specific keys; it must reject keys it does not know with
    :class:`tracer_cli.errors.RecipeError`) and returns an object satisfying
    :class:`tracer_cli.sdk.contracts.Backbone`. The factory may declare capabilities as attributes,
    read without calling it (``resume_free_keys``, ``export_formats``, ``location_archs``,
    ``weights_required``; see :mod:`tracer_cli.sdk.contracts`) and a ``weights_build(options)``
    method returning a :class:`tracer_cli.sdk.contracts.WeightsBuild` (or None) for weights tracer
    must train once before the factory can load them (the engine trains them, then calls the
    factory): the core knows nothing specific to any backbone, built-in or not.
    """


@hookspec
def tracer_register_datasets(registry) -> None:
    """Register dataset factories.

    Called once when the plugin host loads. Call ``registry.add(name, factory)`` for each dataset.
    ``factory(spec: dict, split: str, transform)`` receives the dataset's options from the recipe
    (everything in its table except ``name`` and ``label``), the split (``"train"`` or ``"test"``)
    and the backbone's image transform, and returns a :class:`tracer_cli.sdk.DatasetBundle`.
    Missing files must raise :class:`tracer_cli.errors.MissingResourceError` saying what to provide.
    """


@hookspec
def tracer_register_tasks(registry) -> None:
    """Register task factories.

    Called once when the plugin host loads. Call ``registry.add(name, factory)`` for each task.
    ``factory(task_section: dict)`` receives the recipe's ``[task]`` table without ``name`` and
    returns an object satisfying :class:`tracer_cli.sdk.contracts.Task`: it owns its head, the texts
    paired with training images, and its metrics. A task declares what it reports with a class
    attribute ``metrics = TaskMetrics(...)`` (:class:`tracer_cli.sdk.TaskMetrics`; summaries,
    tables and gates follow it); without one it is read as classification. The factory may declare
    ``resume_free_keys``, the ``[task]`` keys a resumed run may change (classification: its
    evaluation prompts; see :mod:`tracer_cli.sdk.contracts`).
    """


@hookspec
def tracer_register_loggers(registry) -> None:
    """Register experiment loggers (TensorBoard, W&B, MLflow, ...).

    Called once when the plugin host loads. Call ``registry.add(name, factory)`` for each logger.
    A recipe turns loggers on by name with ``run.loggers = ["name", ...]`` and configures them in
    ``[loggers.<name>]`` tables. ``factory(options: dict)`` receives that table (empty when the
    recipe has none) on every process of a run, before any training: it must reject keys it does
    not know with :class:`tracer_cli.errors.RecipeError` (read them with
    :class:`tracer_cli.sdk.options.Options` at path ``loggers.<name>``), raise
    :class:`tracer_cli.errors.MissingResourceError` with the pip command when a package it needs
    is missing (:func:`tracer_cli.sdk.require_module`), and do no I/O. It returns an object
    satisfying :class:`tracer_cli.sdk.contracts.Logger`, which only rank 0 starts and feeds. An
    exception the logger raises during the run is reported once and the logger is switched off;
    the run and ``metrics.jsonl`` go on. A factory may declare ``attach_files`` (see
    :mod:`tracer_cli.sdk.contracts`), with which ``tracer export`` adds the model card to the run's
    tracked run.
    """
