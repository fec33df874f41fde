"""Per-model routing around Ray handles: the policy decides, this module only dispatches.

A request goes to the pool the policy picks; if that pool's replicas die under it or Ray
rejects it (``max_queued_requests``), the pool is marked accordingly and the request is
tried on the next pool, so a lost pool costs no request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Mapping
from typing import Any

import grpc
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from serving.config import ModelConfig, PoolConfig
from serving.errors import ModelUnavailable, PoolSaturated
from serving.metrics import IngressMetrics
from serving.routing.policy import Decision, Reason, SpilloverPolicy
from serving.routing.pool_stats import Clock, PoolStats, PoolView
from serving.routing.variants import VariantSplitter

logger = logging.getLogger(__name__)

# A replica that cannot be reached or died under a request. Handles call replicas over
# gRPC (see ``serving.app.direct``): Serve maps UNAVAILABLE to ActorUnavailableError and
# raises any other transport failure as grpc's own error.
REPLICA_LOST: tuple[type[BaseException], ...] = (
    grpc.aio.AioRpcError,
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
)
PROBE_FAILED: tuple[type[BaseException], ...] = (TimeoutError, *REPLICA_LOST, RayError)


def _consume(task: asyncio.Future[Any]) -> None:
    """Read a finished task's outcome so a cancelled request logs nothing."""
    if not task.cancelled():
        task.exception()


class PoolLost(Exception):
    """The pool a request waited on was declared lost; the request goes elsewhere."""


@dataclasses.dataclass(frozen=True)
class Routed:
    """A served request: outputs, and where they came from."""

    outputs: dict[str, Any]
    pool: str
    variant: str
    reason: Reason
    dispatch_s: float = 0.0  # from sending to the replica until its answer was back
    replica_s: float = 0.0  # spent inside the replica (batch wait and inference)


class ModelRouter:
    """Routes one model's requests over its pools."""

    def __init__(
        self,
        name: str,
        config: ModelConfig,
        pools: Mapping[str, PoolConfig],
        handles: Mapping[str, DeploymentHandle],
        metrics: IngressMetrics,
        clock: Clock = time.monotonic,
    ) -> None:
        self.name = name
        self.config = config
        self.order = list(config.routing.pools)
        self._handles = handles
        self._metrics = metrics
        self._clock = clock
        self.stats = {
            p: PoolStats(
                p,
                capacity=max(1, pools[p].replicas.min) * pools[p].max_ongoing_requests,
                queue_limit=pools[p].max_queued_requests,
                window=config.routing.latency_window,
                clock=clock,
            )
            for p in self.order
        }
        self._per_replica = {p: pools[p].max_ongoing_requests for p in self.order}
        self._empty_polls = dict.fromkeys(self.order, 0)
        self._updating = dict.fromkeys(self.order, False)
        self._lost_events: dict[str, asyncio.Event] = {}
        self.policy = SpilloverPolicy(
            slo_s=config.routing.slo_p99_seconds,
            hysteresis=config.routing.spill_hysteresis,
            min_spill_s=config.routing.min_spill_seconds,
            clock=clock,
        )
        self.splitter = VariantSplitter({n: v.weight for n, v in config.variants.items()})

    def views(self, lost: set[str], full: set[str]) -> list[PoolView]:
        """Snapshots for one decision; pools this request found lost or full are shown so."""
        views = []
        for pool in self.order:
            view = self.stats[pool].view()
            if pool in lost:
                view = dataclasses.replace(view, healthy=False)
            elif pool in full:
                view = dataclasses.replace(view, inflight=view.capacity + view.queue_limit)
            views.append(view)
        return views

    def _lost(self, pool: str) -> asyncio.Event:
        """Set when ``pool`` is declared lost; a fresh one once it is healthy again."""
        event = self._lost_events.get(pool)
        if event is None or (event.is_set() and self.stats[pool].healthy):
            event = self._lost_events[pool] = asyncio.Event()
        return event

    def mark_lost(self, pool: str, why: str) -> None:
        """Take ``pool`` out of rotation and re-route the requests waiting on it."""
        if self.stats[pool].healthy:
            logger.warning("%s: pool %s lost (%s); failing over", self.name, pool, why)
        self.stats[pool].mark_unhealthy()
        self._lost(pool).set()

    def set_running_replicas(
        self, pool: str, running: int, detail: str = "", *, updating: bool = False
    ) -> None:
        """From Serve's status: replicas RUNNING in a pool, and whether Serve is rolling
        out new ones (``updating``).

        A pool is declared lost after two polls in a row without a running replica: one
        such poll also happens while a rollout swaps replicas. A lost pool that is being
        updated is still worth waiting for when no other pool can serve (see ``infer``).
        """
        stats = self.stats[pool]
        self._updating[pool] = updating and running == 0
        self._empty_polls[pool] = self._empty_polls[pool] + 1 if running == 0 else 0
        if running > 0:
            stats.set_capacity(running * self._per_replica[pool])
        elif self._empty_polls[pool] >= 2 and stats.healthy:
            self.mark_lost(pool, f"no running replica {detail}".strip())

    async def probe(self, pool: str) -> bool:
        """Mark ``pool`` healthy again if one of its replicas answers in time."""
        timeout = self.config.routing.health_check_seconds
        response = self._handles[pool].health.remote()
        try:
            await asyncio.wait_for(response, timeout=timeout)
        except BackPressureError:
            pass  # alive, only full
        except PROBE_FAILED:
            response.cancel()
            return False
        if not self.stats[pool].healthy:
            logger.info("%s: pool %s recovered", self.name, pool)
        self.stats[pool].mark_healthy()
        return True

    def refuse_if_full(self) -> None:
        """Shed now, before the request's body is read, when it would be shed anyway."""
        decision = self.policy.choose(self.views(set(), set()))
        if decision.pool is None and any(s.healthy for s in self.stats.values()):
            raise self._shed()

    def _shed(self) -> PoolSaturated:
        self._metrics.rejected.inc(tags={"model": self.name, "reason": "saturated"})
        retry = str(self.config.routing.retry_after_seconds)
        return PoolSaturated(
            f"model {self.name!r}: every pool is at capacity; retry after {retry} s",
            headers={"retry-after": retry},
        )

    def _record_spill(self, decision: Decision) -> None:
        if decision.pool is not None and decision.pool != self.order[0]:
            self._metrics.spillovers.inc(
                tags={
                    "model": self.name,
                    "from_pool": self.order[0],
                    "to_pool": decision.pool,
                    "reason": decision.reason.value,
                }
            )

    async def _unless_lost(self, pool: str, response: Any) -> Any:
        """The response's result, or PoolLost (request cancelled) if the pool is lost first."""
        lost = self._lost(pool)
        result = asyncio.ensure_future(response)  # a DeploymentResponse is awaitable
        result.add_done_callback(_consume)
        watcher = asyncio.ensure_future(lost.wait())
        try:
            done, _ = await asyncio.wait({result, watcher}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the deadline: drop the request everywhere
            result.cancel()
            raise
        finally:
            watcher.cancel()
        if result in done:
            return result.result()
        result.cancel()
        response.cancel()
        raise PoolLost(pool)

    def _last_resort(self, tried: set[str]) -> str:
        """No pool fits: shed while any is healthy. With every pool lost, a pool whose
        replicas Serve is replacing (a redeploy with one replica leaves a moment with none)
        still serves: Serve holds the request until a new replica runs, within the deadline.
        """
        if any(self.stats[p].healthy for p in self.order):
            raise self._shed()
        pool = next((p for p in self.order if self._updating[p] and p not in tried), None)
        if pool is None:
            raise ModelUnavailable(
                f"model {self.name!r} has no healthy replica in any pool; retry later",
                headers={"retry-after": str(self.config.routing.retry_after_seconds)},
            )
        return pool

    async def infer(self, variant: str, inputs: dict[str, Any]) -> Routed:
        """Dispatch to a pool; on a lost replica or Ray back-pressure try the next one."""
        lost: set[str] = set()
        full: set[str] = set()
        updating: set[str] = set()  # pools tried while Serve replaces their replicas
        while True:
            decision = self.policy.choose(self.views(lost, full))
            pool = decision.pool
            if pool is None:
                pool = self._last_resort(updating)
                updating.add(pool)
                reason = Reason.PRIMARY if pool == self.order[0] else Reason.FAILOVER
                decision = Decision(pool, reason)
            # A pool being updated is already marked lost: wait on Serve, not on that mark.
            waiting = pool in updating
            stats = self.stats[pool]
            stats.started()
            self._metrics.inflight.set(stats.inflight, tags={"model": self.name, "pool": pool})
            start = self._clock()
            response: Any = None
            latency: float | None = None
            try:
                response = self._handles[pool].infer.remote(variant, inputs)
                answer = response if waiting else self._unless_lost(pool, response)
                outputs, replica_s = await answer
                latency = self._clock() - start
            except BackPressureError:  # Ray's own queue limit: the pool is full
                full.add(pool)
                continue
            except REPLICA_LOST as exc:
                if not waiting:
                    self.mark_lost(pool, f"{type(exc).__name__} while serving")
                lost.add(pool)
                continue
            except PoolLost:
                lost.add(pool)
                continue
            except asyncio.CancelledError:
                if response is not None:
                    response.cancel()
                raise
            finally:  # a wait for new replicas is not the pool's service time
                stats.finished(None if waiting else latency)
                self._metrics.inflight.set(stats.inflight, tags={"model": self.name, "pool": pool})
            self._record_spill(decision)
            self.policy.on_completed(decision, latency)
            return Routed(
                outputs=outputs,
                pool=pool,
                variant=variant,
                reason=decision.reason,
                dispatch_s=latency,
                replica_s=replica_s,
            )
