"""The run's loggers: ``metrics.jsonl`` (always) and the recipe's ``run.loggers``, fed together.

Loggers are plugins (:func:`tracer_cli.sdk.hookspecs.tracer_register_loggers`). They are built and
checked on every process before any work is done (unknown names, bad ``[loggers.<name>]`` keys and
missing packages stop the run with exit 2), and started and fed on rank 0 only. The ``jsonl``
logger writes ``metrics.jsonl``; it is not isolated, so a run that cannot write its metrics fails
as before. Any other logger that raises is reported once and switched off: training goes on.

After a run, :func:`attach_to_tracked_runs` hands files made from it (``tracer export``'s model
card) to the tracked runs of its loggers, through their factories' ``attach_files`` capability.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from tracer_cli.rundir.lock import lock_holder
from tracer_cli.errors import Interrupted, RecipeError, UsageError
from tracer_cli.sdk.host import declared, get_host
from tracer_cli.recipe import Recipe
from tracer_cli.sdk.contracts import Logger, Outcome

JSONL = "jsonl"
# Keys of a metrics.jsonl train record that are not the step's numbers.
_TRAIN_META = ("event", "step")


class RunLoggers:
    """``metrics.jsonl`` first, then the optional loggers, in ``run.loggers`` order."""

    def __init__(self, jsonl: Logger, optional: list[tuple[str, Logger]]):
        self.jsonl = jsonl
        self.active = list(optional)
        self.started = False
        self._notice: Callable[[str], None] = lambda message: None

    def start(self, run_dir: Path, recipe: Recipe, resume_step: int | None,
              notice: Callable[[str], None]) -> None:
        self._notice, self.started = notice, True
        tables = recipe.to_dict()
        self.jsonl.start(run_dir, tables, resume_step)
        self._each("start", run_dir, tables, resume_step)

    def log(self, record: dict[str, Any]) -> None:
        """One metrics.jsonl record: a train record's numbers go to ``log_scalars``, every other
        record to ``log_event`` (of loggers that have one)."""
        if record.get("event") == "train":
            scalars = {k: v for k, v in record.items() if k not in _TRAIN_META}
            self.jsonl.log_scalars(record["step"], scalars)
            self._each("log_scalars", record["step"], scalars)
        else:
            self.jsonl.log_event(record)
            self._each("log_event", record)

    def log_eval(self, model: str, step: int, metrics: dict[str, dict[str, Any]],
                 primary: str) -> None:
        self.jsonl.log_eval(model, step, metrics, primary)
        self._each("log_eval", model, step, metrics, primary)

    def log_files(self, run_dir: Path, paths: list[Path]) -> None:
        """The run's result files, to the loggers that keep artifacts (``log_files``)."""
        self._each("log_files", run_dir, paths)

    def finish(self, outcome: Outcome) -> None:
        if not self.started:
            return
        self.started = False
        self.jsonl.finish(outcome)
        self._each("finish", outcome)

    @contextlib.contextmanager
    def closing(self) -> Iterator[RunLoggers]:
        """Finish the started loggers with the outcome of the block: completed, interrupted (a
        signal, with a checkpoint) or failed (any other exception, which is re-raised)."""
        try:
            yield self
        except Interrupted:
            self.finish("interrupted")
            raise
        except BaseException:
            self.finish("failed")
            raise
        self.finish("completed")

    def _each(self, method: str, *args: Any) -> None:
        for name, logger in list(self.active):
            call = getattr(logger, method, None)
            if call is None:
                continue
            try:
                call(*args)
            except Exception as exc:  # noqa: BLE001 - a tracker must never end the run
                self._drop(name, logger, method, exc)

    def _drop(self, name: str, logger: Logger, method: str, exc: Exception) -> None:
        self.active.remove((name, logger))
        self._notice(f"warning: logger '{name}' failed in {method} ({type(exc).__name__}: "
                     f"{exc}); it is off for the rest of this run, which goes on "
                     "(metrics.jsonl is not affected)")
        if method != "finish":
            with contextlib.suppress(Exception):  # let it close its files; it has said enough
                logger.finish("failed")


def build_loggers(recipe: Recipe) -> RunLoggers:
    """The recipe's loggers, built and checked (no I/O yet): unknown names, bad
    ``[loggers.<name>]`` keys and missing packages are usage errors naming the key."""
    registry = get_host().loggers
    if JSONL not in registry:
        raise UsageError(f"logger '{JSONL}' (metrics.jsonl, which every run writes) is not "
                         "registered; do not block its plugin with TRACER_DISABLE_PLUGINS")
    built = {}
    for name in [JSONL, *recipe.run.loggers]:
        if name in built:
            continue  # "jsonl" in run.loggers: it is on anyway
        try:
            entry = registry.get(name)
        except UsageError as exc:
            raise RecipeError("run.loggers", str(exc)) from None
        built[name] = entry.factory(dict(recipe.loggers.get(name, {})))
    jsonl = built.pop(JSONL)
    return RunLoggers(jsonl, list(built.items()))


def attach_to_tracked_runs(run_dir: Path, loggers: list[str], paths: list[Path], folder: str,
                           notice: Callable[[str], None]) -> dict[str, str]:
    """Attach ``paths`` (files made from the finished run in ``run_dir``, such as its model card)
    to the tracked runs of ``loggers`` (the run's ``run.loggers``), in a folder or under a kind
    called ``folder``: each logger whose factory declares ``attach_files`` (see
    :mod:`tracer_cli.sdk.contracts`) finds its tracked run from what it kept in the run directory.

    Returns logger name -> where the files went (loggers that kept no run there are left out).
    Nothing here fails the caller: a tracker that cannot be reached, a missing package, or a run
    still being trained (its writer lock is held) is one ``notice`` line each."""
    attachers = [(name, attach) for name in dict.fromkeys(loggers)
                 if (attach := declared("loggers", name, "attach_files")) is not None]
    if not attachers or not paths:
        return {}
    holder = lock_holder(run_dir)
    if holder is not None:
        notice(f"warning: {folder} not attached to the tracked runs of {run_dir} "
               f"({', '.join(n for n, _ in attachers)}): the run is being written by another "
               f"tracer process ({holder}); try again once it has finished")
        return {}
    attached = {}
    for name, attach in attachers:
        try:
            where = attach(run_dir, list(paths), folder)
        except Exception as exc:  # noqa: BLE001 - the caller's own files are complete
            notice(f"warning: {folder} not attached to the run's '{name}' tracked run "
                   f"({type(exc).__name__}: {_one_line(exc)}); what was written is complete")
            continue
        if where:
            attached[name] = where
    return attached


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 300 else text[:297] + "..."
