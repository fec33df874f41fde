"""The discrete-event simulation: arrivals, ingresses, replicas, failures, on a virtual clock.

Sluiceway's ingresses run the ingress's own router (``serving.routing.core.RouterCore``:
the retry budget, take-outs, the lost-pool rule, over ``SpilloverPolicy``, ``PoolStats``,
``StormGuard``) and the replicas the real queue (``serving.batch_queue.BatchQueue``),
driven by this clock; only Ray, HTTP and the model
are stood in for (a network delay each way, a service time per model call). Baselines
(``simulate.baselines``) get the same arrivals, replicas and failures.

Each request is one row. Every random draw comes from generators seeded by the scenario,
arrivals from their own, so every policy sees the very same requests.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from serving.batch_queue import BatchQueue, Entry
from serving.calls import Outcome, Status
from serving.calls import Reply as CallReply
from serving.errors import DeadlineExceeded, ModelUnavailable, PoolSaturated
from serving.routing.core import Attempt, Course, NoEvents, PoolLimits, RouterCore
from serving.routing.policy import Reason
from serving.routing.pool_stats import ANY_REPLICA, ReplicaState
from simulate.scenario import Failure, Pool, Scenario

# Outcome codes as HTTP would give them; LOST is a request an ingress held when it died.
OK, SHED, TIMEOUT, LOST = 200, 503, 504, 0
STALL_CHECK_S = 0.25  # as often as the real ingress looks for stalled replicas, at most
VARIANT = "stable"  # one variant: the simulation routes, it does not split
BUCKET_S = 1.0  # time series resolution
DEADLINE_SWEEP_S = 0.05


@dataclass(eq=False)
class Request:
    """One request's life."""

    id: int
    arrival: float
    input_s: float
    ingress: int
    deadline: float
    attempt: int = 0
    pool: str = ""  # where the current (or final) attempt went
    replica: str = ""
    entry: Entry[Any] | None = None  # its place in a replica's queue, while there
    sent_at: float = 0.0
    done: bool = False
    reason: str = ""  # why it went to the pool that served it (Reason value)
    failed_over: bool = False


@dataclass(frozen=True)
class Reply:
    """A replica's answer to one request, as the ingress receives it."""

    request: Request
    replica: Replica
    status: str  # ok, full, expired, lost
    run_s: float
    held: int


@dataclass
class Records:
    """What happened to every request, and to the pools over time."""

    arrival: list[float] = field(default_factory=list)
    end: list[float] = field(default_factory=list)
    code: list[int] = field(default_factory=list)
    pool: list[str] = field(default_factory=list)
    reason: list[str] = field(default_factory=list)
    # per pool, per time bucket: busy slot-seconds and available slot-seconds
    busy: dict[str, list[float]] = field(default_factory=dict)
    slots: dict[str, list[float]] = field(default_factory=dict)
    # per ingress: times its policy started or stopped spilling
    spill_changes: list[list[float]] = field(default_factory=list)
    # times a pool went unhealthy in some ingress's view (pool, time)
    pool_lost: list[tuple[str, float]] = field(default_factory=list)

    def finish(self, request: Request, now: float, code: int) -> None:
        self.arrival.append(request.arrival)
        self.end.append(now)
        self.code.append(code)
        self.pool.append(request.pool if code == OK else "")
        self.reason.append(request.reason if code == OK else "")


class Replica:
    """A pool replica: the real ``BatchQueue`` and a service time per model call."""

    def __init__(self, sim: Simulation, pool: str, replica_id: str, queue_limit: int) -> None:
        self.sim = sim
        self.pool = pool
        self.id = replica_id
        spec = sim.scenario.pools[pool]
        self.spec = spec
        self.queue: BatchQueue[Request] = BatchQueue(
            slots=spec.max_ongoing_requests, max_batch=spec.max_batch_size, queue_limit=queue_limit
        )
        self.alive = True
        self.retiring = False  # scaled down: takes nothing new, ends when what it holds ends
        self.stalled_until = -math.inf
        self.running: list[list[Entry[Request]]] = []

    @property
    def stalled(self) -> bool:
        return self.sim.now < self.stalled_until

    def receive(self, request: Request) -> None:
        """A job arrives from an ingress."""
        if not self.alive:
            self.sim.reply(request, self, "lost")
            return
        if self.retiring:  # Serve's router would not send here; the ingress tries another
            self.sim.reply(request, self, "full")
            return
        entry: Entry[Request] = Entry(
            key=request.input_s, rows=1, deadline=request.deadline, token=request
        )
        if not self.queue.admit(entry):
            self.sim.reply(request, self, "full")
            return
        request.entry = entry
        self.start_calls()

    def start_calls(self) -> None:
        if self.stalled or not self.alive:
            return
        sim = self.sim
        while True:
            batch, expired = self.queue.take(sim.now)
            for entry in expired:
                entry.token.entry = None
                sim.reply(entry.token, self, "expired")
            if not batch:
                return
            service = self.spec.service
            seconds = service.seconds(len(batch), batch[0].token.input_s)
            if service.distribution == "exponential":
                seconds = sim.service_rng.expovariate(1 / seconds)
            elif service.jitter_cv:
                sigma = math.sqrt(math.log(1 + service.jitter_cv**2))
                seconds *= sim.service_rng.lognormvariate(-sigma * sigma / 2, sigma)
            sim.busy_change(self.pool, +1)
            self.running.append(batch)
            sim.at(sim.now + seconds, self.complete, (batch, seconds))

    def complete(self, done: tuple[list[Entry[Request]], float]) -> None:
        batch, seconds = done
        if not self.alive or batch not in self.running:
            return  # it died meanwhile: its requests were failed then
        if self.stalled:  # a stopped process finishes nothing until it resumes
            self.sim.at(self.stalled_until, self.complete, done)
            return
        self.running.remove(batch)
        self.sim.busy_change(self.pool, -1)
        self.queue.done(batch)
        for entry in batch:
            entry.token.entry = None
            self.sim.reply(entry.token, self, "ok", seconds)
        self.start_calls()
        if self.retiring and not self.queue.held:
            self.sim.retired(self)

    def retire(self) -> None:
        self.retiring = True
        if not self.queue.held:
            self.sim.retired(self)

    def resume(self, _: None) -> None:
        self.start_calls()

    def die(self) -> None:
        """Its process (or node) is gone: everything it held fails now."""
        self.alive = False
        sim = self.sim
        for batch in self.running:
            sim.busy_change(self.pool, -1)
            for entry in batch:
                entry.token.entry = None
                sim.reply(entry.token, self, "lost")
            self.queue.done(batch)
        self.running.clear()
        for entry in self.queue.drain():
            entry.token.entry = None
            sim.reply(entry.token, self, "lost")


class Ingress:
    """An ingress replica: a policy deciding per request, and the bookkeeping around it."""

    def __init__(self, sim: Simulation, index: int) -> None:
        self.sim = sim
        self.index = index
        self.alive = True
        self.pending: dict[int, Request] = {}

    def arrive(self, request: Request) -> None:
        raise NotImplementedError

    def on_reply(self, reply: Reply) -> None:
        raise NotImplementedError

    def tick(self, _: None) -> None:
        """Periodic work (stall checks, probes); re-arms itself."""

    def poll(self, _: None) -> None:
        """What the controller says about replicas; re-arms itself."""

    def timed_out(self, request: Request) -> None:
        """The request's deadline passed before an answer."""

    def die(self) -> None:
        self.alive = False
        for request in list(self.pending.values()):
            self.sim.finish(request, LOST)
        self.pending.clear()


class _Records(NoEvents):
    """The router core's events the simulation keeps: when a pool went unhealthy."""

    def __init__(self, sim: Simulation) -> None:
        self.sim = sim

    def pool_lost(self, pool: str) -> None:
        self.sim.records.pool_lost.append((pool, self.sim.now))


# A replica's answer as the router core reads it (the simulation's statuses are its own).
_STATUS = {"ok": Status.OK, "full": Status.FULL, "expired": Status.EXPIRED}


def pool_limits(pool: Pool) -> PoolLimits:
    """What one replica of a simulated pool holds, as the router counts it."""
    return PoolLimits(
        capacity=pool.max_ongoing_requests * pool.max_batch_size,
        queue=pool.max_queued_requests,
        expected=pool.replicas,
    )


class SluicewayIngress(Ingress):
    """Sluiceway's router: the ingress's own ``RouterCore``, driven by the simulation's
    events instead of awaited calls (``serving.routing.router`` drives it over Ray)."""

    def __init__(
        self, sim: Simulation, index: int, pools: list[str], policy: str | None = None
    ) -> None:
        super().__init__(sim, index)
        scenario = sim.scenario
        self.order = pools
        routing = scenario.routing
        if policy is not None:  # the same router under another policy (a baseline)
            routing = routing.model_copy(update={"policy": policy})
        self.core = RouterCore(
            f"ingress-{index}",
            pools,
            {name: pool_limits(scenario.pools[name]) for name in pools},
            routing,
            deadline_s=scenario.limits.deadline_seconds,
            clock=sim.clock,
            events=_Records(sim),
            rng=random.Random(scenario.seed * 1000 + index),
        )
        self.stats, self.policy = self.core.stats, self.core.policy
        self.courses: dict[int, Course] = {}
        self.attempts: dict[int, Attempt] = {}
        self.aborted: set[Attempt] = set()  # called off, not yet sent again
        self.spilling = False
        self.probed = -math.inf
        for name in pools:
            self.core.set_running_replicas(name, sim.running(name))

    def _note_spill_state(self) -> None:
        if self.policy.spilling != self.spilling:
            self.spilling = self.policy.spilling
            self.sim.records.spill_changes[self.index].append(self.sim.now)

    def arrive(self, request: Request) -> None:
        if not self.core.admits():
            self.core.shed()
            self.sim.finish(request, SHED)
            return
        self.pending[request.id] = request
        self.courses[request.id] = self.core.begin(VARIANT, 1, request.deadline)
        self.route(request)

    def route(self, request: Request) -> None:
        request.attempt += 1
        try:
            attempt = self.core.next(self.courses[request.id])
        except (PoolSaturated, ModelUnavailable):
            self._note_spill_state()
            self._forget(request)
            self.sim.finish(request, SHED)
            return
        self._note_spill_state()
        request.pool, request.replica = attempt.pool, attempt.replica
        request.reason = attempt.decision.reason.value
        request.sent_at = self.sim.now
        attempt.abort = lambda why: self._called_off(request, attempt)
        self.attempts[request.id] = attempt
        self.sim.send(request, self.sim.replica(attempt.pool, attempt.replica))

    def _called_off(self, request: Request, attempt: Attempt) -> None:
        """The core took the replica out: the replica drops what has not started now, and
        the request goes again once the event that took it out is done (as the ingress's
        request resumes after the task that called it off yields)."""
        self._cancel_entry(request)
        self.aborted.add(attempt)
        self.sim.soon(self._again, (request, attempt))

    def _again(self, called_off: tuple[Request, Attempt]) -> None:
        request, attempt = called_off
        self.aborted.discard(attempt)
        if attempt.open:
            self.core.called_off(attempt)
            if not request.done:
                self.route(request)

    def _cancel_entry(self, request: Request) -> None:
        if request.entry is not None:
            self.sim.replica(request.pool, request.replica).queue.cancel(request.entry)
            request.entry = None

    def _forget(self, request: Request) -> None:
        self.pending.pop(request.id, None)
        self.courses.pop(request.id, None)
        self.attempts.pop(request.id, None)

    def on_reply(self, reply: Reply) -> None:
        request, replica, status = reply.request, reply.replica, reply.status
        attempt = self.attempts.get(request.id)
        if request.done or not self.alive or attempt is None or not attempt.open:
            return
        if attempt in self.aborted:
            return  # called off: its answer is not waited for
        if replica.pool != attempt.pool or attempt.replica not in (ANY_REPLICA, replica.id):
            return  # an answer to an attempt already given up on (taken out, retried)
        if status == "lost":
            self.core.unreachable(attempt, "lost while serving")
            if not request.done:
                self.route(request)
            return
        outcome = Outcome(_STATUS[status], outputs={}, run_s=reply.run_s)
        answer = CallReply([outcome], replica=replica.id, held=reply.held, replica_s=0.0)
        try:
            served = self.core.replied(attempt, answer)
        except DeadlineExceeded:
            self._forget(request)
            self.sim.finish(request, TIMEOUT)
            return
        if served is None:
            self.route(request)
            return
        self._forget(request)
        self.sim.finish(request, OK)

    def timed_out(self, request: Request) -> None:
        attempt = self.attempts.get(request.id)
        if attempt is not None and attempt.open:
            self.core.cancelled(attempt, timed_out=True)
            self._cancel_entry(request)
        self._forget(request)
        self.sim.finish(request, TIMEOUT)

    def tick(self, _: None) -> None:
        if not self.alive:
            return
        self.core.check_stalls()
        now = self.sim.now
        if now - self.probed >= self.sim.scenario.routing.health_check_seconds:
            self.probed = now
            for pool in self.order:
                stats = self.stats[pool]
                for replica in list(stats.replicas.values()):
                    if replica.state is not ReplicaState.UP and self.sim.answers(pool, replica.id):
                        self.core.recovered(pool, replica.id)
                if stats.lost and self.sim.running(pool):
                    self.core.recovered(pool, self.sim.running(pool)[0])
        self.sim.at(now + self.sim.tick_s, self.tick, None)

    def poll(self, _: None) -> None:
        if not self.alive:
            return
        for pool in self.order:
            self.core.set_running_replicas(pool, self.sim.running(pool))
        self.sim.at(self.sim.now + self.sim.scenario.poll_seconds, self.poll, None)


class Simulation:
    """One run of a scenario under one policy."""

    def __init__(
        self,
        scenario: Scenario,
        make_ingress: Callable[[Simulation, int], Ingress],
        *,
        queue_limit: Callable[[Pool], int] = lambda pool: pool.max_queued_requests,
        progress: Callable[[float], None] | None = None,
    ) -> None:
        self.scenario = scenario
        self.now = 0.0
        self.deadline_s = scenario.limits.deadline_seconds
        self.tick_s = min(STALL_CHECK_S, scenario.routing.stall_seconds / 4)
        self._events: list[tuple[float, int, Callable[[Any], None], Any]] = []
        self._seq = itertools.count()
        self._progress = progress
        self.service_rng = random.Random(scenario.seed + 1)
        buckets = math.ceil(scenario.duration_s / BUCKET_S) + 1
        self.records = Records(
            busy={p: [0.0] * buckets for p in scenario.pools},
            slots={p: [0.0] * buckets for p in scenario.pools},
            spill_changes=[[] for _ in range(scenario.ingresses)],
        )
        self._queue_limit = queue_limit
        self._replicas: dict[str, dict[str, Replica]] = {p: {} for p in scenario.pools}
        self._serial = itertools.count()
        self._busy = dict.fromkeys(scenario.pools, 0)
        self._starting = dict.fromkeys(scenario.pools, 0)  # replicas asked for, not up yet
        self._alive = dict.fromkeys(scenario.pools, 0)
        self._last_t = dict.fromkeys(scenario.pools, 0.0)
        for pool, spec in scenario.pools.items():
            for _ in range(spec.replicas):
                self._start_replica(pool)
        self.ingresses = [make_ingress(self, i) for i in range(scenario.ingresses)]
        self._deadlines: deque[Request] = deque()
        self._soon: deque[tuple[Callable[[Any], None], Any]] = deque()
        self._arrived = 0

    # -- the clock -------------------------------------------------------------------

    def clock(self) -> float:
        return self.now

    def at(self, when: float, action: Callable[[Any], None], argument: Any) -> None:
        heapq.heappush(self._events, (when, next(self._seq), action, argument))

    def soon(self, action: Callable[[Any], None], argument: Any) -> None:
        """Run ``action`` once the event being handled is done, before any other (what
        ``call_soon`` is to an event loop)."""
        self._soon.append((action, argument))

    # -- pools and replicas ----------------------------------------------------------

    def _start_replica(self, pool: str) -> Replica:
        self._integrate(pool)
        spec = self.scenario.pools[pool]
        replica_id = f"{pool}-{next(self._serial)}"
        replica = Replica(self, pool, replica_id, self._queue_limit(spec))
        self._replicas[pool][replica_id] = replica
        self._alive[pool] += 1
        return replica

    def running(self, pool: str) -> list[str]:
        return [r.id for r in self.live_replicas(pool)]

    def live_replicas(self, pool: str) -> list[Replica]:
        """Replicas that take requests (not dead, not being scaled down)."""
        return [r for r in self._replicas[pool].values() if r.alive and not r.retiring]

    def retired(self, replica: Replica) -> None:
        """A scaled-down replica has ended what it held: it stops."""
        if replica.alive:
            self._integrate(replica.pool)
            replica.alive = False
            self._alive[replica.pool] -= 1

    def _autoscale(self, pool: str) -> None:
        """Serve's autoscaler: replicas for the requests the pool holds at the target per
        replica; new ones start ``startup_seconds`` later, surplus ones drain and stop."""
        spec = self.scenario.pools[pool]
        policy = spec.autoscaling
        assert policy is not None
        live = self.live_replicas(pool)
        held = sum(r.queue.held for r in live)
        wanted = math.ceil(held / policy.target_ongoing_requests)
        wanted = min(policy.max_replicas, max(policy.min_replicas, wanted))
        starting = self._starting[pool]
        if wanted > len(live) + starting:
            for _ in range(wanted - len(live) - starting):
                self._starting[pool] += 1
                self.at(self.now + spec.startup_seconds, self._scaled_up, pool)
        elif wanted < len(live) and not starting:
            for replica in sorted(live, key=lambda r: r.queue.held)[: len(live) - wanted]:
                replica.retire()
        self.at(self.now + policy.period_seconds, self._autoscale, pool)

    def _scaled_up(self, pool: str) -> None:
        self._starting[pool] -= 1
        self._replace(pool)

    def replica(self, pool: str, replica_id: str) -> Replica:
        if replica_id == ANY_REPLICA:
            live = self.live_replicas(pool)
            if live:
                return min(live, key=lambda r: r.queue.held)
            return next(iter(self._replicas[pool].values()))
        return self._replicas[pool][replica_id]

    def answers(self, pool: str, replica_id: str) -> bool:
        replica = self._replicas[pool].get(replica_id)
        return replica is not None and replica.alive and not replica.stalled

    def _integrate(self, pool: str) -> None:
        """Add busy and available slot-time since the last change, bucket by bucket."""
        start, now = self._last_t[pool], self.now
        if now <= start:
            return
        busy = self._busy[pool]
        slots = self.scenario.pools[pool].max_ongoing_requests * self._alive[pool]
        busy_series, slot_series = self.records.busy[pool], self.records.slots[pool]
        t = start
        while t < now:
            bucket = int(t / BUCKET_S)
            edge = min(now, (bucket + 1) * BUCKET_S)
            if bucket < len(busy_series):
                busy_series[bucket] += busy * (edge - t)
                slot_series[bucket] += slots * (edge - t)
            t = edge
        self._last_t[pool] = now

    def busy_change(self, pool: str, delta: int) -> None:
        self._integrate(pool)
        self._busy[pool] += delta

    # -- messages between ingresses and replicas -------------------------------------

    def send(self, request: Request, replica: Replica) -> None:
        self.at(self.now + self.scenario.network_seconds, replica.receive, request)

    def reply(self, request: Request, replica: Replica, status: str, run_s: float = 0.0) -> None:
        """The replica answers (``status``: ok, full, expired, lost); it arrives a network
        delay later, with what the replica held when it answered."""
        answer = Reply(request, replica, status, run_s, replica.queue.held)
        self.at(
            self.now + self.scenario.network_seconds,
            self.ingresses[request.ingress].on_reply,
            answer,
        )

    def finish(self, request: Request, code: int) -> None:
        if request.done:
            return
        request.done = True
        self.records.finish(request, self.now, code)

    # -- arrivals, deadlines, failures -----------------------------------------------

    def _arrivals(self) -> None:
        """Every request of the run, from its own generator (the same for every policy)."""
        rng = random.Random(self.scenario.seed)
        lengths = list(self.scenario.inputs.seconds)
        weights = list(self.scenario.inputs.seconds.values())
        capacity = self.scenario.capacity_per_s()
        start = 0.0
        ids = itertools.count()
        alive = [True] * self.scenario.ingresses
        ingress_lost = {
            f.index: f.at_seconds for f in self.scenario.failures if f.kind == "ingress_lost"
        }
        round_robin = itertools.count()
        for phase in self.scenario.arrivals:
            t = start
            end = start + phase.seconds
            while True:
                rate = phase.rate if phase.rate is not None else phase.load_at(t - start) * capacity
                if rate <= 0:
                    break
                t += rng.expovariate(rate)
                if t >= end:
                    break
                for index, when in ingress_lost.items():
                    alive[index] = t < when
                live = [i for i, ok in enumerate(alive) if ok] or [0]
                if self.scenario.spread == "random":
                    ingress = live[rng.randrange(len(live))]
                else:
                    ingress = live[next(round_robin) % len(live)]
                request = Request(
                    id=next(ids),
                    arrival=t,
                    input_s=rng.choices(lengths, weights)[0],
                    ingress=ingress,
                    deadline=t + self.deadline_s,
                )
                self.at(t, self._arrive, request)
            start = end

    def _arrive(self, request: Request) -> None:
        self._arrived += 1
        self._deadlines.append(request)
        self.ingresses[request.ingress].arrive(request)

    def _sweep_deadlines(self, _: None) -> None:
        deadlines = self._deadlines
        while deadlines and (deadlines[0].done or deadlines[0].deadline <= self.now):
            request = deadlines.popleft()
            if not request.done:
                self.ingresses[request.ingress].timed_out(request)
        self.at(self.now + DEADLINE_SWEEP_S, self._sweep_deadlines, None)

    def _fail(self, failure: Failure) -> None:
        if failure.kind == "ingress_lost":
            self.ingresses[failure.index].die()
            return
        assert failure.pool is not None
        pool = failure.pool
        live = self.live_replicas(pool)
        if failure.kind == "replica_stalled":
            for replica in live[: failure.count]:
                replica.stalled_until = self.now + failure.seconds
                self.at(replica.stalled_until, replica.resume, None)
            return
        victims = live if failure.kind == "pool_lost" else live[: failure.count]
        self._integrate(pool)
        for replica in victims:
            replica.die()
            self._alive[pool] -= 1
        # Serve replaces them: after the pool is back (pool_lost), plus a start-up time.
        back = self.now + (failure.seconds if failure.kind == "pool_lost" else 0.0)
        ready = back + self.scenario.pools[pool].startup_seconds
        for _ in victims:
            self.at(ready, lambda _: self._replace(pool), None)

    def _replace(self, pool: str) -> None:
        replica = self._start_replica(pool)
        replica.start_calls()

    # -- the run ---------------------------------------------------------------------

    def run(self) -> Records:
        self._arrivals()
        for failure in self.scenario.failures:
            self.at(failure.at_seconds, self._fail, failure)
        for name, spec in self.scenario.pools.items():
            if spec.autoscaling is not None:
                self.at(spec.autoscaling.period_seconds, self._autoscale, name)
        for ingress in self.ingresses:
            self.at(self.tick_s, ingress.tick, None)
            self.at(self.scenario.poll_seconds, ingress.poll, None)
        self.at(DEADLINE_SWEEP_S, self._sweep_deadlines, None)
        duration = self.scenario.duration_s
        horizon = duration + self.deadline_s
        next_report = 0.0
        events = self._events
        records = self.records
        while events:
            when, _, action, argument = heapq.heappop(events)
            if when > horizon:
                break
            if when > duration and len(records.code) >= self._arrived:
                break  # every request has ended: only periodic work is left
            self.now = when
            action(argument)
            soon = self._soon
            while soon:
                follow, value = soon.popleft()
                follow(value)
            if self._progress is not None and when >= next_report:
                self._progress(min(1.0, when / duration))
                next_report = when + duration / 50
        self.now = horizon
        for pool in self.scenario.pools:
            self._integrate(pool)
        return self.records


def sluiceway(sim: Simulation, index: int) -> Ingress:
    """Sluiceway's routing over every pool, in the scenario's order."""
    return SluicewayIngress(sim, index, list(sim.scenario.pools))


PolicyFactory = Callable[[Simulation, int], Ingress]
_ = Reason  # the reasons requests carry are Reason values
