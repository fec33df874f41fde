"""What users would run instead, on the same arrivals, replicas and failures.

- ``gpu-only``: Sluiceway's own routing over the preferred pool alone (it sheds by the
  SLO), as if there were no spillover pool.
- ``static-split``: each request to a pool at random, in proportion to the pools'
  capacities, whatever their load; within the pool the better of two random replicas; no
  SLO (a replica that holds all it may refuses, and the request is retried a few times).
- ``pow2``: Ray Serve's default, power of two choices over every replica of every pool,
  no SLO, unbounded queues: nothing is refused, late answers time out.

Baselines see each replica's true queue length (as Serve's probes do); Sluiceway's
ingresses see only the replicas' reports, stale as they go.
"""

from __future__ import annotations

import random

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


UNBOUNDED = 10**9  # Serve queues without limit by default (max_queued_requests: -1)
