"""From records to numbers: per load step and over time, checks, Markdown, JSON and plots."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from simulate.engine import BUCKET_S, LOST, OK, SHED, TIMEOUT, Records
from simulate.scenario import Scenario

SHED_SLACK = 0.02  # shed share may exceed the share of offered load above capacity by this
UTILISATION_GOAL = 0.90


@dataclass(frozen=True)
class Step:
    """One load step of a run."""

    name: str
    start_s: float
    end_s: float
    load: float  # offered, as a multiple of the preferred pool's nominal capacity
    offered_per_s: float
    served: int
    p50_s: float
    p99_s: float
    shed: float  # shares of the offered requests
    timed_out: float
    lost: float
    spill: float  # share of the served requests served by a pool other than the preferred
    utilisation: dict[str, float]  # busy slot-time / available slot-time, per pool
    capacity_per_s: dict[str, float]  # what the pools' live replicas could serve, per pool
    beyond_capacity: float  # share of the offered requests above what live replicas could
    # serve when they came (bucket by bucket: capacity idle at one moment serves no other)
    spill_changes_per_min: float  # per ingress (Sluiceway's policy only)
    pool_failovers: int  # times an ingress saw the preferred pool lost in this step
    failures: list[str]


def steps_of(scenario: Scenario) -> list[tuple[str, float, float, float]]:
    """(name, start, end, load) of every load step."""
    capacity = scenario.capacity_per_s()
    out = []
    start = 0.0
    for phase in scenario.arrivals:
        width = phase.seconds / phase.steps
        for index in range(phase.steps):
            a, b = start + index * width, start + (index + 1) * width
            if phase.rate is not None:
                load = phase.rate / capacity
            else:
                load = phase.load_at((index + 0.5) * width)
            name = phase.name if phase.steps == 1 else f"{phase.name} {index + 1}/{phase.steps}"
            out.append((name, a, b, load))
        start += phase.seconds
    return out


def summarize(scenario: Scenario, records: Records) -> list[Step]:
    arrival = np.asarray(records.arrival)
    end = np.asarray(records.end)
    code = np.asarray(records.code)
    pools = np.asarray(records.pool)
    latency = end - arrival
    preferred = scenario.preferred
    result = []
    for name, start, stop, load in steps_of(scenario):
        mask = (arrival >= start) & (arrival < stop)
        total = int(mask.sum())
        served = mask & (code == OK)
        lat = latency[served]
        n_served = int(served.sum())
        first, last = int(start / BUCKET_S), max(int(start / BUCKET_S) + 1, int(stop / BUCKET_S))
        utilisation, capacity = {}, {}
        for pool, spec in scenario.pools.items():
            busy = sum(records.busy[pool][first:last])
            slots = sum(records.slots[pool][first:last])
            utilisation[pool] = busy / slots if slots else 0.0
            live = slots / (stop - start) / spec.max_ongoing_requests  # mean live replicas
            capacity[pool] = spec.capacity_per_s(scenario.inputs.mean()) * live / spec.replicas
        beyond_capacity = _beyond_capacity(scenario, records, arrival[mask], first, last)
        changes = sum(sum(1 for t in times if start <= t < stop) for times in records.spill_changes)
        ingresses = max(1, len(records.spill_changes))
        failovers = sum(
            1 for pool, t in records.pool_lost if pool == preferred and start <= t < stop
        )
        failures = [
            f"{f.kind} {f.pool or ''}{' x' + str(f.count) if f.count > 1 else ''}".strip()
            for f in scenario.failures
            if start <= f.at_seconds < stop
        ]
        result.append(
            Step(
                name=name,
                start_s=start,
                end_s=stop,
                load=load,
                offered_per_s=total / (stop - start),
                served=n_served,
                p50_s=float(np.percentile(lat, 50)) if n_served else math.nan,
                p99_s=float(np.percentile(lat, 99)) if n_served else math.nan,
                shed=float((mask & (code == SHED)).sum()) / max(1, total),
                timed_out=float((mask & (code == TIMEOUT)).sum()) / max(1, total),
                lost=float((mask & (code == LOST)).sum()) / max(1, total),
                spill=float((served & (pools != preferred)).sum()) / max(1, n_served),
                utilisation=utilisation,
                capacity_per_s=capacity,
                beyond_capacity=beyond_capacity / max(1, total),
                spill_changes_per_min=changes / ingresses / ((stop - start) / 60.0),
                pool_failovers=failovers,
                failures=failures,
            )
        )
    return result


def _beyond_capacity(
    scenario: Scenario, records: Records, arrivals: np.ndarray, first: int, last: int
) -> float:
    """Requests (of ``arrivals``) that came when the live replicas' capacity was used up."""
    counts = np.bincount((arrivals / BUCKET_S).astype(int) - first, minlength=last - first)
    mean_input = scenario.inputs.mean()
    beyond = 0.0
    for offset, offered in enumerate(counts[: last - first]):
        bucket = first + offset
        capacity = sum(
            spec.capacity_per_s(mean_input)
            * records.slots[pool][bucket]
            / spec.max_ongoing_requests
            / spec.replicas
            for pool, spec in scenario.pools.items()
        )  # slots hold slot-seconds: their sum over a bucket is replicas x seconds
        beyond += max(0.0, offered - capacity)
    return beyond


def checks(scenario: Scenario, steps: list[Step]) -> list[tuple[str, bool, str]]:
    """The goals for Sluiceway's policy: (what, met, the figures behind it)."""
    return [(what, bool(met), figures) for what, met, figures in _checks(scenario, steps)]


def _checks(scenario: Scenario, steps: list[Step]) -> list[tuple[str, bool, str]]:
    slo = scenario.routing.slo_p99_seconds
    preferred = scenario.preferred
    out: list[tuple[str, bool, str]] = []
    worst = max(steps, key=lambda s: s.p99_s if not math.isnan(s.p99_s) else -1)
    out.append(
        (
            "P99 of served requests within the SLO at every load step",
            all(s.p99_s <= slo for s in steps if s.served),
            f"worst {worst.p99_s * 1e3:.0f} ms ({worst.name}) against {slo * 1e3:.0f} ms",
        )
    )
    busy_steps = [s for s in steps if s.offered_per_s >= s.capacity_per_s[preferred] > 0]
    low = min(busy_steps, key=lambda s: s.utilisation[preferred], default=None)
    out.append(
        (
            f"{preferred} utilisation >= {UTILISATION_GOAL:.0%} whenever offered load is at or "
            f"above its capacity",
            all(s.utilisation[preferred] >= UTILISATION_GOAL for s in busy_steps),
            "no such step"
            if low is None
            else f"lowest {low.utilisation[preferred]:.1%} ({low.name})",
        )
    )
    excess = []
    for s in steps:
        allowed = s.beyond_capacity + SHED_SLACK
        excess.append((s.shed - allowed, s, allowed))
    over, step, allowed = max(excess, key=lambda e: e[0])
    out.append(
        (
            "shed share <= share of offered load beyond the live replicas' capacity when it "
            "came + 2 points, at every step",
            over <= 0,
            f"tightest {step.shed:.1%} shed against {allowed:.1%} allowed ({step.name})",
        )
    )
    lost_one = [s for s in steps if any(f.startswith("replica_lost") for f in s.failures)]
    if lost_one:
        s = lost_one[0]
        share = s.capacity_per_s[preferred] / max(1, next(iter(scenario.pools.values())).replicas)
        allowed = share / max(s.offered_per_s, 1e-9) + 0.005
        out.append(
            (
                "one replica lost: no pool failover, extra spill at most that replica's share",
                s.pool_failovers == 0 and s.spill <= allowed,
                f"{s.pool_failovers} pool failovers, spill {s.spill:.2%} against "
                f"{allowed:.2%} ({s.name})",
            )
        )
    budget = 60.0 / max(scenario.routing.min_spill_seconds, 1e-9)
    steady = [s for s in steps if not s.failures and "burst" not in s.name]
    busiest = max(steady, key=lambda s: s.spill_changes_per_min, default=None)
    out.append(
        (
            "at steady load, spill state changes at most once per min_spill_seconds per ingress",
            all(s.spill_changes_per_min <= budget for s in steady),
            "no steady step"
            if busiest is None
            else f"most {busiest.spill_changes_per_min:.1f}/min ({busiest.name}) against "
            f"{budget:.0f}/min",
        )
    )
    return out


def markdown(scenario: Scenario, runs: dict[str, list[Step]], elapsed: dict[str, float]) -> str:
    preferred = scenario.preferred
    others = [p for p in scenario.pools if p != preferred]
    lines = [
        f"# Simulation: {scenario.name}",
        "",
        f"{sum(p.replicas for p in scenario.pools.values())} replicas "
        f"({', '.join(f'{n}: {p.replicas}' for n, p in scenario.pools.items())}), "
        f"{scenario.ingresses} ingress replicas, {scenario.duration_s:g} s simulated; "
        f"{preferred} capacity {scenario.capacity_per_s():.0f}/s, "
        + ", ".join(f"{p} {scenario.capacity_per_s(p):.0f}/s" for p in others)
        + f" (mean input {scenario.inputs.mean():g} s); SLO "
        f"{scenario.routing.slo_p99_seconds * 1e3:.0f} ms, deadline "
        f"{scenario.limits.deadline_seconds:g} s.",
        "",
        "Service times: "
        + "; ".join(f"{n}: {p.service.source}" for n, p in scenario.pools.items()),
        "",
    ]
    for policy, steps in runs.items():
        lines += [
            f"## {policy} ({elapsed[policy]:.1f} s to simulate: "
            f"{elapsed[policy] / scenario.duration_s:.3f} s per simulated s)",
            "",
            "| step | load | offered/s | P50 ms | P99 ms | shed | timed out | lost | spill | "
            + " | ".join(f"{p} util" for p in scenario.pools)
            + " | spill changes/min | failovers | failures |",
            "|---" * (11 + len(scenario.pools)) + "|",
        ]
        for s in steps:
            lines.append(
                f"| {s.name} | {s.load:.2f}x | {s.offered_per_s:.0f} | {s.p50_s * 1e3:.0f} | "
                f"{s.p99_s * 1e3:.0f} | {s.shed:.1%} | {s.timed_out:.1%} | {s.lost:.2%} | "
                f"{s.spill:.1%} | "
                + " | ".join(f"{s.utilisation[p]:.0%}" for p in scenario.pools)
                + f" | {s.spill_changes_per_min:.1f} | {s.pool_failovers} | "
                f"{', '.join(s.failures) or '-'} |"
            )
        lines.append("")
    sluiceway = runs.get("sluiceway")
    if sluiceway is not None:
        lines += ["## Sluiceway's goals", ""]
        for what, met, figures in checks(scenario, sluiceway):
            lines.append(f"- {'met' if met else 'NOT met'}: {what}: {figures}")
        lines.append("")
    return "\n".join(lines)


def as_json(scenario: Scenario, runs: dict[str, list[Step]]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "scenario": scenario.model_dump(mode="json"),
        "runs": {policy: [asdict(s) for s in steps] for policy, steps in runs.items()},
    }
    if "sluiceway" in runs:
        out["checks"] = [
            {"goal": what, "met": bool(met), "figures": figures}
            for what, met, figures in checks(scenario, runs["sluiceway"])
        ]
    return out


def series(scenario: Scenario, records: Records) -> dict[str, np.ndarray]:
    """Per time bucket: P99 of the served requests that arrived then, and utilisation."""
    arrival = np.asarray(records.arrival)
    latency = np.asarray(records.end) - arrival
    code = np.asarray(records.code)
    buckets = math.ceil(scenario.duration_s / BUCKET_S)
    index = (arrival / BUCKET_S).astype(int)
    p99 = np.full(buckets, np.nan)
    served = code == OK
    for bucket in range(buckets):
        lat = latency[served & (index == bucket)]
        if lat.size:
            p99[bucket] = np.percentile(lat, 99)
    out = {"time": np.arange(buckets) * BUCKET_S, "p99": p99}
    for pool in scenario.pools:
        busy = np.asarray(records.busy[pool][:buckets])
        slots = np.asarray(records.slots[pool][:buckets])
        out[f"util:{pool}"] = np.divide(busy, slots, out=np.zeros_like(busy), where=slots > 0)
    return out


def plot(
    scenario: Scenario,
    runs: dict[str, list[Step]],
    timelines: dict[str, dict[str, np.ndarray]],
    output: Path,
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    slo_ms = scenario.routing.slo_p99_seconds * 1e3
    over_time = output / "over-time.png"
    fig, axes = plt.subplots(len(timelines), 2, figsize=(13, 3.2 * len(timelines)), squeeze=False)
    for row, (policy, line) in zip(axes, timelines.items(), strict=True):
        row[0].plot(line["time"], line["p99"] * 1e3, lw=1)
        row[0].axhline(slo_ms, color="grey", ls=":", label="SLO")
        row[0].set_yscale("log")
        row[0].set_title(f"{policy}: P99 of served requests (ms), by arrival second")
        for pool in scenario.pools:
            row[1].plot(line["time"], line[f"util:{pool}"], lw=1, label=pool)
        row[1].set_ylim(0, 1.05)
        row[1].set_title(f"{policy}: utilisation (busy call slots)")
        for ax in row:
            for failure in scenario.failures:
                ax.axvline(failure.at_seconds, color="red", alpha=0.3)
            ax.set_xlabel("simulated seconds")
            ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(over_time, dpi=100)
    plt.close(fig)

    vs_load = output / "p99-vs-load.png"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for policy, steps in runs.items():
        clean = sorted((s for s in steps if not s.failures), key=lambda s: s.load)
        ax.plot([s.load for s in clean], [s.p99_s * 1e3 for s in clean], "o-", label=policy)
    ax.axhline(slo_ms, color="grey", ls=":", label="SLO")
    ax.set_yscale("log")
    ax.set_xlabel(f"offered load (x the {scenario.preferred} pool's capacity)")
    ax.set_ylabel("P99 of served requests (ms)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(vs_load, dpi=100)
    plt.close(fig)
    return [over_time, vs_load]
