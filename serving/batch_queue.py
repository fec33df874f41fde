"""A replica's own queue: admission by what it holds, deadlines, and batches.

Pure (no asyncio, no ONNX Runtime, no clock of its own): the replica drives it around its
model calls, and the simulator around simulated ones, so both batch and refuse alike.
A replica runs ``slots`` model calls at once, each of up to ``max_batch`` rows of jobs that
can share a call (same variant and input shapes); it holds at most ``queue_limit`` rows
waiting beyond what it runs, and refuses the rest at once, so the pool as a whole never
holds more than its replicas can, whatever number of ingresses send to it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class Entry(Generic[T]):
    """One job waiting in, or running on, a replica."""

    key: Hashable  # jobs with equal keys may share a model call (variant and input shapes)
    rows: int
    deadline: float  # on the queue's clock; past it, the job is dropped, never run
    token: T  # what the driver needs back (a future, a simulated request)
    state: str = field(default="waiting")  # waiting, running, done, cancelled


class BatchQueue(Generic[T]):
    """FIFO of jobs and the model calls that run them."""

    def __init__(self, *, slots: int, max_batch: int, queue_limit: int) -> None:
        if slots < 1 or max_batch < 1 or queue_limit < 0:
            raise ValueError(
                f"slots ({slots}) and max_batch ({max_batch}) must be >= 1 and "
                f"queue_limit ({queue_limit}) >= 0"
            )
        self.slots = slots
        self.max_batch = max_batch
        self.queue_limit = queue_limit
        self.busy = 0  # model calls running
        self.running_rows = 0
        self.waiting_rows = 0
        self._waiting: deque[Entry[T]] = deque()

    @property
    def capacity(self) -> int:
        """Rows the replica runs at once."""
        return self.slots * self.max_batch

    @property
    def held(self) -> int:
        """Rows running or waiting: what the replica reports to every ingress."""
        return self.running_rows + self.waiting_rows

    def admit(self, entry: Entry[T]) -> bool:
        """Queue ``entry``, or refuse it (False) when the replica holds all it may.

        An idle replica takes any job, even one larger than a batch: it could never run
        anywhere otherwise.
        """
        if self.held and self.held + entry.rows > self.capacity + self.queue_limit:
            return False
        self._waiting.append(entry)
        self.waiting_rows += entry.rows
        return True

    def cancel(self, entry: Entry[T]) -> bool:
        """The caller gave up on ``entry``: a waiting job is never run (True when it was
        still waiting)."""
        if entry.state != "waiting":
            return False
        entry.state = "cancelled"
        self.waiting_rows -= entry.rows
        return True

    def take(self, now: float) -> tuple[list[Entry[T]], list[Entry[T]]]:
        """The next model call's jobs (empty when every slot is busy or nothing waits), and
        the jobs whose deadline passed while they waited (dropped, never run).

        The call takes the oldest waiting job and, in arrival order, the later ones that
        share its key, up to ``max_batch`` rows.
        """
        expired: list[Entry[T]] = []
        if self.busy >= self.slots:
            return [], expired
        batch: list[Entry[T]] = []
        rows = 0
        kept: deque[Entry[T]] = deque()
        while self._waiting:
            entry = self._waiting.popleft()
            if entry.state != "waiting":
                continue
            if entry.deadline < now:
                entry.state = "done"
                self.waiting_rows -= entry.rows
                expired.append(entry)
            elif not batch or (entry.key == batch[0].key and rows + entry.rows <= self.max_batch):
                batch.append(entry)
                rows += entry.rows
            else:
                kept.append(entry)
        self._waiting = kept
        if batch:
            for entry in batch:
                entry.state = "running"
            self.busy += 1
            self.waiting_rows -= rows
            self.running_rows += rows
        return batch, expired

    def drain(self) -> list[Entry[T]]:
        """Every job still waiting, removed (the replica is gone: none will run)."""
        waiting = [e for e in self._waiting if e.state == "waiting"]
        for entry in waiting:
            entry.state = "cancelled"
        self._waiting.clear()
        self.waiting_rows = 0
        return waiting

    def done(self, batch: list[Entry[T]]) -> None:
        """A model call ended (whatever its outcome): its slot is free again."""
        self.busy -= 1
        for entry in batch:
            entry.state = "done"
            self.running_rows -= entry.rows
