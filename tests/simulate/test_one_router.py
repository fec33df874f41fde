"""The simulator and the ingress run one router: the same arrivals and replica replies give
the same decisions.

A small cluster is simulated (two pools, overload past both, a replica lost, a replica
stalled); every event its ingress sees is written down: arrivals, Serve's replica lists,
stall checks and probes, each replica's reply, deadlines. The same events are then played,
at the same virtual times, into the ingress's async router (``serving.routing.router``)
over a transport that answers each call with the reply the simulated replica gave. Every
attempt's pool, replica and reason, and every request's end, must be the same: the two
drive one ``RouterCore``, and this test fails the day either driver decides on its own.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from serving.calls import Job, Outcome, Reply, Status
from serving.config import ModelConfig, PoolConfig
from serving.errors import DeadlineExceeded, ModelUnavailable, PoolSaturated
from serving.routing.core import Attempt, NoEvents, ReplicaUnreachable
from serving.routing.router import ModelRouter
from simulate import parse_scenario
from simulate.engine import OK, SHED, TIMEOUT, Request, Simulation, SluicewayIngress
from simulate.engine import Reply as SimReply

Event = tuple[Any, ...]


def scenario() -> Any:
    return parse_scenario(
        {
            "name": "one-router",
            "seed": 11,
            "ingresses": 1,
            "routing": {"slo_p99_seconds": 0.5, "min_spill_seconds": 2, "stall_seconds": 2},
            "limits": {"deadline_seconds": 4},
            "inputs": {"seconds": {3: 1}},
            "pools": {
                "gpu": {
                    "replicas": 3,
                    "max_batch_size": 4,
                    "max_queued_requests": 4,
                    "startup_seconds": 2,
                    "service": {"base_seconds": 0.02, "per_row_seconds": 0.01, "source": "test"},
                },
                "cpu": {
                    "replicas": 2,
                    "max_ongoing_requests": 2,
                    "max_queued_requests": 4,
                    "startup_seconds": 2,
                    "service": {"base_seconds": 0.0, "per_row_seconds": 0.15, "source": "test"},
                },
            },
            "arrivals": [
                {"name": "warm", "seconds": 4, "load": 0.6},
                {"name": "over", "seconds": 4, "load": 1.6},
                {"name": "calm", "seconds": 6, "load": 0.5},
            ],
            "failures": [
                {"at_seconds": 5, "kind": "replica_lost", "pool": "gpu"},
                {"at_seconds": 9, "kind": "replica_stalled", "pool": "gpu", "seconds": 3},
            ],
        }
    )


@dataclass
class Trace:
    """What the simulated ingress saw (``events``) and decided (``sends``, ``ends``)."""

    events: list[Event] = field(default_factory=list)
    sends: list[tuple[int, str, str, str]] = field(default_factory=list)
    ends: dict[int, int] = field(default_factory=dict)


class TracedIngress(SluicewayIngress):
    """The simulator's ingress, unchanged, with every input and decision written down."""

    def __init__(self, sim: Simulation, index: int, trace: Trace) -> None:
        self.trace = trace
        running = {pool: tuple(sim.running(pool)) for pool in sim.scenario.pools}
        trace.events.append(("poll", sim.now, running))  # what it starts knowing
        super().__init__(sim, index, list(sim.scenario.pools))
        recovered = self.core.recovered

        def traced_recovered(pool: str, replica: str) -> None:
            trace.events.append(("recovered", sim.now, pool, replica))
            recovered(pool, replica)

        self.core.recovered = traced_recovered  # type: ignore[method-assign]

    def arrive(self, request: Request) -> None:
        self.trace.events.append(("arrive", self.sim.now, request.id, request.deadline))
        super().arrive(request)

    def on_reply(self, reply: SimReply) -> None:
        event = ("reply", self.sim.now, reply.request.id, reply.replica.pool, reply.replica.id)
        self.trace.events.append((*event, reply.status, reply.held, reply.run_s))
        super().on_reply(reply)

    def timed_out(self, request: Request) -> None:
        self.trace.events.append(("timeout", self.sim.now, request.id))
        super().timed_out(request)

    def tick(self, argument: None) -> None:
        if self.alive:
            self.trace.events.append(("tick", self.sim.now))
        super().tick(argument)

    def poll(self, argument: None) -> None:
        if self.alive:
            running = {pool: tuple(self.sim.running(pool)) for pool in self.order}
            self.trace.events.append(("poll", self.sim.now, running))
        super().poll(argument)


def simulated() -> Trace:
    trace = Trace()
    sim = Simulation(scenario(), lambda s, i: TracedIngress(s, i, trace))
    send, finish = sim.send, sim.finish

    def traced_send(request: Request, replica: Any) -> None:
        trace.sends.append((request.id, request.pool, request.replica, request.reason))
        send(request, replica)

    def traced_finish(request: Request, code: int) -> None:
        if not request.done:
            trace.ends[request.id] = code
        finish(request, code)

    sim.send, sim.finish = traced_send, traced_finish  # type: ignore[method-assign]
    sim.run()
    return trace


class ScriptedTransport:
    """Calls answered by what the simulated replicas answered, when the trace says."""

    def __init__(self, sends: list[tuple[int, str, str, str]]) -> None:
        self.sends = sends
        self.waiting: dict[int, tuple[Attempt, asyncio.Future[Reply]]] = {}

    async def call(self, pool: str, replica: str, job: Job, attempt: Attempt) -> Reply:
        request = int(job.inputs["id"][0])
        self.sends.append((request, pool, replica, attempt.decision.reason.value))
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def call_off(why: str) -> None:
            if not future.done():
                from serving.routing.core import ReplicaGone

                future.set_exception(ReplicaGone(why))

        attempt.abort = call_off
        self.waiting[request] = (attempt, future)
        try:
            return await future
        finally:
            if self.waiting.get(request, (None,))[0] is attempt:
                del self.waiting[request]

    async def health(self, pool: str, replica: str | None, timeout_s: float) -> str | None:
        raise AssertionError("probes are replayed from the trace")

    def answer(
        self, request: int, pool: str, replica: str, status: str, held: int, run_s: float
    ) -> None:
        pending = self.waiting.get(request)
        if pending is None:
            return  # the simulated ingress ignored it too (an attempt already given up)
        attempt, future = pending
        if attempt.pool != pool or attempt.replica not in ("", replica) or future.done():
            return
        if status == "lost":
            future.set_exception(ReplicaUnreachable("lost while serving"))
            return
        statuses = {"ok": Status.OK, "full": Status.FULL, "expired": Status.EXPIRED}
        outputs = {"y": np.zeros(1)} if status == "ok" else None
        outcome = Outcome(statuses[status], outputs=outputs, run_s=run_s)
        future.set_result(Reply([outcome], replica=replica, held=held, replica_s=0.0))


async def replayed(trace: Trace) -> Trace:
    """The trace's events into the ingress's router, at the same virtual times."""
    spec = scenario()
    now = [0.0]
    clock = lambda: now[0]  # noqa: E731
    pools = {
        name: PoolConfig(
            max_ongoing_requests=p.max_ongoing_requests,
            max_queued_requests=p.max_queued_requests,
            replicas={"min": p.replicas, "max": p.replicas},
            batching={"max_batch_size": p.max_batch_size} if p.max_batch_size > 1 else None,
        )
        for name, p in spec.pools.items()
    }
    model = ModelConfig(
        variants={"stable": {"artifacts": {p: {"uri": "/x", "sha256": "0" * 64} for p in pools}}},
        routing={"pools": list(pools), **spec.routing.model_dump()},
        limits=spec.limits,
    )
    out = Trace()
    transport = ScriptedTransport(out.sends)
    router = ModelRouter(
        "ingress-0",
        model,
        pools,
        transport,
        NoEvents(),
        clock=clock,
        wall_clock=clock,
        rng=random.Random(spec.seed * 1000),
    )
    tasks: dict[int, asyncio.Task[Any]] = {}

    async def request(request_id: int, deadline: float) -> None:
        try:
            router.refuse_if_full()
            inputs = {"id": np.array([request_id])}
            await router.infer("stable", inputs, deadline)
        except (PoolSaturated, ModelUnavailable):
            out.ends[request_id] = SHED
        except (DeadlineExceeded, asyncio.CancelledError):
            out.ends[request_id] = TIMEOUT
        else:
            out.ends[request_id] = OK

    async def settle() -> None:
        for _ in range(12):
            await asyncio.sleep(0)

    for event in trace.events:
        kind, now[0] = event[0], event[1]
        if kind == "arrive":
            tasks[event[2]] = asyncio.ensure_future(request(event[2], event[3]))
        elif kind == "reply":
            transport.answer(*event[2:])
        elif kind == "timeout":
            task = tasks[event[2]]
            if not task.done():
                task.cancel()
        elif kind == "poll":
            for pool, running in event[2].items():
                router.set_running_replicas(pool, running)
        elif kind == "tick":
            router.check_stalls()
        elif kind == "recovered":
            router.core.recovered(event[2], event[3])
        await settle()
    for task in tasks.values():  # a request the trace never ended: a divergence, not a hang
        task.cancel()
    await asyncio.gather(*tasks.values(), return_exceptions=True)
    return out


@pytest.fixture(scope="module")
def both() -> tuple[Trace, Trace]:
    trace = simulated()
    return trace, asyncio.run(replayed(trace))


def test_the_trace_exercises_spill_shed_take_out_and_timeouts(both: tuple[Trace, Trace]) -> None:
    trace, _ = both
    reasons = {reason for *_, reason in trace.sends}
    assert {"primary", "saturated"} <= reasons or {"primary", "latency"} <= reasons, reasons
    ends = list(trace.ends.values())
    assert ends.count(OK) > 100 and ends.count(SHED) > 0
    kinds = {e[0] for e in trace.events}
    assert {"arrive", "reply", "poll", "tick"} <= kinds
    assert any(e[0] == "reply" and e[5] == "lost" for e in trace.events)  # the lost replica


def test_the_ingress_router_decides_as_the_simulated_one(both: tuple[Trace, Trace]) -> None:
    trace, replay = both
    assert len(replay.sends) == len(trace.sends)
    for index, (simulated_send, ingress_send) in enumerate(
        zip(trace.sends, replay.sends, strict=True)
    ):
        assert ingress_send == simulated_send, f"attempt {index} differs"
    assert replay.ends == trace.ends
