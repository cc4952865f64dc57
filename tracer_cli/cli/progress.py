"""Reporters for the terminal: a rich progress bar with live values, or plain log lines."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tracer_cli.cli.common import plain_output, stderr_console
from tracer_cli.events import PlainReporter, Reporter


class RichReporter(Reporter):
    """One progress bar per running task, live loss / lr / KL / img/s, notices above the bars."""

    def __init__(self, console: Console):
        self.console = console
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[live]}"),
            console=console, transient=False)
        self._tasks: dict[str, Any] = {}
        self._started = False
        self._last_rate: str = ""

    def notice(self, message: str) -> None:
        self.console.print(message)

    def start(self, task: str, total: int, completed: int = 0) -> None:
        if not self._started:
            self.progress.start()
            self._started = True
        self._tasks[task] = self.progress.add_task(task, total=total, completed=completed, live="")

    def advance(self, task: str, completed: int, fields: dict[str, Any] | None = None) -> None:
        live = " ".join(f"{k}={v:.4g}" for k, v in (fields or {}).items()
                        if isinstance(v, (int, float)))
        self.progress.update(self._tasks[task], completed=completed,
                             live=f"{live} {self._last_rate}".strip())

    def log(self, task: str, record: dict[str, Any]) -> None:
        if "img_per_s" in record:
            self._last_rate = f"img/s={record['img_per_s']:.0f}"

    def finish(self, task: str) -> None:
        self.progress.remove_task(self._tasks.pop(task))
        if not self._tasks and self._started:
            self.progress.stop()
            self._started = False


def make_reporter() -> Reporter:
    if plain_output():
        return PlainReporter()
    return RichReporter(stderr_console())
