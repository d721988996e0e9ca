"""The progress bar (rich, on stderr) shown while the benchmark runs."""

from __future__ import annotations

import asyncio
import time
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)


class Step:
    """One bar: a measurement or a setup phase."""

    def __init__(self, progress: Progress, task: TaskID) -> None:
        self._progress = progress
        self._task = task

    def advance(self, amount: float = 1.0) -> None:
        self._progress.advance(self._task, amount)

    def update(
        self,
        *,
        completed: float | None = None,
        total: float | None = None,
        description: str | None = None,
    ) -> None:
        self._progress.update(self._task, completed=completed, total=total, description=description)

    async def tick(self, seconds: float) -> None:
        """Fill the bar (total = seconds) as time passes; returns after `seconds`."""
        started = time.monotonic()
        self.update(completed=0, total=seconds)
        while (elapsed := time.monotonic() - started) < seconds:
            self.update(completed=elapsed)
            await asyncio.sleep(min(0.25, seconds - elapsed))
        self.update(completed=seconds)

    def done(self) -> None:
        task = self._progress.tasks[self._task]
        self._progress.update(self._task, completed=task.total or 1, total=task.total or 1)


class Ui:
    def __init__(self, console: Console) -> None:
        self.console = console
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}", style="bold"),
            BarColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=console,
        )

    def __enter__(self) -> Ui:
        self._progress.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def step(self, description: str, total: float | None = 1.0) -> Step:
        return Step(self._progress, self._progress.add_task(description, total=total))

    def log(self, message: str) -> None:
        self._progress.console.log(message)
