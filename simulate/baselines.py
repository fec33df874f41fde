"""What users would run instead, on the same arrivals, replicas and failures.

- ``gpu-only``: Sluiceway's own routing over the preferred pool alone (it sheds by the
  SLO), as if there were no spillover pool.
- ``static-split``: each request to a pool at random, in proportion to the pools'
  capacities, whatever their load; within the pool the better of two random replicas; no
  SLO (a replica that holds all it may refuses, and the request is retried a few times).
- ``pow2``: power of two choices over every replica of every pool, no SLO, unbounded
  replica queues: nothing is refused, late answers time out.
- ``serve-default``: Ray Serve as it comes: one deployment over every pool's replicas,
  power of two choices among the replicas below ``max_ongoing_requests`` (a replica holds
  no more), the rest waiting in the router's queue (unbounded, ``max_queued_requests:
  -1``) until a replica frees a slot; no SLO, late answers time out.
- ``serve-fallback``: what a Serve user builds from two deployments: the preferred pool
  first, the next one when it pushes back (full to its own limits), whatever the latency;
  Sluiceway's router under its ``fallback`` policy.

Baselines see each replica's true queue length (as Serve's probes do); Sluiceway's
ingresses see only the replicas' reports, stale as they go.
"""

from __future__ import annotations

import random
from collections import deque

from simulate.engine import (
    OK,
    SHED,
    TIMEOUT,
    Ingress,
    Replica,
    Reply,
    Request,
    Simulation,
    SluicewayIngress,
)

RETRIES = 3  # a refused request goes to at most this many more replicas


def gpu_only(sim: Simulation, index: int) -> Ingress:
    return SluicewayIngress(sim, index, [sim.scenario.preferred])


class _TwoChoices(Ingress):
    """The better of two random replicas, by their true queue length."""

    def __init__(self, sim: Simulation, index: int) -> None:
        super().__init__(sim, index)
        self.rng = random.Random(sim.scenario.seed * 7919 + index)
        self.tries: dict[int, int] = {}

    def candidates(self, request: Request) -> list[Replica]:
        raise NotImplementedError

    def arrive(self, request: Request) -> None:
        self.pending[request.id] = request
        self.tries[request.id] = 0
        self.route(request)

    def route(self, request: Request) -> None:
        live = self.candidates(request)
        if not live or self.tries[request.id] > RETRIES:
            self._end(request, SHED)
            return
        self.tries[request.id] += 1
        if len(live) == 1:
            chosen = live[0]
        else:
            first, second = self.rng.sample(live, 2)
            chosen = first if first.queue.held <= second.queue.held else second
        request.pool, request.replica = chosen.pool, chosen.id
        request.sent_at = self.sim.now
        self.sim.send(request, chosen)

    def _end(self, request: Request, code: int) -> None:
        self.pending.pop(request.id, None)
        self.tries.pop(request.id, None)
        self.sim.finish(request, code)

    def on_reply(self, reply: Reply) -> None:
        request = reply.request
        if request.done or not self.alive or reply.replica.id != request.replica:
            return
        if reply.status in ("full", "lost"):
            self.route(request)
        elif reply.status == "expired":
            self._end(request, TIMEOUT)
        else:
            request.reason = "primary" if request.pool == self.sim.scenario.preferred else "split"
            self._end(request, OK)

    def timed_out(self, request: Request) -> None:
        if request.entry is not None:
            self.sim.replica(request.pool, request.replica).queue.cancel(request.entry)
            request.entry = None
        self._end(request, TIMEOUT)


class StaticSplit(_TwoChoices):
    def __init__(self, sim: Simulation, index: int) -> None:
        super().__init__(sim, index)
        scenario = sim.scenario
        self.pools = list(scenario.pools)
        self.weights = [scenario.capacity_per_s(p) for p in self.pools]

    def arrive(self, request: Request) -> None:
        request.pool = self.rng.choices(self.pools, self.weights)[0]
        super().arrive(request)

    def candidates(self, request: Request) -> list[Replica]:
        return self.sim.live_replicas(request.pool)


class PowerOfTwo(_TwoChoices):
    def candidates(self, request: Request) -> list[Replica]:
        return [r for pool in self.sim.scenario.pools for r in self.sim.live_replicas(pool)]


class ServeDefault(_TwoChoices):
    """Serve's router: two choices among the replicas with a free slot (a replica holds no
    more than it runs at once, the pool's ``max_ongoing_requests`` x batch: its queue limit
    is 0 here), counting what this router has sent that has not arrived yet, else the
    router's queue, first come first served."""

    def __init__(self, sim: Simulation, index: int) -> None:
        super().__init__(sim, index)
        self.waiting: deque[Request] = deque()
        self.queued: set[int] = set()  # ids in ``waiting`` not yet timed out
        self.in_transit: dict[str, list[Request]] = {}  # replica -> sent, not yet there

    def _on_the_way(self, replica: Replica) -> int:
        sent = [
            r
            for r in self.in_transit.get(replica.id, [])
            if r.entry is None and not r.done and r.replica == replica.id
        ]
        self.in_transit[replica.id] = sent
        return len(sent)

    def candidates(self, request: Request) -> list[Replica]:
        return [
            r
            for pool in self.sim.scenario.pools
            for r in self.sim.live_replicas(pool)
            if self._room(r)
        ]

    def route(self, request: Request) -> None:
        if not self.candidates(request):
            self.waiting.append(request)  # the router's queue: no limit, no refusal
            self.queued.add(request.id)
            return
        self.tries[request.id] = 0  # a refusal comes only from a race: never shed
        super().route(request)
        if request.replica is not None and not request.done:
            self.in_transit.setdefault(request.replica, []).append(request)

    def _room(self, replica: Replica) -> bool:
        free = replica.alive and not replica.retiring
        return free and replica.queue.held + self._on_the_way(replica) < replica.queue.capacity

    def on_reply(self, reply: Reply) -> None:
        super().on_reply(reply)
        replica = reply.replica
        while self.waiting and self._room(replica):  # its freed slot: the oldest waiting
            request = self.waiting.popleft()
            if request.id not in self.queued:
                continue  # timed out while it waited
            self.queued.discard(request.id)
            request.pool, request.replica = replica.pool, replica.id
            request.sent_at = self.sim.now
            self.in_transit.setdefault(replica.id, []).append(request)
            self.sim.send(request, replica)

    def timed_out(self, request: Request) -> None:
        if request.id in self.queued:
            self.queued.discard(request.id)
            self._end(request, TIMEOUT)
            return
        super().timed_out(request)


def serve_fallback(sim: Simulation, index: int) -> Ingress:
    return SluicewayIngress(sim, index, list(sim.scenario.pools), policy="fallback")


UNBOUNDED = 10**9  # Serve queues without limit by default (max_queued_requests: -1)
