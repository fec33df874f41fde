"""The spillover policy, driven by an injected clock (no Ray, no sleeps)."""

from __future__ import annotations

import pytest

from serving.routing.policy import Decision, Reason, SpilloverPolicy
from serving.routing.pool_stats import PoolView


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def view(
    name: str,
    *,
    held: int = 0,
    capacity: int = 4,
    queue: int = 4,
    service: float | None = 0.05,
    last: float | None = None,
    healthy: bool = True,
) -> PoolView:
    return PoolView(
        name=name,
        healthy=healthy,
        held=held,
        capacity=capacity,
        queue_limit=queue,
        service_time_s=service,
        last_service_time_s=last if last is not None else service,
    )


def policy(clock: FakeClock) -> SpilloverPolicy:
    return SpilloverPolicy(slo_s=0.2, hysteresis=0.25, min_spill_s=2.0, clock=clock)


def test_preferred_pool_while_it_has_headroom() -> None:
    p = policy(FakeClock())
    decision = p.choose([view("gpu", held=3), view("cpu")])
    assert (decision.pool, decision.reason) == ("gpu", Reason.PRIMARY)


def test_spills_when_expected_wait_breaks_the_slo_then_comes_back_with_hysteresis() -> None:
    clock = FakeClock()
    p = policy(clock)  # SLO 0.2 s, resume below 0.15 s, spill state at least 2 s
    # 4 running, 3 waiting: a whole round of 4 before it, expected = 0.11 x 2 = 0.22 s
    busy = view("gpu", held=7, service=0.11)
    assert p.choose([busy, view("cpu")]) == Decision("cpu", Reason.SPILL_LATENCY, 0.2)
    assert p.spilling
    # under the SLO but above 0.15 s while spilling: still spills (hysteresis), but for a
    # sample request now and then (it has an idle slot)
    clock.now = 1.0
    marginal = [view("gpu", held=3, service=0.18), view("cpu")]
    assert p.choose(marginal) == Decision("gpu", Reason.SAMPLE)
    assert p.choose(marginal).pool == "cpu"
    # clearly under: the preferred pool takes it, though spilling lasts
    assert p.choose([view("gpu", held=3, service=0.1), view("cpu")]).pool == "gpu"
    assert p.spilling
    # 2 s since the last spill: over; up to the SLO again
    clock.now = 3.5
    decision = p.choose([view("gpu", held=3, service=0.18), view("cpu")])
    assert decision == Decision("gpu", Reason.PRIMARY, 0.2)
    assert not p.spilling


def test_saturated_preferred_pool_spills_with_that_reason() -> None:
    p = policy(FakeClock())
    full = view("gpu", held=8, capacity=4, queue=4, service=None)
    decision = p.choose([full, view("cpu")])
    assert (decision.pool, decision.reason) == ("cpu", Reason.SPILL_SATURATED)


def test_fails_over_when_the_preferred_pool_has_no_healthy_replica() -> None:
    p = policy(FakeClock())
    decision = p.choose([view("gpu", healthy=False), view("cpu")])
    assert (decision.pool, decision.reason) == ("cpu", Reason.FAILOVER)


def test_sheds_when_no_pool_has_room_within_the_slo() -> None:
    p = policy(FakeClock())
    gpu_full = view("gpu", held=8, capacity=4, queue=4)
    cpu_full = view("cpu", held=6, capacity=2, queue=4)
    assert p.choose([gpu_full, cpu_full]).pool is None
    assert p.choose([gpu_full, cpu_full]).reason is Reason.SHED
    # the GPU would break the SLO (0.2 x 1.75 = 0.35 s) and the CPU is full: shed, not queue
    busy_gpu = view("gpu", held=6, capacity=4, queue=4, service=0.2)
    assert p.choose([busy_gpu, cpu_full]).reason is Reason.SHED
    # the CPU has room in its queue but would break the SLO too (both slots busy, 0.3 s
    # service): shed as well
    slow_cpu = view("cpu", held=2, capacity=2, queue=4, service=0.3)
    assert p.choose([busy_gpu, slow_cpu]).reason is Reason.SHED
    assert p.choose([view("gpu", healthy=False), cpu_full]).pool is None


def test_a_pool_is_tried_when_its_latency_is_stale_but_not_when_it_is_fresh_and_slow() -> None:
    p = policy(FakeClock())
    full_gpu = view("gpu", held=9, capacity=4, queue=4, service=0.5)
    # no fresh figure (it aged out): an idle pool is worth a try
    stale_cpu = view("cpu", held=0, service=None)
    decision = p.choose([full_gpu, stale_cpu])
    assert (decision.pool, decision.reason) == ("cpu", Reason.SPILL_SATURATED)
    # a fresh figure far over the 0.2 s SLO, every slot busy: it cannot meet it; shed
    slow_cpu = view("cpu", held=4, service=0.9)
    assert p.choose([full_gpu, slow_cpu]).reason is Reason.SHED


def test_a_pool_last_seen_slow_gets_samples_not_a_refill_when_its_figures_age_out() -> None:
    clock = FakeClock()
    p = policy(clock)
    full_gpu = view("gpu", held=8, capacity=4, queue=4)
    # the CPU pool broke the SLO; its figures aged out: its free slots take work (nothing
    # waits there), its queue only one sample per interval, not filled up again (it would
    # break the SLO for all it held)
    was_slow = view("cpu", held=4, capacity=4, service=None, last=0.9)
    assert p.choose([full_gpu, was_slow]).reason is Reason.SHED
    assert p.admits([full_gpu, was_slow])  # the edge lets it through: choose decides
    idle_but_slow = view("cpu", held=3, capacity=4, service=None, last=0.9)
    reasons = [p.choose([full_gpu, idle_but_slow]).reason for _ in range(3)]
    assert reasons == [Reason.SPILL_SATURATED] * 3
    # last seen fast: an idle pool with nothing fresh takes work up to its limits
    was_fast = view("cpu", held=3, capacity=4, service=None, last=0.05)
    assert p.choose([full_gpu, was_fast]).pool == "cpu"


def test_a_decision_carries_the_bound_the_replica_must_meet() -> None:
    clock = FakeClock()
    p = policy(clock)
    assert p.choose([view("gpu"), view("cpu")]).within_s == 0.2
    p.choose([view("gpu", held=8, capacity=4, queue=4), view("cpu")])  # spilling starts
    # while spilling the preferred pool is held to the resume level, 0.2 x (1 - 0.25)
    assert p.choose([view("gpu"), view("cpu")]).within_s == pytest.approx(0.15)


def test_hysteresis_keeps_using_the_preferred_pool_when_it_meets_the_slo() -> None:
    clock = FakeClock()
    p = policy(clock)
    p.choose([view("gpu", held=7, service=0.11), view("cpu")])  # spilling starts
    cpu_full = view("cpu", held=8, capacity=4, queue=4)
    # 0.16 s expected: under the SLO, above the resume level: still spilling, but the CPU is
    # full and the GPU meets the SLO, so it serves
    decision = p.choose([view("gpu", held=4, service=0.08), cpu_full])
    assert (decision.pool, decision.reason) == ("gpu", Reason.PRIMARY)


def test_while_spilling_one_request_per_interval_samples_the_preferred_pool() -> None:
    clock = FakeClock()
    p = SpilloverPolicy(slo_s=0.2, hysteresis=0.25, min_spill_s=2.0, clock=clock, sample_s=0.5)
    slow_but_idle = [view("gpu", held=0, service=0.5), view("cpu")]
    reasons = []
    for step in range(20):  # 2 s at 10 requests per second
        clock.now = step * 0.1
        reasons.append(p.choose(slow_but_idle).reason)
    assert reasons.count(Reason.SAMPLE) == 4  # at 0, 0.5, 1.0 and 1.5 s
    assert reasons.count(Reason.SPILL_LATENCY) == 16
    # a busy preferred pool (no idle slot) is not sampled: the sample would only queue
    busy = [view("gpu", held=4, capacity=4, service=0.5), view("cpu")]
    clock.now = 10.0
    assert p.choose(busy).reason is Reason.SPILL_LATENCY


def test_admits_says_what_choose_would_do_without_changing_state() -> None:
    clock = FakeClock()
    p = policy(clock)
    full = [view("gpu", held=8, capacity=4, queue=4), view("cpu", held=6, capacity=2, queue=4)]
    open_ = [view("gpu", held=8, capacity=4, queue=4), view("cpu", held=1, capacity=2)]
    assert not p.admits(full)
    assert p.admits(open_)
    assert not p.spilling  # admits() started no spill
    assert p.choose(full).reason is Reason.SHED
    assert p.choose(open_).pool == "cpu"


def test_a_request_that_would_wait_behind_nothing_is_served_whatever_the_estimate() -> None:
    """Work-conserving: a model slower than its SLO, one client at a time, is never refused
    (shedding a request that would start at once protects no one)."""
    clock = FakeClock()
    p = policy(clock)  # SLO 0.2 s
    slow_alone = [view("cpu", held=0, capacity=2, service=0.9)]
    assert p.admits(slow_alone)
    # a sample now and then re-measures it; every other request takes the free slot
    assert [p.choose(slow_alone).pool for _ in range(5)] == ["cpu"] * 5
    assert p.choose(slow_alone) == Decision("cpu", Reason.PRIMARY)  # no bound to meet
    # a second request beside it: a slot is still free, it starts at once too
    assert p.choose([view("cpu", held=1, capacity=2, service=0.9)]).pool == "cpu"
    # both slots busy: it would queue behind a request over the SLO; shed
    busy = [view("cpu", held=2, capacity=2, service=0.9)]
    assert not p.admits(busy)
    assert p.choose(busy).reason is Reason.SHED
    # failing over to a slow pool: its free slot serves too
    failover = [view("gpu", healthy=False), view("cpu", held=0, service=0.9)]
    assert p.choose(failover) == Decision("cpu", Reason.FAILOVER)
