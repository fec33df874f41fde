"""Canary analysis end to end: a real Prometheus scrapes a real local Sluiceway (Ray Serve
on localhost) serving a baseline and a canary variant under load; `deploy.rollout.run`
steps the canary's weight, asks Prometheus for both variants' P99 and error ratio, and
promotes or rolls back.

No Kubernetes can run here, so the `Target` is a stand-in for `helm upgrade` + KubeRay: it
applies the `serving` values of each step as Serve's config (`serving.server.deploy`, the
same application the chart renders into `serveConfigV2`, applied as KubeRay does). The helm
side is tested with the real binary elsewhere (tests/deploy/test_helm.py,
test_cli_deploy.py)."""

from __future__ import annotations

import asyncio
import copy
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.canary import CanaryPolicy, Decision, PrometheusClient
from deploy.rollout import Plan, run
from serving.config import parse_config
from serving.server import deploy
from tests.conftest import TOKEN
from tests.prometheus_server import PrometheusServer
from tests.serving.conftest import artifact
from tests.serving.test_routing_load import PCM, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.integration]
AUTH = {"authorization": f"Bearer {TOKEN}"}
WINDOW_S = 30
POLICY = CanaryPolicy(min_requests=20)


def chart_values(
    model: str, ports: dict[str, int], token_file: Path, variants: dict[str, Path]
) -> dict[str, Any]:
    """The chart's values for one model on one pool; the first variant takes all traffic."""
    names = list(variants)
    return {
        "serving": {
            "models": {
                model: {
                    "variants": {
                        name: {
                            "weight": 100 if name == names[0] else 0,
                            "artifacts": {"fast": artifact(path)},
                        }
                        for name, path in variants.items()
                    },
                    "routing": {"pools": ["fast"], "slo_p99_seconds": 2.0},
                    "limits": {"deadline_seconds": 20.0},
                }
            },
            "pools": {
                # two replicas: Serve's rolling update (when the canary's artifact is added)
                # replaces one at a time, so the pool never stands empty
                "fast": {
                    "replicas": {"min": 2, "max": 2},
                    "num_cpus": 0.5,
                    "max_ongoing_requests": 4,
                    "max_queued_requests": 32,
                    "resources": {"pool-fast": 1},
                }
            },
            "http": {"host": "127.0.0.1", "port": ports["http"]},
            "auth": {"token_file": str(token_file)},
            "metrics": {"export_port": ports["metrics"]},
        }
    }


class LocalServe:
    """Stand-in for `helm upgrade` + KubeRay: each step's `serving` values go to Serve."""

    def __init__(self, before: dict[str, Any], base: str, model: str) -> None:
        self.before, self.base, self.model = before, base, model
        self.applied: list[int] = []
        self.rolled_back = False

    def apply(self, values: dict[str, Any], step: int) -> None:
        deploy(parse_config(values["serving"]))
        wait_ready(self.base, model=self.model)
        self.applied.append(step)

    def rollback(self) -> None:
        deploy(parse_config(self.before["serving"]))
        wait_ready(self.base, model=self.model)
        self.rolled_back = True


class Load:
    """Closed-loop load from a thread (2 in flight) until stopped; counts variants served."""

    def __init__(self, base: str, model: str) -> None:
        self.base, self.model = base, model
        self.served: Counter[str] = Counter()
        self.failed = 0
        self.errors: Counter[tuple[int, str]] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:

            async def worker() -> None:
                while not self._stop.is_set():
                    r = await client.post(
                        f"{self.base}/v1/models/{self.model}:classify",
                        content=PCM,
                        headers=AUTH | {"content-type": "audio/l16;rate=16000"},
                    )
                    if r.status_code == 200:
                        self.served[r.headers["x-sluiceway-variant"]] += 1
                    else:
                        self.failed += 1
                        self.errors[r.status_code, r.text[:200]] += 1

            await asyncio.gather(worker(), worker())

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def roll_out(
    model: str,
    canary_artifact: Path,
    ray_serve: dict[str, int],
    token_file: Path,
    tiny_artifacts: Path,
    prometheus: PrometheusServer,
) -> tuple[Any, LocalServe, Load, list[str]]:
    base = f"http://127.0.0.1:{ray_serve['http']}"
    before = chart_values(model, ray_serve, token_file, {"stable": tiny_artifacts / "int8"})
    new = chart_values(
        model,
        ray_serve,
        token_file,
        {"stable": tiny_artifacts / "int8", "canary": canary_artifact},
    )
    deploy(parse_config(before["serving"]))
    wait_ready(base, model=model)
    target = LocalServe(copy.deepcopy(before), base, model)
    plan = Plan(
        model=model,
        canary="canary",
        baseline="stable",
        steps=(50, 100),
        window_seconds=WINDOW_S,
        policy=POLICY,
    )
    printed: list[str] = []
    with Load(base, model) as load:
        prometheus.wait_for(  # the baseline's series exist before the first step
            f'ray_sluiceway_requests_total{{model="{model}"}}', lambda r: len(r) > 0, 60
        )
        outcome = run(plan, new, target, PrometheusClient(prometheus.url), echo=printed.append)
    return outcome, target, load, printed


def test_a_slower_canary_is_rolled_back(
    ray_serve: dict[str, int],
    token_file: Path,
    tiny_artifacts: Path,
    slow_artifact: Path,
    prometheus: PrometheusServer,
) -> None:
    outcome, target, load, printed = roll_out(
        "rollout-slow", slow_artifact, ray_serve, token_file, tiny_artifacts, prometheus
    )
    assert not outcome.promoted and target.rolled_back, printed
    assert target.applied == [50]  # never went past the first step
    verdict = outcome.steps[0].verdict
    assert verdict.decision is Decision.ROLLBACK, printed
    assert verdict.canary.p99_seconds > verdict.baseline.p99_seconds  # type: ignore[operator]
    assert any("P99" in line for line in printed)  # the numbers behind the verdict
    assert load.served["canary"] > 0 and load.failed == 0, load.errors


def test_an_equal_canary_is_promoted(
    ray_serve: dict[str, int],
    token_file: Path,
    tiny_artifacts: Path,
    prometheus: PrometheusServer,
) -> None:
    outcome, target, load, printed = roll_out(
        "rollout-equal", tiny_artifacts / "int8", ray_serve, token_file, tiny_artifacts, prometheus
    )
    assert outcome.promoted and not target.rolled_back, printed
    assert target.applied == [50, 100]
    assert [s.verdict.decision for s in outcome.steps] == [Decision.PROMOTE, Decision.PROMOTE]
    assert load.failed == 0, load.errors
