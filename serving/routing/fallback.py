"""The fallback policy: the first healthy pool whose replicas have room takes the request,
whatever its latency; shed only when every pool is full.

What a Ray Serve user builds by hand (one deployment per pool, the next one called when
the first answers back-pressure): no SLO, no spill state. Chosen with ``routing.policy:
fallback``; Sluiceway's default is ``spillover`` (``serving.routing.policy``).
"""

from __future__ import annotations

from collections.abc import Sequence

from serving.routing.policy import Decision, Reason, RoutingPolicy
from serving.routing.pool_stats import PoolView


class FallbackPolicy(RoutingPolicy):
    """Preferred pool while it has room by its own limits, else the next that has."""

    def _first_with_room(self, pools: Sequence[PoolView]) -> PoolView | None:
        return next((p for p in pools if p.healthy and not p.saturated), None)

    def choose(self, pools: Sequence[PoolView], *, queue_past_slo: bool = False) -> Decision:
        pool = self._first_with_room(pools)
        if pool is None:
            return Decision(None, Reason.SHED)
        if pool is pools[0]:
            return Decision(pool.name, Reason.PRIMARY)
        reason = Reason.SPILL_SATURATED if pools[0].healthy else Reason.FAILOVER
        return Decision(pool.name, reason)

    def admits(self, pools: Sequence[PoolView], *, queue_past_slo: bool = False) -> bool:
        return self._first_with_room(pools) is not None
