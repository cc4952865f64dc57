"""The ``tensorboard`` logger: TensorBoard event files through ``torch.utils.tensorboard``.

Needs the ``tensorboard`` package (``pip install 'tracer-clip[tensorboard]'``). Options in
``[loggers.tensorboard]``: ``log_dir`` (default: the run directory's ``tensorboard/``, so
``tensorboard --logdir runs`` shows every run side by side) and ``flush_secs`` (30: how often
pending events are written). Tags: ``train/<key>`` for every number of a metrics.jsonl train
record, ``eval/<model>/<dataset>/<metric>`` for every evaluation metric (counts and standard
errors stay in ``eval/*.json``). The resolved recipe is the run's hyperparameters (the HParams
dashboard; keys ``train.lr``, ..., lists as JSON). A resumed run hides the events it logged after
its checkpoint's step (TensorBoard's ``purge_step``), so the curves do not double back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

from tracer_cli.sdk import (
    Options, eval_scalars, flat_params, flat_scalars, hookimpl, logger_folder, require_module)

INSTALL = "'tracer-clip[tensorboard]' (or: pip install tensorboard)"


class TensorBoardLogger:
    """One ``SummaryWriter`` for the run."""

    def __init__(self, log_dir: Path | None, flush_secs: int):
        self.log_dir, self.flush_secs = log_dir, flush_secs
        self.writer = None

    def start(self, run_dir: Path, recipe: dict[str, Any], resume_step: int | None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        log_dir = self.log_dir or logger_folder(run_dir, "tensorboard")
        # purge_step: events at or after it, left by the attempt that stopped, are hidden.
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(str(log_dir), purge_step=purge, flush_secs=self.flush_secs)
        if resume_step is None:  # a resumed run keeps the hyperparameters it logged
            self._log_hparams(recipe)

    def _log_hparams(self, recipe: dict[str, Any]) -> None:
        """The recipe as one HParams session in the run's own event files (``add_hparams``
        would start another run folder beside them)."""
        from torch.utils.tensorboard.summary import hparams

        values = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v)
                  for k, v in flat_params(recipe).items()}
        for summary in hparams(values, {}):
            self.writer.file_writer.add_summary(summary)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        for key, value in flat_scalars(scalars, "train/").items():
            self.writer.add_scalar(key, value, step)

    def log_eval(self, model: str, step: int, metrics: Mapping[str, Mapping[str, Any]],
                 primary: str) -> None:
        for key, value in eval_scalars(metrics, f"eval/{model}/").items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()  # evaluations are rare and worth seeing at once

    def finish(self, outcome: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def make_tensorboard(options: dict[str, Any]) -> TensorBoardLogger:
    opts = Options(options, path="loggers.tensorboard")
    log_dir = opts.path("log_dir", default=None)
    flush_secs = opts.int("flush_secs", default=30, minimum=1)
    opts.done()
    # torch.utils.tensorboard raises ImportError without the tensorboard package.
    require_module("tensorboard", "logger 'tensorboard' (run.loggers)", INSTALL)
    require_module("torch.utils.tensorboard", "logger 'tensorboard' (run.loggers)", INSTALL)
    return TensorBoardLogger(log_dir, flush_secs)


@hookimpl
def tracer_register_loggers(registry) -> None:
    registry.add("tensorboard", make_tensorboard)
