"""The spillover policy, driven by an injected clock (no Ray, no sleeps)."""

from __future__ import annotations

from serving.routing.policy import Reason, SpilloverPolicy
from serving.routing.pool_stats import PoolStats, PoolView


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def view(
    name: str,
    *,
    inflight: int = 0,
    capacity: int = 4,
    queue: int = 4,
    service: float | None = 0.05,
    healthy: bool = True,
) -> PoolView:
    return PoolView(
        name=name,
        healthy=healthy,
        inflight=inflight,
        capacity=capacity,
        queue_limit=queue,
        service_time_s=service,
    )


def policy(clock: FakeClock) -> SpilloverPolicy:
    return SpilloverPolicy(slo_s=0.2, hysteresis=0.25, min_spill_s=2.0, clock=clock)


def test_preferred_pool_while_it_has_headroom() -> None:
    p = policy(FakeClock())
    decision = p.choose([view("gpu", inflight=3), view("cpu")])
    assert (decision.pool, decision.reason) == ("gpu", Reason.PRIMARY)


def test_spills_when_expected_wait_breaks_the_slo_then_comes_back_with_hysteresis() -> None:
    clock = FakeClock()
    p = policy(clock)
    # 4 running, 3 waiting: expected = 0.11 * (1 + 4/4) = 0.22 s > 0.2 s SLO
    busy = view("gpu", inflight=7, service=0.11)
    assert p.choose([busy, view("cpu")]).reason is Reason.SPILL_LATENCY
    # load drops just under the SLO but above SLO x 0.75: still spilling (hysteresis)
    clock.now = 5.0
    assert p.choose([view("gpu", inflight=4, service=0.18), view("cpu")]).pool == "cpu"
    # well under: but only after min_spill_s since spilling began
    clock.now = 1.0
    p2 = policy(clock)
    p2.choose([busy, view("cpu")])
    clock.now = 2.5
    assert p2.choose([view("gpu", inflight=0, service=0.05), view("cpu")]).pool == "cpu"
    clock.now = 3.5
    decision = p2.choose([view("gpu", inflight=0, service=0.05), view("cpu")])
    assert (decision.pool, decision.reason) == ("gpu", Reason.PRIMARY)
    assert not p2.spilling


def test_saturated_preferred_pool_spills_with_that_reason() -> None:
    p = policy(FakeClock())
    full = view("gpu", inflight=8, capacity=4, queue=4, service=None)
    decision = p.choose([full, view("cpu")])
    assert (decision.pool, decision.reason) == ("cpu", Reason.SPILL_SATURATED)


def test_fails_over_when_the_preferred_pool_has_no_healthy_replica() -> None:
    p = policy(FakeClock())
    decision = p.choose([view("gpu", healthy=False), view("cpu")])
    assert (decision.pool, decision.reason) == ("cpu", Reason.FAILOVER)


def test_sheds_when_no_pool_has_room_within_the_slo() -> None:
    p = policy(FakeClock())
    gpu_full = view("gpu", inflight=8, capacity=4, queue=4)
    cpu_full = view("cpu", inflight=6, capacity=2, queue=4)
    assert p.choose([gpu_full, cpu_full]).pool is None
    assert p.choose([gpu_full, cpu_full]).reason is Reason.SHED
    # the GPU would break the SLO (0.2 x 1.75 = 0.35 s) and the CPU is full: shed, not queue
    busy_gpu = view("gpu", inflight=6, capacity=4, queue=4, service=0.2)
    assert p.choose([busy_gpu, cpu_full]).reason is Reason.SHED
    # the CPU has room but would break the SLO too (busy, 0.3 s service): shed as well
    slow_cpu = view("cpu", inflight=1, capacity=2, queue=4, service=0.3)
    assert p.choose([busy_gpu, slow_cpu]).reason is Reason.SHED
    assert p.choose([view("gpu", healthy=False), cpu_full]).pool is None


def test_an_idle_pool_is_never_shed_for_its_stale_latency() -> None:
    p = policy(FakeClock())
    stale_gpu = view("gpu", inflight=9, capacity=4, queue=4, service=0.5)
    idle_cpu = view("cpu", inflight=0, service=0.9)  # last seen far over the 0.2 s SLO
    decision = p.choose([stale_gpu, idle_cpu])
    assert (decision.pool, decision.reason) == ("cpu", Reason.SPILL_SATURATED)


def test_hysteresis_keeps_using_the_preferred_pool_when_it_meets_the_slo() -> None:
    clock = FakeClock()
    p = policy(clock)
    p.choose([view("gpu", inflight=7, service=0.11), view("cpu")])  # spilling starts
    cpu_full = view("cpu", inflight=8, capacity=4, queue=4)
    # 0.16 s expected: under the SLO, above the resume level: still spilling, but the CPU is
    # full and the GPU meets the SLO, so it serves
    decision = p.choose([view("gpu", inflight=4, service=0.08), cpu_full])
    assert (decision.pool, decision.reason) == ("gpu", Reason.PRIMARY)


def test_pool_stats_track_inflight_latency_and_health() -> None:
    clock = FakeClock()
    stats = PoolStats("gpu", capacity=2, queue_limit=1, window=4, clock=clock)
    assert stats.view().service_time_s is None
    for latency in (0.1, 0.2, 0.3):
        stats.started()
        stats.finished(latency)
    stats.started()
    assert stats.view().inflight == 1
    assert stats.view().service_time_s == 0.2
    stats.set_capacity(0)
    assert not stats.view().healthy  # no replica running: not a candidate
    stats.set_capacity(2)
    clock.now = 7.0
    stats.mark_unhealthy()
    assert stats.unhealthy_since == 7.0 and not stats.view().healthy
    stats.mark_healthy()
    assert stats.view().healthy
