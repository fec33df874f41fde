"""Terminal output for the CLI: progress bars on stderr, results on stdout."""

from __future__ import annotations

import sys
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

# Off a terminal (pipes, CI logs) rich would cut tables at 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True)


class ProgressBar:
    """A ``ProgressFn`` drawing one rich bar per stage on stderr; silent when quiet or no TTY."""

    def __init__(self, *, quiet: bool = False) -> None:
        self._enabled = not quiet and sys.stderr.isatty()
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=stderr,
            transient=False,
            disable=not self._enabled,
        )
        self._tasks: dict[str, TaskID] = {}
        self._current: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if not self._enabled:
            return
        if stage not in self._tasks:
            if self._current is not None:
                self._finish(self._current)
            self._tasks[stage] = self._progress.add_task(stage, total=total or None)
            self._current = stage
        self._progress.update(self._tasks[stage], completed=done, total=total or None)

    def _finish(self, stage: str) -> None:
        task = self._tasks[stage]
        total = self._progress.tasks[task].total
        self._progress.update(task, completed=total if total else 1, total=total or 1)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and self._current is not None:
            self._finish(self._current)
        self._progress.stop()
