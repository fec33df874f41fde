"""Terminal output for the CLI: progress bars on stderr, results on stdout."""

from __future__ import annotations

import sys
import time
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
    TimeRemainingColumn,
)

# Off a terminal (pipes, CI logs) rich would cut tables at 80 columns.
stdout = Console(width=None if sys.stdout.isatty() else 200)
stderr = Console(stderr=True)


LINE_EVERY_S = 30.0
ETA_AFTER_S = 5.0  # before that, a rate read off a stage's first steps misleads


class ProgressLines:
    """A ``ProgressFn`` printing plain lines on stderr: a stage's start and end, and where it
    stands every ``every_s`` with the time it is likely to take still (logs, background)."""

    def __init__(self, *, prefix: str = "", every_s: float = LINE_EVERY_S) -> None:
        self._prefix = prefix
        self._every_s = every_s
        self._stage: str | None = None
        self._started = self._printed = 0.0
        self._last = (0, 0)

    def _print(self, stage: str, done: int, total: int, now: float) -> None:
        elapsed = now - self._started
        where = f" {done}/{total}" if total else ""
        left = ""
        if total and 0 < done < total and elapsed >= ETA_AFTER_S:
            left = f", about {_duration(elapsed / done * (total - done))} left"
        print(f"{self._prefix}{stage}{where} ({_duration(elapsed)}{left})", file=sys.stderr)
        sys.stderr.flush()
        self._printed = now

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = time.monotonic()
        if stage != self._stage:
            self.close()
            self._stage, self._started = stage, now
            self._print(stage, done, total, now)
        elif now - self._printed >= self._every_s:
            self._print(stage, done, total, now)
        self._last = (done, total)

    def close(self) -> None:
        """End the current stage; a long one gets a line saying how long it took."""
        if self._stage is not None:
            took = time.monotonic() - self._started
            if took >= self._every_s:
                print(f"{self._prefix}{self._stage}: done in {_duration(took)}", file=sys.stderr)
            self._stage = None


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class ProgressBar:
    """A ``ProgressFn`` drawing one rich bar per stage on stderr (with the time a stage is
    likely to take still); plain lines instead with ``lines`` or off a TTY (a pipe, a CI
    log: a bar would not show there, and a long build would say nothing); silent when
    quiet."""

    def __init__(self, *, quiet: bool = False, lines: bool = False) -> None:
        lines = lines or not sys.stderr.isatty()
        self._lines = ProgressLines() if lines and not quiet else None
        self._enabled = not quiet and not lines
        self._progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=stderr,
            transient=False,
            disable=not self._enabled,
        )
        self._tasks: dict[str, TaskID] = {}
        self._current: str | None = None

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._lines is not None:
            self._lines(stage, done, total)
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
        if self._lines is not None and exc_type is None:
            self._lines.close()
