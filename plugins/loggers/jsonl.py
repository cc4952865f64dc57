"""The ``jsonl`` logger: ``metrics.jsonl``, one JSON object per line, always on.

Every record carries ``time`` (Unix seconds) and ``event``: ``train`` (the step's numbers),
``eval`` (the task's headline metric per dataset, ``<dataset>/<primary>``; the full metrics are in
``eval/<model>.json``), and ``checkpoint``, ``resume``, ``bad_data``, ``nonfinite``,
``interrupted`` as the run writes them. ``tracer distill-check --run`` and the benchmarks read it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from tracer_cli.sdk import Options, append_metrics, end_partial_metrics_line, hookimpl


class JsonlLogger:
    """Appends records to ``<run dir>/metrics.jsonl``; a resumed run appends to the same file."""

    def __init__(self) -> None:
        self.run_dir: Path | None = None

    def start(self, run_dir: Path, recipe: dict[str, Any], resume_step: int | None) -> None:
        self.run_dir = Path(run_dir)
        if resume_step is not None:
            end_partial_metrics_line(self.run_dir)

    def log_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        self.log_event({"event": "train", "step": step, **scalars})

    def log_eval(self, model: str, step: int, metrics: Mapping[str, Mapping[str, Any]],
                 primary: str) -> None:
        self.log_event({"event": "eval", "model": model, "step": step,
                        **{f"{name}/{primary}": m.get(primary) for name, m in metrics.items()}})

    def log_event(self, record: dict[str, Any]) -> None:
        if self.run_dir is None:
            raise RuntimeError("the jsonl logger was not started")
        append_metrics(self.run_dir, {"time": round(time.time(), 3), **record})

    def finish(self, outcome: str) -> None:
        """Nothing to close: every record is written and closed as it comes."""


def make_jsonl(options: dict[str, Any]) -> JsonlLogger:
    Options(options, path="loggers.jsonl").done()  # it has no options
    return JsonlLogger()


@hookimpl
def tracer_register_loggers(registry) -> None:
    registry.add("jsonl", make_jsonl)
