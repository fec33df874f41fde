"""One model's routing decisions, without IO: the policy picks a pool, the pool's stats pick
a replica. The router core (``serving.routing.core``), which the ingress and the simulator
both drive, decides with it, so what the simulator shows at scale is what the ingress does.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from serving.config import RoutingSettings
from serving.routing.fallback import FallbackPolicy
from serving.routing.policy import Decision, RoutingPolicy, SpilloverPolicy
from serving.routing.pool_stats import Clock, PoolStats, PoolView
from serving.routing.storm import StormGuard


@dataclass(frozen=True)
class Target:
    """Where one attempt at a request goes."""

    pool: str
    replica: str  # ``pool_stats.ANY_REPLICA``: no replica known yet, Serve's choice
    decision: Decision


class Dispatcher:
    """The pools of one model in order of preference, their stats, the policy and the
    retry-storm guard."""

    def __init__(
        self,
        order: Sequence[str],
        stats: Mapping[str, PoolStats],
        policy: RoutingPolicy,
        storm: StormGuard,
    ) -> None:
        self.order = list(order)
        self.stats = dict(stats)
        self.policy = policy
        self.storm = storm

    def views(self, lost: set[str] | None = None, full: set[str] | None = None) -> list[PoolView]:
        """Snapshots for one decision; pools this request found lost or full are shown so."""
        views = []
        for pool in self.order:
            view = self.stats[pool].view()
            if lost and pool in lost:
                view = dataclasses.replace(view, healthy=False)
            elif full and pool in full:
                view = dataclasses.replace(view, held=view.capacity + view.queue_limit)
            views.append(view)
        return views

    def admits(self) -> bool:
        """Whether a new request would be routed rather than shed (no state changes)."""
        return self.policy.admits(self.views(), queue_past_slo=self.storm.active)

    def target(self, rows: int, lost: set[str], full: set[str]) -> Target | None:
        """Where to send a request of ``rows`` next; None to shed it. Pools whose replicas
        all lack room join ``full`` (they refuse this request, whatever their total says)."""
        while True:
            decision = self.policy.choose(self.views(lost, full), queue_past_slo=self.storm.active)
            if decision.pool is None:
                return None
            replica = self.stats[decision.pool].pick(rows, decision.within_s)
            if replica is not None:
                return Target(decision.pool, replica, decision)
            full.add(decision.pool)


def build_policy(routing: RoutingSettings, clock: Clock) -> RoutingPolicy:
    """The policy ``routing.policy`` names, made from ``routing``."""
    if routing.policy == "fallback":
        return FallbackPolicy()
    return SpilloverPolicy(
        slo_s=routing.slo_p99_seconds,
        hysteresis=routing.spill_hysteresis,
        min_spill_s=routing.min_spill_seconds,
        sample_s=routing.sample_seconds,
        clock=clock,
    )


def build_dispatcher(
    order: Sequence[str], stats: Mapping[str, PoolStats], routing: RoutingSettings, clock: Clock
) -> Dispatcher:
    """The policy and storm guard made from ``routing``, around ``stats``: the one wiring
    the ingress and the simulator share."""
    return Dispatcher(
        order,
        stats,
        build_policy(routing, clock),
        StormGuard(ratio=routing.retry_storm_ratio, clock=clock),
    )
