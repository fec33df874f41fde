"""The routing-policy seam: the policy is chosen by the routing settings, and a second
policy behind the same ABC runs in the router core and in the simulator unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from serving.config import RoutingSettings
from serving.routing.core import PoolLimits, RouterCore
from serving.routing.fallback import FallbackPolicy
from serving.routing.policy import Reason, SpilloverPolicy
from simulate import parse_scenario, simulate
from simulate.engine import OK
from tests.serving.routing.test_policy import FakeClock, view


def core(policy: str, clock: FakeClock) -> RouterCore:
    pools = {"fast": PoolLimits(capacity=2, queue=2, expected=1)}
    pools["slow"] = PoolLimits(capacity=2, queue=2, expected=1)
    routing = RoutingSettings(policy=policy, slo_p99_seconds=0.5)  # type: ignore[arg-type]
    router = RouterCore("m", ["fast", "slow"], pools, routing, deadline_s=10, clock=clock)
    for pool in pools:
        router.set_running_replicas(pool, [f"{pool}-1"])
    return router


@pytest.mark.parametrize(
    ("name", "kind"), [("spillover", SpilloverPolicy), ("fallback", FallbackPolicy)]
)
def test_the_settings_choose_the_policy(name: str, kind: type) -> None:
    assert isinstance(core(name, FakeClock()).policy, kind)


def test_a_slow_preferred_pool_spills_by_the_slo_or_keeps_its_traffic_by_policy() -> None:
    """One second a call on the preferred pool (twice the SLO): spillover sends the request
    to the next pool, fallback keeps it where there is room, until its limits are full."""
    decisions: dict[str, list[tuple[str, Reason]]] = {}
    for name in ("spillover", "fallback"):
        router = core(name, FakeClock())
        router.stats["fast"].record_service(1.0)
        decisions[name] = []
        for _ in range(5):  # the fast pool holds 2 running + 2 waiting
            attempt = router.next(router.begin("stable", 1, deadline=100.0))
            decisions[name].append((attempt.pool, attempt.decision.reason))
    # one request re-measures the slow pool (a sample), the rest spill
    assert decisions["spillover"][:2] == [("fast", Reason.SAMPLE), ("slow", Reason.SPILL_LATENCY)]
    assert decisions["fallback"][:4] == [("fast", Reason.PRIMARY)] * 4
    assert decisions["fallback"][4] == ("slow", Reason.SPILL_SATURATED)


def test_fallback_sheds_only_when_every_pool_is_full() -> None:
    policy = FallbackPolicy()
    full = [view("fast", held=8), view("slow", held=8)]
    assert not policy.admits(full) and policy.choose(full).pool is None
    lost = [view("fast", healthy=False), view("slow")]
    assert policy.choose(lost).reason is Reason.FAILOVER


def scenario(policy: str) -> Any:
    return parse_scenario(
        {
            "name": "seam",
            "seed": 5,
            "routing": {"policy": policy, "slo_p99_seconds": 0.3},
            "inputs": {"seconds": {3: 1}},
            "pools": {
                "gpu": {
                    "replicas": 2,
                    "max_queued_requests": 8,
                    "service": {"base_seconds": 0.0, "per_row_seconds": 0.1, "source": "t"},
                },
                "cpu": {
                    "replicas": 2,
                    "max_queued_requests": 8,
                    "service": {"base_seconds": 0.0, "per_row_seconds": 0.2, "source": "t"},
                },
            },
            "arrivals": [{"name": "over", "seconds": 30, "load": 1.3}],
        }
    )


def test_the_simulator_runs_the_second_policy_through_the_same_router() -> None:
    """Past the fast pool's capacity, spillover holds the SLO by sending the excess on and
    shedding the rest; fallback queues to the pools' limits, so it sheds less and answers
    later."""
    records = {name: simulate(scenario(name), "sluiceway") for name in ("spillover", "fallback")}
    for name, run in records.items():
        served = [e - a for a, e, c in zip(run.arrival, run.end, run.code, strict=True) if c == OK]
        served.sort()
        p99 = served[int(0.99 * (len(served) - 1))]
        records[name] = (p99, run.code.count(OK) / len(run.code), set(run.reason))  # type: ignore[assignment]
    spill_p99, spill_ok, spill_reasons = records["spillover"]  # type: ignore[misc]
    fall_p99, fall_ok, fall_reasons = records["fallback"]  # type: ignore[misc]
    assert spill_p99 < 0.35 < 2 * spill_p99 < fall_p99  # the SLO is 0.3 s
    assert fall_ok > spill_ok
    assert "latency" in spill_reasons and "latency" not in fall_reasons
