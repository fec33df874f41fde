"""Per-model routing for the ingress: the core's decisions (``serving.routing.core``)
awaited over a transport (``serving.routing.ray_transport`` in the cluster; any object with
its two methods in tests). Everything above the transport, deciding, retrying, taking out,
accounting, is the core's, shared with the simulator.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Mapping
from typing import Protocol

from serving.calls import Job, Reply, Tensors
from serving.config import ModelConfig, PoolConfig
from serving.metrics import IngressMetrics
from serving.routing.core import (
    Attempt,
    PoolFull,
    PoolLimits,
    ReplicaGone,
    ReplicaUnreachable,
    RouteEvents,
    RouterCore,
)
from serving.routing.policy import Reason
from serving.routing.pool_stats import Clock, PoolStats, PoolView, ReplicaState
from serving.routing.variants import VariantSplitter

# A request cancelled this close to its deadline timed out (vs. a client that went away).
DEADLINE_SLACK_S = 0.05


class Transport(Protocol):
    """How an attempt reaches a replica, and how a replica is asked whether it is alive."""

    async def call(self, pool: str, replica: str, job: Job, attempt: Attempt) -> Reply:
        """Send ``job``; set ``attempt.abort`` to a way of calling it off (which makes this
        raise ``ReplicaGone``). Raises ``PoolFull`` on back-pressure, ``ReplicaUnreachable``
        when the replica is gone, ``ModelError`` when the call failed otherwise."""
        ...

    async def health(self, pool: str, replica: str | None, timeout_s: float) -> str | None:
        """The id of the replica that answered a health call (``replica``, or any of the
        pool's), None if none did within ``timeout_s``."""
        ...


@dataclasses.dataclass(frozen=True)
class Routed:
    """A served request: outputs, and where they came from."""

    outputs: Tensors
    pool: str
    variant: str
    reason: Reason
    dispatch_s: float = 0.0  # from sending to the replica until its answer was back
    replica_s: float = 0.0  # spent inside the replica (queue wait and model call)
    artifact: str = ""  # the artifact that ran it there (int8, student-int8, ...)


def pool_limits(pool: PoolConfig) -> PoolLimits:
    """What one replica of ``pool`` holds, as the router counts it."""
    return PoolLimits(
        capacity=pool.rows_per_replica,
        queue=pool.max_queued_requests,
        expected=pool.replicas.min,
    )


class MetricEvents:
    """The core's events as the ingress's metrics."""

    def __init__(self, metrics: IngressMetrics, model: str) -> None:
        self._metrics = metrics
        self._model = model

    def retried(self, pool: str, reason: str) -> None:
        self._metrics.retries.inc(tags={"model": self._model, "pool": pool, "reason": reason})

    def shed(self) -> None:
        return None  # the ingress counts the 503 it answers (Ingress._record)

    def spilled(self, from_pool: str, to_pool: str, reason: str) -> None:
        tags = {"model": self._model, "from_pool": from_pool, "to_pool": to_pool}
        self._metrics.spillovers.inc(tags=tags | {"reason": reason})

    def stalled(self, pool: str) -> None:
        self._metrics.stalls.inc(tags={"model": self._model, "pool": pool})

    def pool_lost(self, pool: str) -> None:
        return None  # Serve's replica health metrics say it; the core logs it


class ModelRouter:
    """Routes one model's requests over its pools and their replicas."""

    def __init__(
        self,
        name: str,
        config: ModelConfig,
        pools: Mapping[str, PoolConfig],
        transport: Transport,
        events: RouteEvents,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.transport = transport
        self._wall_clock = wall_clock
        self.core = RouterCore(
            name,
            config.routing.pools,
            {p: pool_limits(pools[p]) for p in config.routing.pools},
            config.routing,
            deadline_s=config.limits.deadline_seconds,
            clock=clock,
            events=events,
            rng=rng,
        )
        self.order = self.core.order
        self.stats: dict[str, PoolStats] = self.core.stats
        self.policy = self.core.policy
        self.splitter = VariantSplitter({n: v.weight for n, v in config.variants.items()})

    def update(self, config: ModelConfig) -> None:
        """New variants or weights (a rollout step); routing and limits stay (a change to
        them restarts the ingress). Pools keep their state."""
        self.config = config
        self.splitter = VariantSplitter({n: v.weight for n, v in config.variants.items()})

    def views(self) -> list[PoolView]:
        """Each pool as this ingress sees it now."""
        return self.core.views()

    # -- the control plane ---------------------------------------------------------------

    def set_running_replicas(
        self, pool: str, running: tuple[str, ...], *, updating: bool = False
    ) -> None:
        self.core.set_running_replicas(pool, running, updating=updating)

    def check_stalls(self) -> None:
        self.core.check_stalls()

    async def probe(self, pool: str) -> bool:
        """Mark ``pool`` healthy again if one of its replicas answers in time."""
        timeout = self.config.routing.health_check_seconds
        answer = await self.transport.health(pool, None, timeout)
        if answer is None:
            return False
        self.core.recovered(pool, answer)
        return True

    async def probe_replica(self, pool: str, replica: str) -> bool:
        """Bring a stalled or lost ``replica`` back if it answers itself, in time."""
        timeout = self.config.routing.health_check_seconds
        if await self.transport.health(pool, replica, timeout) != replica:
            return False
        self.core.recovered(pool, replica)
        return True

    def take_out(self, pool: str, replica: str, state: ReplicaState, why: str) -> None:
        self.core.take_out(pool, replica, state, why)

    # -- requests ------------------------------------------------------------------------

    def refuse_if_full(self) -> None:
        """Shed now, before the request's body is read, when it would be shed anyway."""
        if not self.core.admits():
            raise self.core.shed()

    async def infer(self, variant: str, inputs: Tensors, deadline: float) -> Routed:
        """Route one request (``deadline``: Unix time) until it is answered or refused."""
        core = self.core
        job = Job(variant, inputs, deadline)
        course = core.begin(variant, job.rows, deadline)
        while True:
            attempt = core.next(course)
            try:
                reply = await self.transport.call(attempt.pool, attempt.replica, job, attempt)
            except ReplicaGone:
                core.called_off(attempt)
                continue
            except PoolFull:
                core.backpressure(attempt)
                continue
            except ReplicaUnreachable as exc:
                core.unreachable(attempt, str(exc))
                continue
            except asyncio.CancelledError:
                timed_out = self._wall_clock() >= deadline - DEADLINE_SLACK_S
                core.cancelled(attempt, timed_out=timed_out)
                raise
            finally:
                core.close(attempt)
            latency = core.clock() - attempt.sent_at
            outcome = core.replied(attempt, reply)
            if outcome is None:
                continue
            assert outcome.outputs is not None
            return Routed(
                outputs=outcome.outputs,
                pool=attempt.pool,
                variant=variant,
                reason=attempt.decision.reason,
                dispatch_s=latency,
                replica_s=reply.replica_s,
                artifact=reply.artifacts.get(variant, ""),
            )
