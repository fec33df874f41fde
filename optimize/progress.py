"""Progress reporting for long steps: compute code calls a callback, the CLI draws it."""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[str, int, int], None]
"""Called as ``progress(stage, done, total)``; ``total`` 0 means unknown."""


def no_progress(_stage: str, _done: int, _total: int) -> None:
    """A progress callback that reports nothing."""
    return None
