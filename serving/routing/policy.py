"""Routing policies: pools in, a decision out. No HTTP, no Ray handles."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from serving.routing.pool_stats import Clock, PoolView


class Reason(StrEnum):
    """Why a request went where it went (a closed set: it labels metrics)."""

    PRIMARY = "primary"  # the preferred pool had headroom
    SPILL_LATENCY = "latency"  # preferred pool's expected latency breaks the SLO
    SPILL_SATURATED = "saturated"  # preferred pool is full (queue at its limit)
    FAILOVER = "failover"  # preferred pool has no healthy replica
    SAMPLE = "sample"  # spilling, yet sent to the preferred pool to re-measure it
    SHED = "shed"  # every pool is saturated


@dataclass(frozen=True)
class Decision:
    """Where one request goes; ``pool`` is None when it is shed."""

    pool: str | None
    reason: Reason


class RoutingPolicy(ABC):
    """Picks a pool for one request from per-pool snapshots."""

    @abstractmethod
    def choose(self, pools: Sequence[PoolView]) -> Decision:
        """``pools`` in order of preference."""

    def on_completed(self, decision: Decision, latency_s: float) -> None:  # optional hook
        return None


class SpilloverPolicy(RoutingPolicy):
    """Preferred pool first; spill to the next when its expected latency breaks the SLO.

    Hysteresis: once spilling starts it lasts at least ``min_spill_s`` and until the
    preferred pool's expected latency is below ``slo_s * (1 - hysteresis)``. While spilling
    for latency, one request per ``sample_s`` still goes to the preferred pool when it has
    an idle slot, so that its latency is measured afresh and traffic comes back once it is
    fast again (a pool nobody sends to would otherwise keep its last, slow, figure).
    """

    def __init__(
        self,
        *,
        slo_s: float,
        hysteresis: float,
        min_spill_s: float,
        clock: Clock,
        sample_s: float = 0.5,
    ) -> None:
        self._slo_s = slo_s
        self._resume_s = slo_s * (1 - hysteresis)
        self._min_spill_s = min_spill_s
        self._sample_s = sample_s
        self._clock = clock
        self._spilling_since: float | None = None
        self._last_sample = -float("inf")

    @property
    def spilling(self) -> bool:
        return self._spilling_since is not None

    def _update_spill_state(self, primary: PoolView, now: float) -> Reason | None:
        """The spill reason while spilling, else None."""
        expected = primary.expected_latency_s()
        if primary.saturated:
            self._spilling_since = self._spilling_since or now
            return Reason.SPILL_SATURATED
        if expected is not None and expected > self._slo_s:
            self._spilling_since = self._spilling_since or now
            return Reason.SPILL_LATENCY
        if self._spilling_since is not None:
            calm = expected is None or expected < self._resume_s
            if calm and now - self._spilling_since >= self._min_spill_s:
                self._spilling_since = None
                return None
            return Reason.SPILL_LATENCY
        return None

    def _room(self, pools: Sequence[PoolView]) -> PoolView | None:
        """The first healthy pool below its own limits, the SLO aside."""
        return next((p for p in pools if p.healthy and not p.saturated), None)

    def _fits(self, pool: PoolView) -> bool:
        """Room left, and a new request there is expected to meet the SLO.

        A pool with no fresh latency fits up to its limits: refusing it work would shed on a
        fresh server with room, and keep a pool nobody sent to unmeasured forever (its old
        figures age out after ``signal_ttl_seconds``, so a slow pool is tried again that
        often). A pool that must not queue says so with ``max_queued_requests: 0``.
        """
        expected = pool.expected_latency_s()
        if expected is None:
            return pool.held == 0 or not pool.saturated
        return not pool.saturated and expected <= self._slo_s

    def _sample_due(self, primary: PoolView, now: float) -> bool:
        if primary.idle_slot and now - self._last_sample >= self._sample_s:
            self._last_sample = now
            return True
        return False

    def admits(self, pools: Sequence[PoolView], *, queue_past_slo: bool = False) -> bool:
        """Whether ``choose`` would route a request now rather than shed it (no state
        changes: the edge check before a body is read)."""
        if any(self._fits(p) for p in pools if p.healthy):
            return True
        return queue_past_slo and self._room(pools) is not None

    def choose(self, pools: Sequence[PoolView], *, queue_past_slo: bool = False) -> Decision:
        """``queue_past_slo``: rather than shed for the SLO, queue where a pool's own limits
        allow (a retry storm, ``serving.routing.storm``)."""
        healthy = [p for p in pools if p.healthy]
        preferred = pools[0]
        if not preferred.healthy:
            fallback = next((p for p in healthy if self._fits(p)), None)
            if fallback is None and queue_past_slo:
                fallback = self._room(healthy)
            if fallback is None:
                return Decision(None, Reason.SHED)
            return Decision(fallback.name, Reason.FAILOVER)
        now = self._clock()
        spill = self._update_spill_state(preferred, now)
        if spill is None:
            return Decision(preferred.name, Reason.PRIMARY)
        if spill is Reason.SPILL_LATENCY and self._sample_due(preferred, now):
            return Decision(preferred.name, Reason.SAMPLE)
        for other in healthy[1:]:
            if self._fits(other):
                return Decision(other.name, spill)
        # Nowhere to spill: the preferred pool if it can still meet the SLO (hysteresis
        # keeps the spill state a little longer than strictly needed), else shed: a quick
        # 503 + Retry-After beats a queue that breaks the SLO for everyone.
        if self._fits(preferred):
            return Decision(preferred.name, Reason.PRIMARY)
        room = self._room(healthy) if queue_past_slo else None
        if room is not None:
            return Decision(room.name, Reason.PRIMARY if room is preferred else spill)
        return Decision(None, Reason.SHED)
