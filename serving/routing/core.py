"""One model's router without IO: decide, send, retry, take out, account.

The ingress (``serving.routing.router``: calls over Ray, awaited) and the simulator
(``simulate.engine``: calls on a virtual clock) both drive this class, so the rules below
exist once and what the simulator shows at scale is what the ingress does. A driver asks
:meth:`RouterCore.next` where a request's next attempt goes, sends it its own way, and
tells the core how it ended (:meth:`~RouterCore.replied`, :meth:`~RouterCore.unreachable`,
:meth:`~RouterCore.backpressure`, :meth:`~RouterCore.cancelled`), then closes it
(:meth:`~RouterCore.close`). What the control plane learns (Serve's replica lists, stalls,
probes) goes in through the other methods; an attempt the core calls off (its replica
taken out, its pool lost) is handed back to its driver through ``Attempt.abort``.

What can happen to an attempt, and what follows:

- the replica answers: the request's outcome; its count of what it holds (from every
  ingress) becomes the freshest word on its load;
- the replica is full (other ingresses filled it first): another replica, else the next pool;
- the replica cannot be reached (it died, its node is gone): that replica is out, and the
  request goes again, to the same pool if another replica has room, else the next pool;
- the replica holds calls and answers none for ``stall_seconds`` (hung): it is out too, and
  every request waiting on it goes again elsewhere, within its deadline;
- the model failed on the request: that request's 500, nothing else changes;
- the deadline passes: the attempt is called off (the replica drops what has not started).

A pool is lost when none of its replicas is up or Serve reports none running two polls in a
row; its waiting requests go elsewhere. Probes bring a lost pool, and each lost or stalled
replica, back as soon as it answers.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from serving.calls import Outcome, Reply, Status
from serving.config import RoutingSettings
from serving.errors import (
    BadRequest,
    DeadlineExceeded,
    ModelError,
    ModelUnavailable,
    PoolSaturated,
    UnknownModel,
)
from serving.routing.dispatch import Target, build_dispatcher
from serving.routing.policy import Decision, Reason
from serving.routing.pool_stats import ANY_REPLICA, Clock, PoolStats, PoolView, ReplicaState

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolLimits:
    """What one pool's replicas hold, as the router counts it."""

    capacity: int  # rows one replica runs at once (model calls x rows per call)
    queue: int  # rows one replica holds waiting beyond that
    expected: int  # replicas the pool counts as until Serve names them


class RouteEvents(Protocol):
    """What the core reports as it routes (the ingress counts it in metrics, the simulator
    in its records)."""

    def retried(self, pool: str, reason: str) -> None: ...
    def shed(self) -> None: ...
    def spilled(self, from_pool: str, to_pool: str, reason: str) -> None: ...
    def stalled(self, pool: str) -> None: ...
    def pool_lost(self, pool: str) -> None: ...


class NoEvents:
    """Reports nothing."""

    def retried(self, pool: str, reason: str) -> None:
        return None

    def shed(self) -> None:
        return None

    def spilled(self, from_pool: str, to_pool: str, reason: str) -> None:
        return None

    def stalled(self, pool: str) -> None:
        return None

    def pool_lost(self, pool: str) -> None:
        return None


class ReplicaGone(Exception):
    """The core called the attempt off (its replica was taken out): send it again."""


class PoolFull(Exception):
    """The transport's own limit refused the call (Serve's back-pressure): the pool is full
    for this request."""


class ReplicaUnreachable(Exception):
    """The replica could not be reached: it died, or its node is gone."""


def _never(why: str) -> None:
    return None


@dataclass(eq=False)
class Course:
    """One request's way through the pools: where it may not go again, tries left."""

    variant: str
    rows: int
    deadline: float  # Unix time
    budget: int
    tries: int = 0
    lost: set[str] = field(default_factory=set)
    full: set[str] = field(default_factory=set)
    updating: set[str] = field(default_factory=set)  # tried while Serve replaces replicas
    not_loaded: dict[str, str] = field(default_factory=dict)  # pools that lack the variant


@dataclass(eq=False)
class Attempt:
    """One try of a request at one replica of one pool. ``abort`` is the driver's way to
    call it off (set when it is sent); the core calls it when it takes the replica out."""

    course: Course
    pool: str
    replica: str  # ANY_REPLICA: no replica known yet, Serve's choice
    decision: Decision
    sent_at: float
    abort: Callable[[str], None] = _never
    open: bool = True


class RouterCore:
    """Routes one model's requests over its pools and their replicas (no IO)."""

    def __init__(
        self,
        name: str,
        order: Sequence[str],
        pools: Mapping[str, PoolLimits],
        routing: RoutingSettings,
        *,
        deadline_s: float,
        clock: Clock,
        events: RouteEvents | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.order = list(order)
        self.routing = routing
        self.deadline_s = deadline_s
        self._clock = clock
        self.events: RouteEvents = events or NoEvents()
        self.stats = {
            p: PoolStats(
                p,
                replica_capacity=pools[p].capacity,
                replica_queue=pools[p].queue,
                expected_replicas=pools[p].expected,
                ttl_s=routing.signal_ttl_seconds,
                stall_s=routing.stall_seconds,
                window=routing.latency_window,
                clock=clock,
                rng=rng,
            )
            for p in self.order
        }
        self.dispatcher = build_dispatcher(self.order, self.stats, routing, clock)
        self.policy, self.storm = self.dispatcher.policy, self.dispatcher.storm
        # attempts in flight per pool and replica, in the order they were sent (so that
        # attempts called off together go again in that order, whoever drives the core)
        self._calls: dict[str, dict[str, dict[Attempt, None]]] = {
            p: defaultdict(dict) for p in self.order
        }
        self._empty_polls = dict.fromkeys(self.order, 0)
        self._updating = dict.fromkeys(self.order, False)

    def clock(self) -> float:
        return self._clock()

    def views(self) -> list[PoolView]:
        """Each pool as this router sees it now."""
        return self.dispatcher.views()

    # -- what Serve's controller says, and what probes find ------------------------------

    def set_running_replicas(
        self, pool: str, running: Sequence[str], *, updating: bool = False
    ) -> None:
        """From Serve's controller: the replicas RUNNING in a pool, and whether Serve is
        rolling out new ones (``updating``).

        A pool is declared lost after two polls in a row without a running replica: one
        such poll also happens while a rollout swaps replicas. A lost pool that is being
        updated is still worth waiting for when no other pool can serve (see ``next``).
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
        """Take ``pool`` out of rotation and call off the attempts waiting on it."""
        stats = self.stats[pool]
        if stats.healthy:
            logger.warning("%s: pool %s lost (%s); failing over", self.name, pool, why)
            self.events.pool_lost(pool)
        stats.lost = True
        for attempts in list(self._calls[pool].values()):
            for attempt in list(attempts):
                attempt.abort(f"pool {pool} lost")

    def take_out(self, pool: str, replica: str, state: ReplicaState, why: str) -> None:
        """Stop sending to ``replica``; the attempts waiting on it are called off."""
        stats = self.stats[pool]
        was_healthy = stats.healthy
        member = stats.replicas.get(replica)
        if member is not None and member.state is ReplicaState.UP:
            logger.warning(
                "%s: replica %s of pool %s %s (%s)", self.name, replica, pool, state, why
            )
            if state is ReplicaState.STALLED:
                self.events.stalled(pool)
        stats.mark(replica, state)
        if was_healthy and not stats.healthy:
            self.events.pool_lost(pool)
        for attempt in list(self._calls[pool].get(replica, ())):
            attempt.abort(f"replica {replica} {state}")
        if not stats.healthy and not stats.lost:
            logger.warning("%s: pool %s has no replica up; failing over", self.name, pool)

    def check_stalls(self) -> None:
        """Take out every replica that holds calls and answered none for ``stall_seconds``."""
        bound = self.routing.stall_seconds
        for pool in self.order:
            for replica in self.stats[pool].stalled_now():
                self.take_out(pool, replica, ReplicaState.STALLED, f"no answer for {bound:g} s")

    def recovered(self, pool: str, replica: str) -> None:
        """A probe was answered by ``replica`` (``ANY_REPLICA``: by some replica)."""
        if not self.stats[pool].healthy:
            logger.info("%s: pool %s recovered", self.name, pool)
        self.stats[pool].recovered(replica)

    # -- requests ------------------------------------------------------------------------

    def admits(self) -> bool:
        """Whether a new request would be routed, not shed (every pool lost: routed, to
        fail as unavailable rather than as saturated)."""
        return self.dispatcher.admits() or not any(s.healthy for s in self.stats.values())

    def shed(self) -> PoolSaturated:
        """A refusal (counted): every pool is full."""
        self.storm.refused()
        self.events.shed()
        retry = str(self.routing.retry_after_seconds)
        return PoolSaturated(
            f"model {self.name!r}: every pool is at capacity; retry after {retry} s",
            headers={"retry-after": retry},
        )

    def begin(self, variant: str, rows: int, deadline: float) -> Course:
        """A new request: its attempts are bounded by the replicas known now."""
        budget = 4 + 2 * sum(max(1, len(s.replicas)) for s in self.stats.values())
        return Course(variant, rows, deadline, budget)

    def next(self, course: Course) -> Attempt:
        """Where ``course``'s next attempt goes, counted as sent there; raises the error
        that ends the request when none may go (shed, unavailable)."""
        course.tries += 1
        if course.tries > course.budget:
            raise self.shed()
        target = self.dispatcher.target(course.rows, course.lost, course.full)
        if target is None and course.not_loaded:  # the variant is out where it could run
            raise ModelUnavailable(f"model {self.name!r}: " + "; ".join(course.not_loaded.values()))
        if target is None:  # shed, unless every pool is lost and one is being replaced
            pool = self._last_resort(course.updating)
            course.updating.add(pool)
            reason = Reason.PRIMARY if pool == self.order[0] else Reason.FAILOVER
            # Serve holds the call until a new replica of that pool runs.
            target = Target(pool, ANY_REPLICA, Decision(pool, reason))
        attempt = Attempt(course, target.pool, target.replica, target.decision, self._clock())
        self._calls[attempt.pool][attempt.replica][attempt] = None
        self.stats[attempt.pool].sent(attempt.replica, course.rows)
        return attempt

    def _last_resort(self, tried: set[str]) -> str:
        """No pool fits: shed while any is healthy. With every pool lost, a pool whose
        replicas Serve is replacing (a redeploy with one replica leaves a moment with none)
        still serves: Serve holds the request until a new replica runs, within the deadline.
        """
        if any(self.stats[p].healthy for p in self.order):
            raise self.shed()
        pool = next((p for p in self.order if self._updating[p] and p not in tried), None)
        if pool is None:
            raise ModelUnavailable(
                f"model {self.name!r} has no healthy replica in any pool; retry later",
                headers={"retry-after": str(self.routing.retry_after_seconds)},
            )
        return pool

    def close(self, attempt: Attempt) -> None:
        """The attempt is over, however it ended: it no longer counts against its replica
        (each of the methods below closes it first; closing twice does nothing)."""
        if not attempt.open:
            return
        attempt.open = False
        self._calls[attempt.pool][attempt.replica].pop(attempt, None)
        self.stats[attempt.pool].ended(attempt.replica, attempt.course.rows)

    def called_off(self, attempt: Attempt) -> None:
        """The core called the attempt off (its replica was taken out): it goes again."""
        self.close(attempt)
        self.events.retried(attempt.pool, "taken_out")

    def backpressure(self, attempt: Attempt) -> None:
        """Serve's own limit refused the call: the pool is full for this request."""
        self.close(attempt)
        attempt.course.full.add(attempt.pool)

    def unreachable(self, attempt: Attempt, why: str) -> None:
        """The replica could not be reached (it died, its node is gone): out it goes, and
        the request goes again."""
        self.close(attempt)
        pool, course = attempt.pool, attempt.course
        if pool in course.updating:
            course.lost.add(pool)
        elif attempt.replica == ANY_REPLICA:
            self.mark_lost(pool, why)
        else:
            self.take_out(pool, attempt.replica, ReplicaState.LOST, why)
        self.events.retried(pool, "lost")

    def cancelled(self, attempt: Attempt, *, timed_out: bool) -> None:
        """The request was given up (its deadline, or its client gone). A timed-out one
        counts in the latency estimate too, capped at the deadline: the slowest requests
        must not vanish from it."""
        self.close(attempt)
        if timed_out:
            seconds = min(self._clock() - attempt.sent_at, self.deadline_s)
            self.stats[attempt.pool].record_service(seconds)

    def replied(self, attempt: Attempt, reply: Reply) -> Outcome | None:
        """The replica answered: the outcome when the request is served, None when it must
        go again; raises the error that ends it (400, 404, 500, 504)."""
        self.close(attempt)
        pool, course = attempt.pool, attempt.course
        stats = self.stats[pool]
        stats.answered(reply.replica, reply.held)
        outcome = reply.outcomes[0]
        if outcome.status is Status.FULL:
            self.events.retried(pool, "full")
            return None
        if outcome.status is Status.EXPIRED:
            stats.record_service(self._clock() - attempt.sent_at)
            raise DeadlineExceeded(f"model {self.name!r}: the deadline passed in the queue")
        if outcome.status is Status.UNKNOWN_VARIANT:
            raise UnknownModel(outcome.detail)
        if outcome.status is Status.NOT_LOADED:  # another pool may have it: fail over
            course.not_loaded[pool] = outcome.detail
            course.lost.add(pool)
            self.events.retried(pool, "not_loaded")
            return None
        if outcome.status is Status.BAD_REQUEST:
            raise BadRequest(outcome.detail)
        if outcome.status is Status.MODEL_ERROR:
            raise ModelError(f"model {self.name!r}, variant {course.variant!r}: {outcome.detail}")
        stats.record_service(outcome.run_s)
        self.storm.answered()
        if pool != self.order[0]:
            self.events.spilled(self.order[0], pool, attempt.decision.reason.value)
        return outcome
