"""Retry storms, and the policy's queueing past the SLO while one lasts (injected clock)."""

from __future__ import annotations

from serving.routing.policy import Reason, SpilloverPolicy
from serving.routing.pool_stats import PoolView
from serving.routing.storm import HOLD_S, StormGuard


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_refusals_outnumbering_answers_several_times_over_are_a_storm() -> None:
    clock = FakeClock()
    guard = StormGuard(ratio=4.0, clock=clock)
    for _ in range(10):  # open-loop overload: as many refused as answered
        guard.answered()
        guard.refused()
    assert not guard.active
    for _ in range(40):  # the refused come straight back
        guard.refused()
    assert guard.active
    clock.now += HOLD_S + 0.1
    assert not guard.active


def test_a_few_refusals_at_start_up_are_no_storm_and_ratio_zero_never_is() -> None:
    clock = FakeClock()
    guard = StormGuard(ratio=4.0, clock=clock)
    for _ in range(9):
        guard.refused()
    assert not guard.active
    never = StormGuard(ratio=0.0, clock=clock)
    for _ in range(1000):
        never.refused()
    assert not never.active


def test_old_windows_are_forgotten() -> None:
    clock = FakeClock()
    guard = StormGuard(ratio=4.0, clock=clock)
    for _ in range(9):
        guard.refused()
    clock.now = 5.0  # long after: those nine do not add up with new ones
    for _ in range(9):
        guard.refused()
    assert not guard.active


def test_during_a_storm_the_policy_queues_up_to_the_pools_limits_instead_of_shedding() -> None:
    policy = SpilloverPolicy(slo_s=0.2, hysteresis=0.2, min_spill_s=1.0, clock=FakeClock())
    # within its limits but over the SLO (0.1 s x (1 + 8/4) = 0.3 s): shed normally
    busy = PoolView("cpu", healthy=True, held=11, capacity=4, queue_limit=8, service_time_s=0.1)
    assert policy.choose([busy]).reason is Reason.SHED
    assert not policy.admits([busy])
    assert policy.admits([busy], queue_past_slo=True)
    assert policy.choose([busy], queue_past_slo=True).pool == "cpu"
    # at its own limits a pool refuses, storm or not
    full = PoolView("cpu", healthy=True, held=12, capacity=4, queue_limit=8, service_time_s=0.1)
    assert policy.choose([full], queue_past_slo=True).reason is Reason.SHED
