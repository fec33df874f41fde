"""deploy.kuberay: what KubeRay (v1.7.0, ray-operator/controllers/ray/common/pod.go) makes of
the chart's render. The cases marked "pod_test.go" are KubeRay's own tests, ported; the
rest hold the chart to what KubeRay does with it. The command lines are parsed by a real
bash, as a pod's container runs them; no API server is involved (there is none here)."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deploy.errors import InvalidValues
from deploy.kuberay import (
    cluster,
    convert_param_map,
    quantity_value,
    ray_start_command,
    static_findings,
    update_resources,
)
from tests.charts.test_chart import render, values, write_values


def ray_argv(line: str) -> list[str]:
    """The argv ``ray`` gets when bash runs a container's command line."""
    shell = 'ray() { printf "%s\\n" "$@"; }; ulimit() { :; }; ' + line
    done = subprocess.run(["bash", "-c", "--", shell], capture_output=True, text=True, check=True)
    return done.stdout.splitlines()


@pytest.mark.parametrize(
    ("node", "params", "limits", "expected"),
    [  # pod_test.go TestGenerateRayStartCommand
        ("worker", {}, {"nvidia.com/gpu": "1"}, "ray start  --num-gpus=1 "),
        ("worker", {}, {"nvidia.com/mig-2g.32gb": "1"}, "ray start  --num-gpus=1 "),
        ("worker", {}, {"google.com/tpu": "4"}, "ray start  --resources='{\"TPU\":4}' "),
        (
            "head",
            {},
            {"aws.amazon.com/neuroncore": "4", "nvidia.com/gpu": "1"},
            "ray start --head  --num-gpus=1  --resources='{\"neuron_cores\":4}' ",
        ),
        (
            "head",
            {"resources": '"{"custom_resource":2}"'},
            {"aws.amazon.com/neuroncore": "4"},
            'ray start --head  --resources=\'{"custom_resource":2,"neuron_cores":4}\' ',
        ),
        (
            "head",
            {"resources": "{"},
            {"aws.amazon.com/neuroncore": "4"},
            "ray start --head  --resources={ ",
        ),
        (
            "head",
            {"include-log-monitor": "false"},
            {},
            "ray start --head  --include-log-monitor=false ",
        ),
    ],
)
def test_ray_start_command_is_kuberays(
    node: Any, params: dict[str, str], limits: dict[str, str], expected: str
) -> None:
    assert ray_start_command(node, dict(params), {"limits": limits}) == expected


def test_group_resources_override_start_params_as_kuberay_does() -> None:
    # pod_test.go TestUpdateRayStartParamsResources
    params = {"num-cpus": "1", "memory": "1000", "resources": "'{\"Custom-Resource\": 10}'"}
    update_resources(params, {"cpu": "4", "Custom-Resource": "5"})
    assert params == {"num-cpus": "4", "memory": "1000", "resources": "'{\"Custom-Resource\":5}'"}
    params = {}
    update_resources(params, {"CPU": "2", "GPU": "4", "memory": "4Gi"})
    assert params == {"num-cpus": "2", "num-gpus": "4", "memory": "4294967296"}


def test_booleans_are_switches_and_quantities_round_up() -> None:
    assert convert_param_map({"block": "true", "no-monitor": "false", "port": "6379"}) == (
        " --block  --port=6379 "
    )
    assert [quantity_value(q) for q in ("500m", "2", "1.5", "4Gi")] == [1, 2, 2, 4 * 2**30]
    with pytest.raises(InvalidValues, match="not a Kubernetes quantity"):
        quantity_value("two")


def test_the_old_charts_resources_split_in_bash_and_the_charts_do_not(tmp_path: Path) -> None:
    """The bug this module was written to catch: the chart rendered the JSON bare, and bash
    split it at its space; quoted as KubeRay's generator quotes it, it is one word."""
    old = ray_start_command("worker", {"resources": '{"pool-cpu": 1000}'}, {})
    assert ray_argv(old)[-2:] == ["--resources={pool-cpu:", "1000}"]
    booted = cluster(render(write_values(tmp_path, values())), namespace="ml")
    for pod in booted.workers:
        argv = ray_argv(pod.ray.argv[-1])
        assert f'--resources={{"pool-{pod.group}": 1000}}' in argv, argv
        assert argv[:2] == ["start", f"--address={booted.head_service}:6379"] or "--block" in argv


def test_each_pod_gets_kuberays_command_env_and_probes(tmp_path: Path) -> None:
    data = values()
    data["serving"]["http"]["port"] = 8100
    booted = cluster(render(write_values(tmp_path, data)), namespace="ml")
    assert [p.group for p in booted.pods] == ["headgroup", "cpu"]  # the gpu group starts at 0
    head, worker = booted.head, booted.workers[0]
    assert head.ray.argv[:3] == ("/bin/bash", "-c", "--")
    head_argv = ray_argv(head.ray.argv[-1])
    assert {"--head", "--block", "--no-monitor", "--num-cpus=0", "--dashboard-host=0.0.0.0"} <= set(
        head_argv
    )
    worker_argv = ray_argv(worker.ray.argv[-1])
    assert "--num-cpus=2" in worker_argv and f"--memory={4 * 2**30}" in worker_argv
    assert worker.ray.env["RAY_ADDRESS"] == f"{booted.head_service}:6379"
    assert worker.ray.env["KUBERAY_GEN_RAY_START_CMD"].startswith("ray start")
    assert worker.init_containers[-1].name == "wait-gcs-ready"
    # Ray 2.60 >= 2.53: one HTTP health endpoint; a RayService worker is ready only when its
    # Serve proxy answers on the container port named serve
    assert (head.readiness.http_path, head.readiness.http_port) == ("/api/healthz", 52365)
    assert "http://localhost:8100/-/healthz" in worker.readiness.command[-1]


def test_static_findings_name_what_the_cluster_would_trip_over(tmp_path: Path) -> None:
    """What cannot run here (the API server, the operator's own calls) is judged from the
    render: the chart's default render has nothing to say, a broken one is named."""
    docs = render(write_values(tmp_path, values()))
    assert static_findings(docs, operator_namespace="kuberay-system") == []
    broken = copy.deepcopy(docs)
    service = next(d for d in broken if d["kind"] == "RayService")
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    head["automountServiceAccountToken"] = False
    service["spec"]["serveConfigV2"] = service["spec"]["serveConfigV2"].replace(
        "port: 8000", "port: 8100"
    )
    policy = next(d for d in broken if d["kind"] == "NetworkPolicy")
    policy["spec"]["ingress"] = [
        r for r in policy["spec"]["ingress"] if "podSelector" in r["from"][0]
    ]
    found = "\n".join(static_findings(broken, operator_namespace="kuberay-system"))
    assert "autoscaler sidecar cannot reach the API server" in found
    assert "serveConfigV2 http_options.port is 8100" in found
    assert "refuses the KubeRay operator (deploys Serve) on port 8265" in found
    assert "refuses Prometheus (the PodMonitor) on port 8080" in found
