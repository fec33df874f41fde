"""Non-default values, booted as KubeRay runs them, do what they say: Serve on port 8100, two
CPU pools, and a GPU pool at minReplicas 0 that never gets a node (none can exist here);
a worker pod killed and replaced as KubeRay replaces it.

Booted by deploy.boot (see tests/deploy/test_boot_default.py for what is real and what
stands in). The pool alert's expression is evaluated by a real Prometheus scraping each
pod's metrics port (the PodMonitor's), given the namespace label the PodMonitor would add.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from deploy.boot import Boot
from deploy.values import PoolArtifact, chart_values
from tests.conftest import free_port
from tests.deploy.boot_support import MOUNT, NAMESPACE, Load, booted, poll, render, volume
from tests.prometheus_server import PrometheusServer

pytestmark = [pytest.mark.slow, pytest.mark.integration]
PORT = 8100


@pytest.fixture(scope="module")
def claim(tmp_path_factory: pytest.TempPathFactory, tiny_artifacts: Path) -> Path:
    return volume(
        tmp_path_factory.mktemp("claim"),
        {"tiny": tiny_artifacts / "int8", "tiny-fp32": tiny_artifacts / "fp32"},
    )


@pytest.fixture(scope="module")
def docs(claim: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    pools = {
        "gpu": PoolArtifact(
            artifact=claim / "tiny" / "int8", device="cuda", min_replicas=0, max_replicas=2
        ),
        "fast": PoolArtifact(artifact=claim / "tiny" / "int8", device="cpu", max_replicas=1),
        "slow": PoolArtifact(artifact=claim / "tiny-fp32" / "fp32", device="cpu", max_replicas=1),
    }
    values = chart_values("tiny", pools, uri_prefix=f"{MOUNT}/tiny", slo_p99_seconds=1.0)
    slow = values["serving"]["models"]["tiny"]["variants"]["stable"]["artifacts"]["slow"]
    slow["uri"] = f"{MOUNT}/tiny-fp32/fp32"
    values["serving"]["http"] = {"host": "0.0.0.0", "port": PORT}
    return render(values, tmp_path_factory.mktemp("values"))


@pytest.fixture(scope="module")
def boot(
    docs: list[dict[str, Any]],
    claim: Path,
    image_python: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Boot]:
    with booted(docs, image_python, tmp_path_factory.mktemp("boot-pools"), claim) as running:
        yield running


def classify(base: str) -> httpx.Response:
    from tests.serving.test_routing_scale import PCM, pcm

    return httpx.post(f"{base}/v1/models/tiny:classify", content=pcm(0.5), headers=PCM, timeout=60)


def test_serve_listens_on_the_port_the_values_give(boot: Boot) -> None:
    endpoints = boot.serve_endpoints()
    assert len(endpoints) == 3 and all(e.endswith(f":{PORT}") for e in endpoints), endpoints
    for base in endpoints:
        assert classify(base).status_code == 200
    with pytest.raises(httpx.ConnectError):
        httpx.get(endpoints[0].replace(f":{PORT}", ":8000") + "/-/healthz", timeout=5)


def test_a_gpu_pool_without_a_node_leaves_the_cpu_pools_serving_and_says_so(
    boot: Boot, docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    assert [p.pod.group for p in boot.pods.values()] == ["headgroup", "fast", "slow"]
    base = boot.serve_endpoints()[0]
    answers = [classify(base) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert {a.headers["x-sluiceway-pool"] for a in answers} == {"fast"}

    def listed() -> dict[str, Any]:
        pools = httpx.get(f"{base}/v1/models", timeout=10).json()["models"][0]["pools"]
        by_name = {p["name"]: p for p in pools}
        return by_name if by_name["fast"]["replicas"]["up"] == 1 else {}

    pools = poll(listed, deadline_s=30)  # every ingress polls Serve's status each second
    assert pools, "the ingress never learned the fast pool's replica"
    assert pools["gpu"]["healthy"] is False and pools["gpu"]["replicas"]["up"] == 0
    assert pools["fast"]["healthy"] is True and pools["slow"]["replicas"]["up"] == 1

    # Serve runs the application, and asks for the GPU replica the ingress's probes want:
    # in a cluster, the request KubeRay's autoscaler turns into a GPU pod
    def waiting() -> str:
        app = boot.serve_status()["applications"]["sluiceway"]
        gpu = app["deployments"]["tiny-gpu"]
        pending = app["status"] == "RUNNING" and gpu["status"] == "UPSCALING"
        return gpu["message"] if pending and "Resources required" in gpu["message"] else ""

    message = poll(waiting, deadline_s=120, every_s=2)  # Serve names them after 30 s
    assert '"GPU": 1.0' in message and '"pool-gpu": 1.0' in message, message
    # the chart's own alert expression, on a real Prometheus scraping the PodMonitor's port
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    alerts = {
        r["labels"]["pool"]: r["expr"]
        for g in rule["spec"]["groups"]
        for r in g["rules"]
        if r.get("alert") == "SluicewayPoolWithoutHealthyReplica"
    }
    targets = [f"{p.address}:{p.pod.ports['metrics']}" for p in boot.pods.values()]
    prometheus = PrometheusServer(tmp_path, free_port(), targets, labels={"namespace": NAMESPACE})
    try:
        firing = prometheus.wait_for(alerts["fast"].replace("< 1", ">= 1"), bool, deadline_s=90)
        assert firing, "the fast pool's replica never showed healthy"
        assert prometheus.query(alerts["gpu"]), "the GPU pool's alert condition does not hold"
        assert prometheus.query(alerts["fast"]) == [] and prometheus.query(alerts["slow"]) == []
    finally:
        prometheus.stop()


def test_a_killed_worker_pod_fails_its_pool_over_and_it_comes_back_when_replaced(
    boot: Boot,
) -> None:
    fast = next(name for name, p in boot.pods.items() if p.pod.group == "fast")
    head = boot.pods[boot.cluster.head.name].url("serve")  # the endpoint that stays
    with Load([head], clients=2) as load:
        start = time.monotonic()
        load.wait_for(lambda seen: seen[("stable", "fast")] >= 10, start)
        boot.kill_pod(fast)
        killed = time.monotonic()
        load.wait_for(lambda seen: seen[("stable", "slow")] >= 10, killed, deadline_s=60)
        boot.replace_pod(fast)
        replaced = time.monotonic()
        load.wait_for(lambda seen: seen[("stable", "fast")] >= 10, replaced, deadline_s=180)
        back = time.monotonic()
    # requests sent once the ingresses had seen the node go: none fails (the ones in
    # flight on it at the kill may: they are counted above, and their count bounded)
    failed_after = [f for f in load.failed if f[0] > killed + 5]
    print(
        f"\nkill -> slow serving {load.since(killed)}; {len(load.failed)} failed "
        f"({[f[1] for f in load.failed][:5]}); fast back {back - replaced:.1f} s after the new pod"
    )
    assert len(load.failed) <= 4, load.failed  # at most what was in flight on the lost node
    assert failed_after == [], failed_after
    # and the new pod becomes an endpoint of the serve Service again, once its proxy is up
    boot.wait_probe(fast, boot.pods[fast].pod.readiness, time.monotonic() + 120)
    assert boot.serve_status()["applications"]["sluiceway"]["status"] == "RUNNING"
