"""Per-model routing around Ray handles: the policy picks a pool, the pool's stats pick a
replica, this module sends the request there and watches it.

What can happen to a call, and what follows:

- the replica answers: the request's outcome; its count of what it holds (from every
  ingress) becomes the freshest word on its load;
- the replica is full (other ingresses filled it first): another replica, else the next pool;
- the replica cannot be reached (it died, its node is gone): that replica is out, and the
  request goes again, to the same pool if another replica has room, else the next pool;
- the replica holds calls and answers none for ``stall_seconds`` (hung): it is out too, and
  every request waiting on it goes again elsewhere, within its deadline;
- the model failed on the request: that request's 500, nothing else changes;
- the deadline passes: the call is cancelled (the replica drops what has not started).

A pool is lost when none of its replicas is up or Serve reports none running; its waiting
requests go elsewhere. Probes bring a lost pool, and each lost or stalled replica, back as
soon as it answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from serving.calls import Job, Reply, Status, Tensors
from serving.config import ModelConfig, PoolConfig
from serving.errors import (
    BadRequest,
    DeadlineExceeded,
    ModelError,
    ModelUnavailable,
    PoolSaturated,
    UnknownModel,
)
from serving.metrics import IngressMetrics
from serving.routing.dispatch import Target, build_dispatcher
from serving.routing.policy import Decision, Reason
from serving.routing.pool_stats import ANY_REPLICA, Clock, PoolStats, PoolView, ReplicaState
from serving.routing.variants import VariantSplitter

logger = logging.getLogger(__name__)

# A replica that cannot be reached or died under a request. Handles call replicas over
# gRPC (see ``serving.app.direct``): Serve maps UNAVAILABLE to ActorUnavailableError.
REPLICA_LOST: tuple[type[BaseException], ...] = (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
)
# gRPC codes that say the replica is unreachable; any other gRPC error fails the request.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# A request cancelled this close to its deadline timed out (vs. a client that went away).
DEADLINE_SLACK_S = 0.05
PROBE_FAILED: tuple[type[BaseException], ...] = (
    TimeoutError,
    grpc.aio.AioRpcError,
    *REPLICA_LOST,
    RayError,
)


class ReplicaGone(Exception):
    """The replica a request waited on was taken out (stalled or lost); send it again."""


@dataclasses.dataclass(eq=False)
class _Call:
    """One request in flight to one replica."""

    waiter: asyncio.Future[Reply]
    task: asyncio.Future[Any]
    response: Any  # the DeploymentResponse

    def fail(self, why: str) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(ReplicaGone(why))
        self.task.cancel()
        self.response.cancel()


def _settle(waiter: asyncio.Future[Reply], task: asyncio.Future[Any]) -> None:
    """Pass a finished call's result on (or read it, so nothing logs, when nobody waits)."""
    if task.cancelled():
        if not waiter.done():
            waiter.set_exception(ReplicaGone("the call was cancelled"))
        return
    error = task.exception()
    if waiter.done():
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(task.result())


def _unreachable(exc: BaseException) -> bool:
    """Whether a call's error means its replica cannot be reached (vs. a failed request)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in UNREACHABLE
    return isinstance(exc, REPLICA_LOST)


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


class ModelRouter:
    """Routes one model's requests over its pools and their replicas."""

    def __init__(
        self,
        name: str,
        config: ModelConfig,
        pools: Mapping[str, PoolConfig],
        handles: Mapping[str, DeploymentHandle],
        metrics: IngressMetrics,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        self.name = name
        self.config = config
        self.order = list(config.routing.pools)
        self._handles = handles
        # A handle's method is a new handle per attribute read: made once per pool.
        self._infer = {pool: handle.infer for pool, handle in handles.items()}
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        routing = config.routing
        self.stats = {
            p: PoolStats(
                p,
                replica_capacity=pools[p].max_ongoing_requests * _max_batch(pools[p]),
                replica_queue=pools[p].max_queued_requests,
                expected_replicas=pools[p].replicas.min,
                ttl_s=routing.signal_ttl_seconds,
                stall_s=routing.stall_seconds,
                window=routing.latency_window,
                clock=clock,
            )
            for p in self.order
        }
        self._calls: dict[str, dict[str, set[_Call]]] = {p: defaultdict(set) for p in self.order}
        self._empty_polls = dict.fromkeys(self.order, 0)
        self._updating = dict.fromkeys(self.order, False)
        self.dispatcher = build_dispatcher(self.order, self.stats, routing, clock)
        self.policy, self.storm = self.dispatcher.policy, self.dispatcher.storm
        self.splitter = VariantSplitter({n: v.weight for n, v in config.variants.items()})
        self._tags = {"model": name}

    def update(self, config: ModelConfig) -> None:
        """New variants or weights (a rollout step); routing and limits stay (a change to
        them restarts the ingress). Pools keep their state."""
        self.config = config
        self.splitter = VariantSplitter({n: v.weight for n, v in config.variants.items()})

    def handle(self, pool: str) -> DeploymentHandle:
        """The handle of ``pool``'s deployment (for calls that are not requests)."""
        return self._handles[pool]

    def views(self) -> list[PoolView]:
        """Each pool as this ingress sees it now."""
        return self.dispatcher.views()

    # -- what Serve's controller says, and what the watcher finds ------------------------

    def set_running_replicas(
        self, pool: str, running: Sequence[str], *, updating: bool = False
    ) -> None:
        """From Serve's controller: the replicas RUNNING in a pool, and whether Serve is
        rolling out new ones (``updating``).

        A pool is declared lost after two polls in a row without a running replica: one
        such poll also happens while a rollout swaps replicas. A lost pool that is being
        updated is still worth waiting for when no other pool can serve (see ``infer``).
        """
        stats = self.stats[pool]
        self._updating[pool] = updating and not running
        self._empty_polls[pool] = 0 if running else self._empty_polls[pool] + 1
        if running:
            stats.set_members(running)
            for gone in set(self._calls[pool]) - set(running) - {ANY_REPLICA}:
                if not self._calls[pool][gone]:
                    del self._calls[pool][gone]
        elif self._empty_polls[pool] >= 2 and stats.healthy:
            self.mark_lost(pool, "no running replica")

    def mark_lost(self, pool: str, why: str) -> None:
        """Take ``pool`` out of rotation and send the requests waiting on it elsewhere."""
        stats = self.stats[pool]
        if stats.healthy:
            logger.warning("%s: pool %s lost (%s); failing over", self.name, pool, why)
        stats.lost = True
        for calls in self._calls[pool].values():
            for call in list(calls):
                call.fail(f"pool {pool} lost")

    def take_out(self, pool: str, replica: str, state: ReplicaState, why: str) -> None:
        """Stop sending to ``replica``; what waits on it goes elsewhere."""
        stats = self.stats[pool]
        member = stats.replicas.get(replica)
        if member is not None and member.state is ReplicaState.UP:
            logger.warning(
                "%s: replica %s of pool %s %s (%s)", self.name, replica, pool, state, why
            )
            if state is ReplicaState.STALLED:
                self._metrics.stalls.inc(tags=self._tags | {"pool": pool})
        stats.mark(replica, state)
        for call in list(self._calls[pool].get(replica, ())):
            call.fail(f"replica {replica} {state}")
        if not stats.healthy and not stats.lost:
            logger.warning("%s: pool %s has no replica up; failing over", self.name, pool)

    def check_stalls(self) -> None:
        """Take out every replica that holds calls and answered none for ``stall_seconds``."""
        bound = self.config.routing.stall_seconds
        for pool in self.order:
            for replica in self.stats[pool].stalled_now():
                self.take_out(pool, replica, ReplicaState.STALLED, f"no answer for {bound:g} s")

    async def probe(self, pool: str) -> bool:
        """Mark ``pool`` healthy again if one of its replicas answers in time."""
        answer = await self._health(pool, None)
        if answer is None:
            return False
        if not self.stats[pool].healthy:
            logger.info("%s: pool %s recovered", self.name, pool)
        self.stats[pool].recovered(answer)
        return True

    async def probe_replica(self, pool: str, replica: str) -> bool:
        """Bring a stalled or lost ``replica`` back if it answers itself, in time."""
        answer = await self._health(pool, replica)
        if answer != replica:
            return False
        logger.info("%s: replica %s of pool %s answers again", self.name, replica, pool)
        self.stats[pool].recovered(replica)
        return True

    async def _health(self, pool: str, replica: str | None) -> str | None:
        """The id of the replica that answered a health call, None if none did in time."""
        timeout = self.config.routing.health_check_seconds
        response = self._handles[pool].health.remote(replica=replica)
        try:
            answer = await asyncio.wait_for(response, timeout=timeout)
        except BackPressureError:
            return replica or ANY_REPLICA  # alive, only full
        except PROBE_FAILED:
            response.cancel()
            return None
        return str(answer)

    # -- requests ------------------------------------------------------------------------

    def refuse_if_full(self) -> None:
        """Shed now, before the request's body is read, when it would be shed anyway."""
        if not self.dispatcher.admits() and any(s.healthy for s in self.stats.values()):
            raise self._shed()

    def _shed(self) -> PoolSaturated:
        self.storm.refused()
        self._metrics.rejected.inc(tags=self._tags | {"reason": "saturated"})
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

    async def _send(self, pool: str, replica: str, job: Job) -> Reply:
        """One call to one replica (``ANY_REPLICA``: Serve's choice)."""
        response = self._infer[pool].remote([job], replica=replica or None)
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(response)  # a DeploymentResponse is awaitable
        task.add_done_callback(lambda done: _settle(waiter, done))
        call = _Call(waiter, task, response)
        calls = self._calls[pool][replica]
        calls.add(call)
        stats = self.stats[pool]
        stats.sent(replica, job.rows)
        try:
            return await waiter
        except asyncio.CancelledError:  # the deadline: the replica drops it if not started
            task.cancel()
            response.cancel()
            raise
        finally:
            calls.discard(call)
            stats.ended(replica, job.rows)

    def _retry(self, pool: str, reason: str) -> None:
        self._metrics.retries.inc(tags=self._tags | {"pool": pool, "reason": reason})

    async def infer(self, variant: str, inputs: Tensors, deadline: float) -> Routed:
        """Route one request (``deadline``: Unix time) until it is answered or refused."""
        job = Job(variant, inputs, deadline)
        lost: set[str] = set()
        full: set[str] = set()
        updating: set[str] = set()  # pools tried while Serve replaces their replicas
        not_loaded: dict[str, str] = {}  # pools whose replicas could not load the variant
        budget = 4 + 2 * sum(max(1, len(s.replicas)) for s in self.stats.values())
        for _ in range(budget):
            target = self.dispatcher.target(job.rows, lost, full)
            if target is None and not_loaded:  # the variant is out where it could run
                raise ModelUnavailable(f"model {self.name!r}: " + "; ".join(not_loaded.values()))
            if target is None:  # shed, unless every pool is lost and one is being replaced
                pool = self._last_resort(updating)
                updating.add(pool)
                reason = Reason.PRIMARY if pool == self.order[0] else Reason.FAILOVER
                # Serve holds the call until a new replica of that pool runs.
                target = Target(pool, ANY_REPLICA, Decision(pool, reason))
            pool, replica, decision = target.pool, target.replica, target.decision
            stats = self.stats[pool]
            start = self._clock()
            try:
                reply = await self._send(pool, replica, job)
            except ReplicaGone:
                self._retry(pool, "taken_out")
                continue
            except BackPressureError:  # Serve's own limit: the pool is full
                full.add(pool)
                continue
            except asyncio.CancelledError:
                if self._wall_clock() >= deadline - DEADLINE_SLACK_S:  # timed out: the
                    # slowest requests count in the estimate too, capped at the deadline
                    limit = self.config.limits.deadline_seconds
                    stats.record_service(min(self._clock() - start, limit))
                raise
            except (grpc.aio.AioRpcError, *REPLICA_LOST) as exc:
                if not _unreachable(exc):
                    raise ModelError(
                        f"model {self.name!r}: the call to pool {pool!r} failed: {exc}"
                    ) from exc
                if pool in updating:
                    lost.add(pool)
                elif replica == ANY_REPLICA:
                    self.mark_lost(pool, f"{type(exc).__name__} while serving")
                else:
                    self.take_out(
                        pool, replica, ReplicaState.LOST, f"{type(exc).__name__} while serving"
                    )
                self._retry(pool, "lost")
                continue
            latency = self._clock() - start
            stats.answered(reply.replica, reply.held)
            outcome = reply.outcomes[0]
            if outcome.status is Status.FULL:
                self._retry(pool, "full")
                continue
            if outcome.status is Status.EXPIRED:
                stats.record_service(latency)
                raise DeadlineExceeded(f"model {self.name!r}: the deadline passed in the queue")
            if outcome.status is Status.UNKNOWN_VARIANT:
                raise UnknownModel(outcome.detail)
            if outcome.status is Status.NOT_LOADED:  # another pool may have it: fail over
                not_loaded[pool] = outcome.detail
                lost.add(pool)
                self._retry(pool, "not_loaded")
                continue
            if outcome.status is Status.BAD_REQUEST:
                raise BadRequest(outcome.detail)
            if outcome.status is Status.MODEL_ERROR:
                raise ModelError(f"model {self.name!r}, variant {variant!r}: {outcome.detail}")
            stats.record_service(outcome.run_s)
            self.storm.answered()
            self._record_spill(decision)
            assert outcome.outputs is not None
            return Routed(
                outputs=outcome.outputs,
                pool=pool,
                variant=variant,
                reason=decision.reason,
                dispatch_s=latency,
                replica_s=reply.replica_s,
                artifact=reply.artifacts.get(variant, ""),
            )
        raise self._shed()


def _max_batch(pool: PoolConfig) -> int:
    return pool.batching.max_batch_size if pool.batching is not None else 1
