"""Load generators for the bench: closed-loop clients and open-loop (Poisson) arrivals.

Closed loop: each client sends its next request as soon as the last one ends, as retry
loops do; with ``honour_retry_after`` a refused client first waits what ``Retry-After`` says.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx
import numpy as np

Send = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass(frozen=True)
class Control:
    """A control request sent beside the load, and the status it must get to count: an
    error answered instead would be quoted as the path's floor."""

    send: Send
    status: int


@dataclass
class Outcomes:
    """What one load step got back."""

    seconds: float
    answered: list[float] = field(default_factory=list)  # latencies of 200s
    refused: list[float] = field(default_factory=list)  # latencies of 503s
    refused_in_ingress: list[float] = field(default_factory=list)  # their Server-Timing
    other: dict[int, int] = field(default_factory=dict)  # other codes (-1: transport error)
    by_pool: dict[str, int] = field(default_factory=dict)
    probes: dict[str, list[float]] = field(default_factory=dict)  # controls' latencies
    probe_misses: dict[str, int] = field(default_factory=dict)  # controls answered otherwise

    def record(self, response: httpx.Response | None, latency: float) -> None:
        if response is None:
            self.other[-1] = self.other.get(-1, 0) + 1
        elif response.status_code == 200:
            self.answered.append(latency)
            pool = response.headers.get("x-sluiceway-pool", "-")
            self.by_pool[pool] = self.by_pool.get(pool, 0) + 1
        elif response.status_code == 503:
            self.refused.append(latency)
            timing = response.headers.get("server-timing", "")
            if timing.startswith("ingress;dur="):
                self.refused_in_ingress.append(float(timing.partition(";dur=")[2]) / 1e3)
        else:
            self.other[response.status_code] = self.other.get(response.status_code, 0) + 1

    def rate(self, values: list[float]) -> float:
        return len(values) / self.seconds

    def within(self, slo_s: float) -> float:
        """Answered within ``slo_s``, per second."""
        return sum(1 for v in self.answered if v <= slo_s) / self.seconds

    @staticmethod
    def quantile(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")


async def closed_loop(
    send: Send,
    *,
    clients: int,
    seconds: float,
    honour_retry_after: bool,
    warmup_s: float = 1.0,
    probes: dict[str, Control] | None = None,
    probe_every_s: float = 0.05,
) -> Outcomes:
    """``clients`` loops for ``warmup_s`` (not counted) then ``seconds`` (counted).

    ``probes``: control requests, each sent every ``probe_every_s`` from the same event loop
    while the clients run, their latencies kept by name when they got the status they
    expect (the others, and transport errors, counted in ``probe_misses``).
    """
    probes = probes or {}
    room = clients + len(probes) + 4
    limits = httpx.Limits(max_connections=room, max_keepalive_connections=room)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        begin = time.perf_counter() + warmup_s
        end = begin + seconds
        outcomes = Outcomes(seconds)

        async def one_client() -> None:
            while (now := time.perf_counter()) < end:
                response: httpx.Response | None
                try:
                    response = await send(client)
                except httpx.TransportError:
                    response = None
                if now >= begin:
                    outcomes.record(response, time.perf_counter() - now)
                if honour_retry_after and response is not None and response.status_code == 503:
                    await asyncio.sleep(float(response.headers.get("retry-after", "1")))

        async def one_probe(name: str, probe: Control) -> None:
            times = outcomes.probes.setdefault(name, [])
            outcomes.probe_misses[name] = 0
            while (now := time.perf_counter()) < end:
                try:
                    status: int | None = (await probe.send(client)).status_code
                except httpx.TransportError:
                    status = None
                if now >= begin and status == probe.status:
                    times.append(time.perf_counter() - now)
                elif now >= begin:
                    outcomes.probe_misses[name] += 1
                await asyncio.sleep(probe_every_s)

        await asyncio.gather(
            *(one_client() for _ in range(clients)),
            *(one_probe(name, probe) for name, probe in probes.items()),
        )
    return outcomes


async def open_loop(send: Send, *, rate: float, seconds: float, seed: int = 7) -> Outcomes:
    """Poisson arrivals at ``rate`` per second for ``seconds``, whatever the answers."""
    rng = random.Random(seed)
    outcomes = Outcomes(seconds)
    limits = httpx.Limits(max_connections=500)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def one() -> None:
            start = time.perf_counter()
            try:
                response: httpx.Response | None = await send(client)
            except httpx.TransportError:
                response = None
            outcomes.record(response, time.perf_counter() - start)

        tasks = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(rng.expovariate(rate))
        await asyncio.gather(*tasks)
    return outcomes
