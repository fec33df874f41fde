"""deploy.cluster through the real `kubernetes` client against a stand-in API server.

No Kubernetes API server can run on these machines (no cluster, no etcd, no container
runtime). The client here is the real one, reading a real kubeconfig file, but the server
it talks to is tests/deploy/kube_standin.py: an http.server thread on 127.0.0.1 that
answers only the few calls deploy.cluster makes (GET of a RayService, list of pods by
label selector) with JSON shaped like the real server's and 404 Status objects for unknown
names. The RayService objects it serves are checked against the KubeRay v1 CRD schema.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import yaml

from deploy.cluster import Cluster, RayServiceStatus
from deploy.errors import NoClusterContext, ReleaseNotFound, RolloutTimeout
from tests.charts.test_chart import SCHEMAS
from tests.deploy.kube_standin import KubeStandIn, running_standin

NS, NAME, RAY_CLUSTER = "ml", "demo-sluiceway", "demo-sluiceway-raycluster-x7k2p"
T0 = "2026-01-01T00:00:00Z"


def condition(type_: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": T0,
        "observedGeneration": 2,
    }


def rayservice(
    *,
    ready: bool,
    upgrading: bool = False,
    generation: int = 2,
    observed: int = 2,
    cpu_status: str = "HEALTHY",
) -> dict[str, Any]:
    """A RayService as KubeRay v1 reports it (field names from the CRD's status schema)."""
    conditions = [
        condition("Ready", "True", "NonZeroServeEndpoints", "Number of serve endpoints is 2")
        if ready
        else condition("Ready", "False", "Initializing", "Serve applications are starting")
    ]
    conditions.append(
        condition("UpgradeInProgress", "True", "PendingClusterExists", "new cluster pending")
        if upgrading
        else condition("UpgradeInProgress", "False", "NoPendingCluster", "")
    )
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {
            "name": NAME,
            "namespace": NS,
            "generation": generation,
            "uid": "6f1c9b2e-0000-4000-8000-000000000001",
            "resourceVersion": "4242",
            "creationTimestamp": T0,
        },
        "spec": {"serveConfigV2": "applications: []\n"},
        "status": {
            "conditions": conditions,
            "observedGeneration": observed,
            "numServeEndpoints": 2 if ready else 0,
            "serviceStatus": "Running" if ready else "",
            "activeServiceStatus": {
                "rayClusterName": RAY_CLUSTER,
                "applicationStatuses": {
                    "sluiceway": {
                        "status": "RUNNING" if ready else "DEPLOYING",
                        "message": "",
                        "serveDeploymentStatuses": {
                            "Ingress": {"status": "HEALTHY", "message": ""},
                            "w2v-gpu": {"status": "HEALTHY", "message": ""},
                            "w2v-cpu": {
                                "status": cpu_status,
                                "message": "" if cpu_status == "HEALTHY" else "replica failed",
                            },
                        },
                    }
                },
            },
            "pendingServiceStatus": {"rayClusterName": "demo-next"} if upgrading else {},
        },
    }


def pod(
    name: str, group: str, phase: str, *, cluster: str = RAY_CLUSTER, **meta: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": NS,
            "labels": {
                "ray.io/cluster": cluster,
                "ray.io/group": group,
                "ray.io/node-type": "head" if group == "headgroup" else "worker",
            },
            **meta,
        },
        "spec": {"containers": [{"name": "ray", "image": "ghcr.io/sluiceway/serving:0.1.0"}]},
        "status": {"phase": phase},
    }


class FakeClock:
    """Time that passes only when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def kube() -> Iterator[KubeStandIn]:
    with running_standin() as standin:
        yield standin


@pytest.fixture
def cluster(kube: KubeStandIn, tmp_path: Path) -> Iterator[Cluster]:
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    with Cluster.from_kubeconfig(None, kubeconfig) as connected:
        yield connected


def test_the_stand_ins_rayservices_match_the_kuberay_crd_status_schema() -> None:
    schema = json.loads((SCHEMAS / "kuberay" / "rayservice-v1.schema.json").read_text())
    validator = jsonschema.Draft7Validator(schema["properties"]["status"])
    for obj in (rayservice(ready=True), rayservice(ready=False, upgrading=True)):
        assert [e.message for e in validator.iter_errors(obj["status"])] == []


def test_status_is_parsed(kube: KubeStandIn, cluster: Cluster) -> None:
    kube.rayservices[(NS, NAME)] = [rayservice(ready=True)]
    status = cluster.rayservice(NS, NAME)
    assert (status.namespace, status.name, status.cluster_name) == (NS, NAME, RAY_CLUSTER)
    assert status.ready and not status.upgrading and status.settled
    assert [c.type for c in status.conditions] == ["Ready", "UpgradeInProgress"]
    ready = status.condition("Ready")
    assert ready is not None and ready.reason == "NonZeroServeEndpoints"
    app = status.applications["sluiceway"]
    assert app.status == "RUNNING"
    assert {n: d.status for n, d in app.deployments.items()} == {
        "Ingress": "HEALTHY",
        "w2v-gpu": "HEALTHY",
        "w2v-cpu": "HEALTHY",
    }
    assert status.pending_cluster_name is None
    assert kube.requests == [f"/apis/ray.io/v1/namespaces/{NS}/rayservices/{NAME}"]


def test_an_upgrading_or_unobserved_rayservice_is_not_settled() -> None:
    upgrading = RayServiceStatus.from_object(rayservice(ready=True, upgrading=True))
    assert upgrading.ready and upgrading.upgrading and not upgrading.settled
    assert upgrading.pending_cluster_name == "demo-next"
    stale = RayServiceStatus.from_object(rayservice(ready=True, generation=3, observed=2))
    assert stale.ready and not stale.settled
    assert "generation 3 not yet observed" in stale.describe()
    fresh = RayServiceStatus.from_object({"metadata": {"name": NAME, "namespace": NS}})
    assert not fresh.ready and fresh.conditions == () and fresh.cluster_name is None
    assert fresh.describe() == "no conditions reported yet"


def test_running_pods_are_counted_per_group(kube: KubeStandIn, cluster: Cluster) -> None:
    kube.pods[NS] = [
        pod("head-0", "headgroup", "Running"),
        pod("gpu-0", "gpu", "Running"),
        pod("gpu-1", "gpu", "Running", deletionTimestamp=T0),  # terminating
        pod("cpu-0", "cpu", "Running"),
        pod("cpu-1", "cpu", "Running"),
        pod("cpu-2", "cpu", "Pending"),
        pod("other-cpu-0", "cpu", "Running", cluster="another-cluster"),
    ]
    assert cluster.pods_per_group(NS, RAY_CLUSTER) == {"headgroup": 1, "gpu": 1, "cpu": 2}
    asked = urlsplit(kube.requests[-1])
    assert asked.path == f"/api/v1/namespaces/{NS}/pods"
    assert parse_qs(asked.query)["labelSelector"] == [f"ray.io/cluster={RAY_CLUSTER}"]
    kube.pods[NS] = [pod("head-0", "headgroup", "Running"), pod("gpu-0", "gpu", "Pending")]
    assert cluster.pods_per_group(NS, RAY_CLUSTER) == {"headgroup": 1, "gpu": 0}
    assert cluster.pods_per_group(NS, "no-such-cluster") == {}


def test_wait_ready_returns_once_the_rayservice_turns_ready(
    kube: KubeStandIn, cluster: Cluster
) -> None:
    kube.rayservices[(NS, NAME)] = [
        rayservice(ready=False),
        rayservice(ready=True, upgrading=True),
        rayservice(ready=True, generation=3, observed=2),  # Ready left from the old spec
        rayservice(ready=True, generation=3, observed=3),
    ]
    clock, seen = FakeClock(), list[RayServiceStatus]()
    status = cluster.wait_ready(
        NS, NAME, timeout_s=60, poll_s=2.0, clock=clock, sleep=clock.sleep, on_poll=seen.append
    )
    assert status.settled and status.observed_generation == 3
    assert len(kube.requests) == len(seen) == 4
    assert clock.sleeps == [2.0, 2.0, 2.0]


def test_wait_ready_times_out_naming_the_last_conditions(
    kube: KubeStandIn, cluster: Cluster
) -> None:
    kube.rayservices[(NS, NAME)] = [rayservice(ready=False, upgrading=True, cpu_status="UNHEALTHY")]
    clock = FakeClock()
    with pytest.raises(RolloutTimeout) as caught:
        cluster.wait_ready(NS, NAME, timeout_s=5, poll_s=2.0, clock=clock, sleep=clock.sleep)
    message = str(caught.value)
    assert f"rayservice {NS}/{NAME} was not ready after 5 s" in message
    assert "Ready=False (Initializing: Serve applications are starting)" in message
    assert "UpgradeInProgress=True (PendingClusterExists: new cluster pending)" in message
    assert "sluiceway/w2v-cpu=UNHEALTHY (replica failed)" in message
    assert "w2v-gpu" not in message  # healthy deployments are not listed
    assert clock.sleeps == [2.0, 2.0, 1.0]  # never sleeps past the deadline
    assert len(kube.requests) == 4


def test_an_unknown_rayservice_is_release_not_found(cluster: Cluster) -> None:
    with pytest.raises(ReleaseNotFound, match=rf'rayservice {NS}/nope does not exist.*"nope"'):
        cluster.rayservice(NS, "nope")


def test_a_missing_or_invalid_kubeconfig_is_no_cluster_context(tmp_path: Path) -> None:
    with pytest.raises(NoClusterContext, match=r"set KUBECONFIG or pass --kubeconfig"):
        Cluster.from_kubeconfig(None, tmp_path / "missing")
    broken = tmp_path / "broken"
    broken.write_text("clusters: [unclosed")
    with pytest.raises(NoClusterContext, match=str(broken)):
        Cluster.from_kubeconfig(None, broken)


def test_an_unknown_context_is_no_cluster_context(kube: KubeStandIn, tmp_path: Path) -> None:
    kubeconfig = kube.write_kubeconfig(tmp_path / "kubeconfig")
    with pytest.raises(NoClusterContext, match=r"context 'prod'.*--context"):
        Cluster.from_kubeconfig("prod", kubeconfig)
    with Cluster.from_kubeconfig("standin", kubeconfig) as cluster:
        assert cluster.server == kube.url


def test_an_unreachable_api_server_is_no_cluster_context(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "gone", "cluster": {"server": "http://127.0.0.1:1"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "u"}}],
                "current-context": "gone",
            }
        )
    )
    with (
        Cluster.from_kubeconfig(None, kubeconfig) as cluster,
        pytest.raises(NoClusterContext, match=r"cannot reach the Kubernetes API server"),
    ):
        cluster.rayservice(NS, NAME)
