"""The cluster simulator: queueing theory, the baselines, Sluiceway's goals, scenarios, CLI.

Runs the real routing code (policy, pool statistics, replica queue) on a virtual clock; no
Ray, no sleeps. Every scenario is seeded, so every figure here is reproducible.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from serving.errors import ScenarioError
from simulate import POLICIES, load_scenario, parse_scenario, simulate
from simulate.engine import BUCKET_S, OK, SHED, TIMEOUT, Records
from simulate.report import checks, summarize

ROOT = Path(__file__).resolve().parents[2]


def erlang_c_wait(servers: int, rate: float, service_rate: float) -> float:
    """Mean time in queue of an M/M/c queue (Erlang C)."""
    offered = rate / service_rate
    below = sum(offered**k / math.factorial(k) for k in range(servers))
    top = offered**servers / math.factorial(servers) / (1 - offered / servers)
    return top / (below + top) / (servers * service_rate - rate)


def test_one_pool_mmc_waits_as_erlang_c_says() -> None:
    servers, service_rate, rate = 4, 10.0, 32.0  # 80 % busy
    scenario = parse_scenario(
        {
            "name": "mmc",
            "seed": 1,
            "network_seconds": 0,
            "pools": {
                "only": {
                    "replicas": 1,
                    "max_ongoing_requests": servers,
                    "max_queued_requests": 10**6,
                    "service": {
                        "base_seconds": 0,
                        "per_row_seconds": 1 / service_rate,
                        "reference_input_seconds": 1,
                        "distribution": "exponential",
                        "source": "M/M/c",
                    },
                }
            },
            "inputs": {"seconds": {1: 1}},
            "routing": {"slo_p99_seconds": 1e6, "stall_seconds": 1e5},
            "limits": {"deadline_seconds": 1e6},
            "arrivals": [{"name": "steady", "seconds": 4000, "rate": rate}],
        }
    )
    records = simulate(scenario, "sluiceway")
    arrival, end = np.asarray(records.arrival), np.asarray(records.end)
    warm = (arrival > 50) & (np.asarray(records.code) == OK)
    assert warm.sum() > 100_000
    waited = float((end - arrival)[warm].mean()) - 1 / service_rate
    assert waited == pytest.approx(erlang_c_wait(servers, rate, service_rate), rel=0.05)


def small(**changes: Any) -> dict[str, Any]:
    """10 GPU replicas (batches of 8) + 20 CPU replicas, 2 ingresses; 30 s clips, service
    times as in the shipped scenario."""
    data: dict[str, Any] = {
        "name": "small",
        "seed": 3,
        "ingresses": 2,
        "routing": {"slo_p99_seconds": 0.5, "min_spill_seconds": 2},
        "limits": {"deadline_seconds": 10},
        "inputs": {"seconds": {30: 1}},
        "pools": {
            "gpu": {
                "replicas": 10,
                "max_batch_size": 8,
                "max_queued_requests": 8,
                "startup_seconds": 5,
                "service": {"base_seconds": 0.0063, "per_row_seconds": 0.0017, "source": "t"},
            },
            "cpu": {
                "replicas": 20,
                "max_queued_requests": 0,
                "startup_seconds": 5,
                "service": {"base_seconds": 0, "per_row_seconds": 0.023, "source": "t"},
            },
        },
        "arrivals": [
            {"name": "0.5x", "seconds": 10, "load": 0.5},
            {"name": "1.5x", "seconds": 10, "load": 1.5},
            {"name": "2.5x", "seconds": 10, "load": 2.5},
            {"name": "one replica lost", "seconds": 20, "load": 0.8},
        ],
        "failures": [{"at_seconds": 31, "kind": "replica_lost", "pool": "gpu"}],
    }
    data.update(changes)
    return data


@pytest.fixture(scope="module")
def runs() -> dict[str, Records]:
    scenario = parse_scenario(small())
    return {policy: simulate(scenario, policy) for policy in POLICIES}


def served_by(records: Records, start: float, stop: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for arrival, code, pool in zip(records.arrival, records.code, records.pool, strict=True):
        if start <= arrival < stop and code == OK:
            counts[pool] = counts.get(pool, 0) + 1
    return counts


def shed_share(records: Records, start: float, stop: float) -> float:
    codes = [c for a, c in zip(records.arrival, records.code, strict=True) if start <= a < stop]
    return codes.count(SHED) / len(codes)


def test_every_policy_sees_the_same_requests(runs: dict[str, Records]) -> None:
    arrivals = {policy: sorted(r.arrival) for policy, r in runs.items()}
    assert len({tuple(a) for a in arrivals.values()}) == 1


def test_gpu_only_never_uses_the_cpu_pool_and_sheds_above_the_gpus(
    runs: dict[str, Records],
) -> None:
    records = runs["gpu-only"]
    assert "cpu" not in served_by(records, 0, 40)
    assert shed_share(records, 20, 30) > 0.5  # 2.5x the GPU pool's capacity


def test_static_split_sends_the_cpu_its_share_of_capacity_even_when_gpus_idle(
    runs: dict[str, Records],
) -> None:
    scenario = parse_scenario(small())
    gpu, cpu = scenario.capacity_per_s("gpu"), scenario.capacity_per_s("cpu")
    counts = served_by(runs["static-split"], 0, 10)  # half the GPUs' capacity offered
    assert counts["cpu"] / sum(counts.values()) == pytest.approx(cpu / (gpu + cpu), abs=0.02)


def test_power_of_two_sheds_nothing_and_its_latency_grows_without_bound(
    runs: dict[str, Records],
) -> None:
    records = runs["pow2"]
    assert SHED not in records.code
    assert set(served_by(records, 0, 10)) == {"gpu", "cpu"}  # any replica, whatever its pool
    late = [
        end - arrival
        for arrival, end, code in zip(records.arrival, records.end, records.code, strict=True)
        if 25 <= arrival < 30 and code == OK
    ]  # 2.5x for 5 s already: queues of seconds
    assert np.percentile(late, 50) > 1.0


def test_serve_as_it_comes_holds_the_excess_in_its_router_and_times_it_out(
    runs: dict[str, Records],
) -> None:
    """Serve's default: no replica holds more than it runs at once, the rest waits in the
    router (no refusal): under 2.5x load the waits reach the deadline."""
    records = runs["serve-default"]
    assert SHED not in records.code
    assert set(served_by(records, 0, 10)) == {"gpu", "cpu"}  # one deployment over both
    late = [
        code
        for arrival, code in zip(records.arrival, records.code, strict=True)
        if 25 <= arrival < 30
    ]
    assert late.count(TIMEOUT) / len(late) > 0.2


def test_the_two_deployment_fallback_fills_the_cpu_pool_whatever_its_latency(
    runs: dict[str, Records],
) -> None:
    """What a Serve user builds (preferred deployment, the next on back-pressure): the
    CPU pool takes work only once the GPUs are full to their limits, then all it can."""
    records = runs["serve-fallback"]
    assert "cpu" not in served_by(records, 0, 10)  # room on the GPUs
    assert "cpu" in served_by(records, 10, 30)


def test_sluiceway_meets_its_goals_where_the_baselines_do_not(runs: dict[str, Records]) -> None:
    scenario = parse_scenario(small())
    met = {
        policy: {what: ok for what, ok, _ in checks(scenario, summarize(scenario, records))}
        for policy, records in runs.items()
    }
    assert all(met["sluiceway"].values()), met["sluiceway"]
    assert "cpu" not in served_by(runs["sluiceway"], 0, 10)  # room on the GPUs: no spill
    assert "cpu" in served_by(runs["sluiceway"], 10, 30)
    assert not all(met["pow2"].values())  # no SLO: its P99 breaks it
    assert not all(met["serve-default"].values())  # nor Serve's own router queue
    assert not all(met["gpu-only"].values())  # sheds what the CPU pool could serve


def test_failures_of_every_kind_lose_only_what_the_failed_part_held() -> None:
    scenario = parse_scenario(
        small(
            arrivals=[{"name": "steady", "seconds": 40, "load": 0.8}],
            failures=[
                {"at_seconds": 5, "kind": "replica_stalled", "pool": "gpu", "seconds": 10},
                {"at_seconds": 10, "kind": "node_lost", "pool": "gpu", "count": 3},
                {"at_seconds": 20, "kind": "ingress_lost", "index": 1},
                {"at_seconds": 25, "kind": "pool_lost", "pool": "gpu", "seconds": 5},
            ],
        )
    )
    records = simulate(scenario, "sluiceway")
    lost = [a for a, c in zip(records.arrival, records.code, strict=True) if c == 0]
    assert lost and all(19 < a <= 20 for a in lost)  # only what ingress 1 held
    served_after = served_by(records, 20.5, 25)
    assert sum(served_after.values()) > 0  # the other ingress takes all the traffic
    assert served_by(records, 26, 35).get("gpu", 0) == 0  # the GPU pool is gone...
    assert served_by(records, 26, 35).get("cpu", 0) > 0  # ...and the CPU pool serves
    assert served_by(records, 37, 40).get("gpu", 0) > 0  # back after 5 s + 5 s start-up


def live_replicas(records: Records, pool: str, bucket: int) -> float:
    return records.slots[pool][bucket] / BUCKET_S


def test_autoscaling_adds_replicas_after_their_startup_and_drains_surplus_ones() -> None:
    pools = small()["pools"]
    pools["gpu"] |= {
        "replicas": 2,
        "autoscaling": {
            "min_replicas": 2,
            "max_replicas": 10,
            "target_ongoing_requests": 8,
            "period_seconds": 1,
        },
    }
    scenario = parse_scenario(
        small(
            pools=pools,
            arrivals=[
                {"name": "busy", "seconds": 30, "rate": 600},  # 15 replicas' worth
                {"name": "calm", "seconds": 20, "rate": 2},
            ],
            failures=[],
        )
    )
    records = simulate(scenario, "sluiceway")
    assert live_replicas(records, "gpu", 3) == 2  # asked for at 1 s, up 5 s later
    # it sees what the replicas hold (shed requests never reach it): the pool doubles
    # at most once per start-up, as (batch + queue) / target = 2
    assert live_replicas(records, "gpu", 7) == 4
    assert live_replicas(records, "gpu", 28) == 10
    assert live_replicas(records, "gpu", 48) == 2  # drained after the busy phase
    lost = [c for c in records.code if c == 0]
    assert not lost  # a replica scaled down finishes what it holds


def test_a_diurnal_phase_cycles_between_its_loads() -> None:
    scenario = parse_scenario(
        small(
            arrivals=[
                {"name": "day", "seconds": 40, "load": 0.2, "to_load": 1.0, "period_seconds": 20}
            ],
            failures=[],
        )
    )
    phase = scenario.arrivals[0]
    assert [phase.load_at(t) for t in (0, 10, 20, 30)] == pytest.approx([0.2, 1.0, 0.2, 1.0])
    counts = np.bincount(np.asarray(simulate(scenario, "sluiceway").arrival, int) // 5)
    assert counts[1] > 2 * counts[0] and counts[3] < counts[2] / 2


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"bogus": 1}, "bogus: Extra inputs are not permitted"),
        ({"pools": {"gpu": {"replicas": 0, "service": {"per_row_seconds": 1, "source": "s"}}}},
         "pools.gpu.replicas: Input should be greater than or equal to 1"),
        ({"arrivals": [{"name": "a", "seconds": 1, "rate": "fast"}]},
         "arrivals.0.rate: Input should be a valid number"),
        ({"failures": [{"at_seconds": 1, "kind": "pool_lost", "pool": "tpu"}]},
         "failures[0].pool 'tpu' is not a pool"),
    ],
)  # fmt: skip
def test_a_bad_scenario_is_one_error_naming_the_field(change: dict[str, Any], path: str) -> None:
    with pytest.raises(ScenarioError, match="scenario.yaml: .*" + path.replace("[", r"\[")):
        parse_scenario(small(**change), "scenario.yaml")


def test_shipped_scenarios_and_the_documented_example_are_valid() -> None:
    shipped = sorted((ROOT / "scenarios").glob("*.yaml"))
    assert shipped
    for path in shipped:
        scenario = load_scenario(path)
        for pool in scenario.pools.values():
            assert pool.service.source.strip()  # every curve says where it comes from
    doc = (ROOT / "docs" / "simulator.md").read_text(encoding="utf-8")
    example = re.search(r"```yaml\n(.*?)```", doc, re.S)
    assert example is not None
    assert len(parse_scenario(yaml.safe_load(example.group(1))).failures) == 5


def test_cli_writes_report_json_and_plots_and_refuses_bad_scenarios(tmp_path: Path) -> None:
    scenario = small(arrivals=[{"name": "1x", "seconds": 5, "load": 1.0}], failures=[])
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(scenario, sort_keys=False), encoding="utf-8")
    env = {**os.environ, "MPLBACKEND": "Agg"}
    command = [sys.executable, "-m", "sluiceway", "simulate", str(path)]
    out = tmp_path / "out"
    done = subprocess.run(
        [*command, "--output", str(out), "--policy", "sluiceway", "--policy", "gpu-only"],
        capture_output=True, text=True, check=False, timeout=300, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "## sluiceway" in done.stdout and "## gpu-only" in done.stdout
    report = json.loads((out / "report.json").read_text())
    assert set(report["runs"]) == {"sluiceway", "gpu-only"}
    assert all(check["met"] in (True, False) for check in report["checks"])
    assert (out / "over-time.png").stat().st_size > 0
    assert (out / "p99-vs-load.png").stat().st_size > 0
    path.write_text("name: x\npools: {}\narrivals: []\n", encoding="utf-8")
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    assert done.returncode != 0
    assert "Error: " in done.stderr and "pools" in done.stderr
    assert "Traceback" not in done.stderr
