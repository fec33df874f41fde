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
    """Where one request goes; ``pool`` is None when it is shed.

    ``within_s``: the latency the request must be expected to meet on the replica it gets
    (``PoolStats.pick``); None for a sample or a request queued past the SLO, which only
    need room.
    """

    pool: str | None
    reason: Reason
    within_s: float | None = None


class RoutingPolicy(ABC):
    """Picks a pool for one request from per-pool snapshots (``pools`` in order of
    preference); knows nothing about HTTP or Ray. The dispatcher calls exactly these."""

    @abstractmethod
    def choose(self, pools: Sequence[PoolView], *, queue_past_slo: bool = False) -> Decision:
        """Where the request goes, or ``Decision(None, SHED)``. ``queue_past_slo``: a retry
        storm is on (``serving.routing.storm``): queue where pools' own limits allow rather
        than shed for the SLO."""

    @abstractmethod
    def admits(self, pools: Sequence[PoolView], *, queue_past_slo: bool = False) -> bool:
        """Whether ``choose`` would route a request now rather than shed it, changing no
        state (asked before a request's body is read)."""

    @property
    def spilling(self) -> bool:
        """Whether requests are going past the preferred pool by choice (reports)."""
        return False


class SpilloverPolicy(RoutingPolicy):
    """Preferred pool first; spill to the next when it is full or its expected latency
    breaks the SLO; shed when no pool can serve a request within the SLO and none has a
    free slot (a request that would start at once is served, whatever its estimate).

    Spilling is a state with hysteresis: it starts when the preferred pool cannot take a
    request and lasts until it has taken every request for ``min_spill_s``. While it lasts,
    the preferred pool still takes every request it can serve within
    ``slo_s * (1 - hysteresis)`` (the cheaper pool stays busy; only the excess spills, and
    an estimate hovering at the SLO does not flip requests back and forth), and, when its
    latency alone broke the SLO, one request per ``sample_s`` in an idle slot, so that its
    latency is measured afresh and traffic comes back once it is fast again (a pool nobody
    sends to would otherwise keep its last, slow, figure).
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
        self._last_spill = -float("inf")  # when the preferred pool last could not take one
        self._last_sample: dict[str, float] = {}  # pool -> when a sample request last went

    @property
    def spilling(self) -> bool:
        return self._clock() - self._last_spill < self._min_spill_s

    def _room(self, pools: Sequence[PoolView]) -> PoolView | None:
        """The first healthy pool below its own limits, the SLO aside."""
        return next((p for p in pools if p.healthy and not p.saturated), None)

    @staticmethod
    def _idle(pools: Sequence[PoolView]) -> PoolView | None:
        """The first healthy pool with a free slot: a request there waits behind nothing,
        so it is served whatever the estimate says (shedding it would protect no one)."""
        return next((p for p in pools if p.healthy and p.idle_slot), None)

    def _was_slow(self, pool: PoolView) -> bool:
        """Nothing fresh is known, and the last figure known broke the SLO by itself."""
        last = pool.last_service_time_s
        return pool.service_time_s is None and last is not None and last > self._slo_s

    def _fits(self, pool: PoolView, bound_s: float, *, sample: bool = False) -> bool:
        """Room left, and a new request there is expected to finish within ``bound_s``.

        A pool with no fresh latency fits up to its limits: refusing it work would shed on a
        fresh server with room. But one whose last known latency broke the SLO gets only a
        sample request per ``sample_s`` (when ``sample``, in an idle slot): its old figures
        age out after ``signal_ttl_seconds``, and filling it up again each time they do would
        break the SLO for all it holds. A pool that must not queue says so with
        ``max_queued_requests: 0``.
        """
        expected = pool.expected_latency_s()
        if expected is not None:
            return not pool.saturated and expected <= bound_s
        if self._was_slow(pool):
            return sample and self._sample_due(pool, self._clock())
        return pool.held == 0 or not pool.saturated

    def _sample_due(self, pool: PoolView, now: float) -> bool:
        last = self._last_sample.get(pool.name, -float("inf"))
        if pool.idle_slot and now - last >= self._sample_s:
            self._last_sample[pool.name] = now
            return True
        return False

    def admits(self, pools: Sequence[PoolView], *, queue_past_slo: bool = False) -> bool:
        """Whether ``choose`` would route a request now rather than shed it (no state
        changes: the edge check before a body is read)."""
        healthy = [p for p in pools if p.healthy]
        if any(self._fits(p, self._slo_s) or self._was_slow(p) for p in healthy):
            return True  # a pool that was slow may take a sample: ``choose`` decides
        if self._idle(healthy) is not None:
            return True
        return queue_past_slo and pools[0].healthy and self._room(pools) is not None

    def choose(self, pools: Sequence[PoolView], *, queue_past_slo: bool = False) -> Decision:
        """``pools`` in order of preference. ``queue_past_slo``: rather than shed for the
        SLO, queue where a pool's own limits allow (a retry storm, see
        ``serving.routing.storm``); not while failing over, when refusals come from a lost
        pool, not from clients retrying at once."""
        slo = self._slo_s
        healthy = [p for p in pools if p.healthy]
        preferred = pools[0]
        if not preferred.healthy:
            fallback = next((p for p in healthy if self._fits(p, slo, sample=True)), None)
            if fallback is not None:
                return Decision(fallback.name, Reason.FAILOVER, slo)
            idle = self._idle(healthy)
            if idle is not None:
                return Decision(idle.name, Reason.FAILOVER)
            return Decision(None, Reason.SHED)
        now = self._clock()
        bound = self._resume_s if self.spilling else slo
        if self._fits(preferred, bound):
            return Decision(preferred.name, Reason.PRIMARY, bound)
        self._last_spill = now
        if preferred.saturated:
            reason = Reason.SPILL_SATURATED
        else:
            reason = Reason.SPILL_LATENCY
            if self._sample_due(preferred, now):
                return Decision(preferred.name, Reason.SAMPLE)
        for other in healthy[1:]:
            if self._fits(other, slo, sample=True):
                return Decision(other.name, reason, slo)
        # Nowhere to spill: the preferred pool if it can still meet the SLO itself (the
        # hysteresis bound is stricter), else shed: a quick 503 + Retry-After beats a queue
        # that breaks the SLO for everyone.
        if bound < slo and self._fits(preferred, slo):
            return Decision(preferred.name, Reason.PRIMARY, slo)
        idle = self._idle(healthy)
        if idle is not None:  # work-conserving: a free slot is never refused
            return Decision(idle.name, Reason.PRIMARY if idle is preferred else reason)
        room = self._room(healthy) if queue_past_slo else None
        if room is not None:
            return Decision(room.name, Reason.PRIMARY if room is preferred else reason)
        return Decision(None, Reason.SHED)
