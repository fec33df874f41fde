"""What the router knows about each pool: health, in-flight requests, recent latency.

State is small and explicit; the clock is injected so tests drive time.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class PoolView:
    """A snapshot of one pool, the input of a routing decision."""

    name: str
    healthy: bool
    inflight: int
    capacity: int  # requests the pool runs at once (replicas x max_ongoing_requests)
    queue_limit: int  # requests it may queue beyond that before it rejects
    service_time_s: float | None  # recent median latency; None before any request

    @property
    def saturated(self) -> bool:
        return self.inflight >= self.capacity + self.queue_limit

    def expected_latency_s(self) -> float | None:
        """Latency a new request would see: service time, plus queueing when full."""
        if self.service_time_s is None:
            return None
        waiting = max(0, self.inflight + 1 - self.capacity)
        return self.service_time_s * (1 + waiting / max(1, self.capacity))


class PoolStats:
    """Live counters of one pool, kept by the ingress."""

    def __init__(
        self, name: str, *, capacity: int, queue_limit: int, window: int, clock: Clock
    ) -> None:
        self.name = name
        self.capacity = capacity
        self.queue_limit = queue_limit
        self.inflight = 0
        self.healthy = True
        self.unhealthy_since: float | None = None
        self._latencies: deque[float] = deque(maxlen=window)
        self._service_s: float | None = None  # median of _latencies, kept up to date
        self._clock = clock

    def started(self) -> None:
        self.inflight += 1

    def finished(self, latency_s: float | None) -> None:
        """A request ended; ``latency_s`` is None when it failed before running."""
        self.inflight = max(0, self.inflight - 1)
        if latency_s is not None:
            self._latencies.append(latency_s)
            # Once per finished request here, not once per decision in view(): every
            # request asks for a view of each pool twice (shed check, then routing).
            self._service_s = statistics.median(self._latencies)

    def mark_unhealthy(self) -> None:
        if self.healthy:
            self.healthy = False
            self.unhealthy_since = self._clock()

    def mark_healthy(self) -> None:
        self.healthy = True
        self.unhealthy_since = None

    def set_capacity(self, capacity: int) -> None:
        self.capacity = max(0, capacity)

    def view(self) -> PoolView:
        return PoolView(
            name=self.name,
            healthy=self.healthy and self.capacity > 0,
            inflight=self.inflight,
            capacity=self.capacity,
            queue_limit=self.queue_limit,
            service_time_s=self._service_s,
        )
