"""The cluster simulator: the real routing code at hundreds of replicas, beside baselines.

``sluiceway simulate SCENARIO.yaml`` (``simulate.cli``): a discrete-event run of the
scenario (``scenario``) for Sluiceway's routing and each baseline (``baselines``) on the
same arrivals (``engine``), reported per load step and over time (``report``). A tool beside
the serving runtime: the serving image does not need it (no Ray here, no HTTP).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

from simulate.baselines import (
    UNBOUNDED,
    PowerOfTwo,
    ServeDefault,
    StaticSplit,
    gpu_only,
    serve_fallback,
)
from simulate.engine import PolicyFactory, Records, Simulation, sluiceway
from simulate.report import Step, as_json, markdown, plot, series, summarize
from simulate.scenario import Pool, Scenario, load_scenario, parse_scenario

# name -> (ingress factory, a pool's replica queue limit under it)
POLICIES: dict[str, tuple[PolicyFactory, Callable[[Pool], int]]] = {
    "sluiceway": (sluiceway, lambda pool: pool.max_queued_requests),
    "gpu-only": (gpu_only, lambda pool: pool.max_queued_requests),
    "static-split": (StaticSplit, lambda pool: pool.max_queued_requests),
    "pow2": (PowerOfTwo, lambda pool: UNBOUNDED),
    "serve-default": (ServeDefault, lambda pool: 0),
    "serve-fallback": (serve_fallback, lambda pool: pool.max_queued_requests),
}


def simulate(
    scenario: Scenario, policy: str, progress: Callable[[float], None] | None = None
) -> Records:
    """One run of ``scenario`` under ``policy`` (a key of ``POLICIES``)."""
    factory, queue_limit = POLICIES[policy]
    return Simulation(scenario, factory, queue_limit=queue_limit, progress=progress).run()


def run_scenario(
    scenario: Scenario,
    output: Path,
    *,
    policies: list[str] | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> str:
    """Every policy on ``scenario``; writes report.md, report.json and the plots to
    ``output`` and returns the Markdown."""
    output.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[Step]] = {}
    elapsed: dict[str, float] = {}
    timelines = {}
    for policy in policies or list(POLICIES):
        start = time.perf_counter()
        report: Callable[[float], None] | None = None
        if progress is not None:
            report = functools.partial(progress, policy)
        records = simulate(scenario, policy, report)
        elapsed[policy] = time.perf_counter() - start
        runs[policy] = summarize(scenario, records)
        timelines[policy] = series(scenario, records)
    text = markdown(scenario, runs, elapsed)
    plots = plot(scenario, runs, timelines, output)
    text += "\nPlots: " + ", ".join(str(p) for p in plots) + "\n"
    (output / "report.md").write_text(text, encoding="utf-8")
    (output / "report.json").write_text(
        json.dumps(as_json(scenario, runs), indent=2, default=str), encoding="utf-8"
    )
    return text


__all__ = [
    "POLICIES",
    "Scenario",
    "load_scenario",
    "parse_scenario",
    "run_scenario",
    "simulate",
]
