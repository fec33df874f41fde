"""Retry storms: when refusing for the SLO cuts no load, queue instead.

Shedding what would break the SLO protects the rest only if the refused requests go away
for a while (``Retry-After``). Clients that retry at once (many retry loops do) turn every
refusal into another request; the refusals then cost CPU the replicas need, served
requests slow down, the latency estimate rises, more is refused: goodput collapses and
stays collapsed. The sign is refusals outnumbering answers several times over; while it
shows, an ingress stops refusing for the SLO and queues up to the pools' own limits
(``max_queued_requests``), which still bound what is held. Pure state over an injected
clock.
"""

from __future__ import annotations

from serving.routing.pool_stats import Clock

WINDOW_S = 1.0  # refusals and answers are compared over the last one or two of these
HOLD_S = 5.0  # once seen, a storm is assumed to last at least this long
MIN_REFUSALS = 10  # fewer is no storm, whatever the ratio (a burst at start-up)


class StormGuard:
    """Counts this ingress's answers and SLO refusals; says when a storm is on."""

    def __init__(self, *, ratio: float, clock: Clock) -> None:
        self._ratio = ratio  # refusals per answer that mean a storm; 0 never
        self._clock = clock
        self._window_start = clock()
        self._answered = self._refused = 0  # this window
        self._answered_before = self._refused_before = 0  # the one before
        self._until = -float("inf")

    def _roll(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed >= WINDOW_S:
            recent = elapsed < 2 * WINDOW_S  # the window that ended was the last one
            self._answered_before = self._answered if recent else 0
            self._refused_before = self._refused if recent else 0
            self._window_start = now
            self._answered = self._refused = 0

    def answered(self) -> None:
        self._roll(self._clock())
        self._answered += 1

    def refused(self) -> None:
        now = self._clock()
        self._roll(now)
        self._refused += 1
        refused = self._refused + self._refused_before
        answered = self._answered + self._answered_before
        if self._ratio and refused >= MIN_REFUSALS and refused > self._ratio * max(1, answered):
            self._until = now + HOLD_S

    @property
    def active(self) -> bool:
        """Refusing for the SLO now would only feed a retry storm."""
        return self._clock() < self._until
