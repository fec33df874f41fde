"""What KubeRay makes of a rendered RayService: each pod's container command, environment,
ports and probes, as its operator builds them.

A port of the parts of ray-project/kuberay ``ray-operator/controllers/ray/common/pod.go``
(v1.7.0) that decide what runs in a Ray pod: ``updateRayStartParamsResources``,
``setMissingRayStartParams``, ``generateRayStartCommand``, ``addWellKnownAcceleratorResources``,
``convertParamMap``, ``BuildPod`` (the ``bash -c`` line), ``setContainerEnvVars`` and
``initLivenessAndReadinessProbe``, plus the ``wait-gcs-ready`` init container
``DefaultWorkerPodTemplate`` adds. Pure functions over the rendered objects: ``deploy.boot``
runs what they return, and the checks at the bottom judge what cannot run here.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Literal

import yaml

from deploy.errors import InvalidValues

NodeType = Literal["head", "worker"]

# ray-operator/controllers/ray/utils/constant.go
DEFAULT_GCS_PORT = 6379
DEFAULT_DASHBOARD_PORT = 8265
DEFAULT_METRICS_PORT = 8080
DEFAULT_DASHBOARD_AGENT_PORT = 52365
DEFAULT_SERVING_PORT = 8000
SERVING_PORT_NAME = "serve"
DASHBOARD_PORT_NAME = "dashboard"
METRICS_PORT_NAME = "metrics"
RAY_CONTAINER_INDEX = 0
RAY_NODE_HEALTH_PATH = "/api/healthz"
RAYLET_HEALTH_PATH = "api/local_raylet_healthz"
GCS_HEALTH_PATH = "api/gcs_healthz"
SERVE_PROXY_HEALTH_PATH = "-/healthz"
WGET_HEALTH = "wget --tries 1 -T {timeout} -q -O- http://localhost:{port}/{path} | grep success"
READINESS_TIMEOUT_S = 2
READINESS_INITIAL_DELAY_S = 10
READINESS_FAILURE_THRESHOLD = 10
# Ray 2.53 answers both probes on one HTTP endpoint (``supportsUnifiedHealthCheck``).
UNIFIED_HEALTH_CHECK_RAY = (2, 53, 0)
# Flags that take an explicit true/false; any other "true" becomes a bare switch.
EXPLICIT_BOOLEAN_FLAGS = ("log-color", "include-dashboard", "include-log-monitor")
# The first of these in a container's limits becomes a Ray resource
# (``customAcceleratorToRayResourceMap``).
CUSTOM_ACCELERATORS = {"google.com/tpu": "TPU", "aws.amazon.com/neuroncore": "neuron_cores"}
_MIG = re.compile(r"nvidia\.com/mig-\d+g\.\d+gb$")


def is_gpu_resource(key: str) -> bool:
    """``utils.IsGPUResourceKey``: a name ending in gpu, or an NVIDIA MIG slice."""
    return key.endswith("gpu") or _MIG.search(key) is not None


_QUANTITY = re.compile(r"^([+-]?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(m|Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_SUFFIX: dict[str, Fraction] = {
    "": Fraction(1),
    "m": Fraction(1, 1000),
    **{s: Fraction(1024**i) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
    **{s: Fraction(1000**i) for i, s in enumerate(("k", "M", "G", "T", "P", "E"), 1)},
}


def quantity(text: str | int | float) -> Fraction:
    """A Kubernetes resource quantity (``2``, ``500m``, ``4Gi``) as an exact number."""
    match = _QUANTITY.match(str(text).strip())
    if match is None:
        raise InvalidValues(f"{text!r} is not a Kubernetes quantity (e.g. 2, 500m, 4Gi)")
    return Fraction(match.group(1)) * _SUFFIX[match.group(2) or ""]


def quantity_value(text: str | int | float) -> int:
    """``resource.Quantity.Value()``: the quantity rounded up to a whole number."""
    return math.ceil(quantity(text))


@dataclass(frozen=True)
class Probe:
    """A probe as the kubelet runs it: an HTTP GET on the pod's IP, or a command in it."""

    http_path: str | None = None
    http_port: int | None = None
    command: tuple[str, ...] = ()
    initial_delay_s: float = 0
    period_s: float = 10
    timeout_s: float = 1
    failure_threshold: int = 3


@dataclass(frozen=True)
class Container:
    """One container of a pod, as it will run: argv, environment, mounts."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    mounts: Mapping[str, str] = field(default_factory=dict)  # mount path -> volume name
    read_only: frozenset[str] = frozenset()  # mount paths mounted read-only


@dataclass(frozen=True)
class Pod:
    """A Ray pod of the cluster: its init containers, its Ray container, probes, ports."""

    name: str
    group: str
    node_type: NodeType
    init_containers: tuple[Container, ...]
    ray: Container
    ports: Mapping[str, int]
    readiness: Probe
    liveness: Probe
    volumes: Mapping[str, Mapping[str, Any]]
    service_account: str
    automount_token: bool | None
    run_as: tuple[int, int] | None  # uid, gid of the pod's securityContext


@dataclass(frozen=True)
class Cluster:
    """The pods KubeRay would create for a RayService (minimum replicas of each group)."""

    name: str
    namespace: str
    head_service: str  # the head Service's DNS name workers join through
    pods: tuple[Pod, ...]
    serve_config: str  # serveConfigV2, as the RayService controller PUTs it (YAML)
    autoscaling: bool

    @property
    def head(self) -> Pod:
        return next(p for p in self.pods if p.node_type == "head")

    @property
    def workers(self) -> tuple[Pod, ...]:
        return tuple(p for p in self.pods if p.node_type == "worker")


def rayservice(docs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any]:
    """The one RayService among rendered objects."""
    found = [d for d in docs if d.get("kind") == "RayService"]
    if len(found) != 1:
        raise InvalidValues(f"the render holds {len(found)} RayService objects; expected one")
    return found[0]


def cluster(
    docs: Sequence[Mapping[str, Any]],
    *,
    namespace: str = "default",
    secrets: Mapping[str, Mapping[str, str]] | None = None,
    replicas: Mapping[str, int] | None = None,
) -> Cluster:
    """The pods of the rendered RayService's cluster: the head, and each worker group's
    ``replicas`` (its ``replicas`` field by default, the autoscaler's starting point).
    ``secrets`` are the Secrets ``secretKeyRef`` env entries read (name -> key -> value)."""
    service = rayservice(docs)
    name = str(service["metadata"]["name"])
    spec = service["spec"]["rayClusterConfig"]
    # KubeRay names the RayCluster <rayservice>-<5 random chars>; its head Service
    # <cluster>-head-svc. A fixed suffix keeps the boot repeatable.
    cluster_name = f"{name}-boot0"
    head_service = f"{cluster_name}-head-svc.{namespace}.svc.cluster.local"
    autoscaling = bool(spec.get("enableInTreeAutoscaling"))
    version = str(spec.get("rayVersion", ""))
    head_spec = spec["headGroupSpec"]
    head_params = dict(head_spec.get("rayStartParams") or {})
    head_port = str(head_params.get("port", DEFAULT_GCS_PORT))
    # (pod name, group, node type, group spec): the head, then each group's replicas
    plan: list[tuple[str, str, NodeType, Mapping[str, Any]]] = [
        (f"{cluster_name}-head", "headgroup", "head", head_spec)
    ]
    for group in spec.get("workerGroupSpecs") or []:
        name = str(group["groupName"])
        count = (replicas or {}).get(name, int(group.get("replicas", group.get("minReplicas", 0))))
        plan += [(f"{cluster_name}-{name}-worker-{i}", name, "worker", group) for i in range(count)]
    pods = [
        _pod(
            pod_name,
            group_name,
            node_type,
            group_spec,
            cluster_name=cluster_name,
            namespace=namespace,
            head_port=head_port,
            head_service=head_service,
            autoscaling=autoscaling,
            version=version,
            secrets=secrets or {},
        )
        for pod_name, group_name, node_type, group_spec in plan
    ]
    return Cluster(
        name=cluster_name,
        namespace=namespace,
        head_service=head_service,
        pods=tuple(pods),
        serve_config=str(service["spec"].get("serveConfigV2", "")),
        autoscaling=autoscaling,
    )


def _pod(
    pod_name: str,
    group: str,
    node_type: NodeType,
    group_spec: Mapping[str, Any],
    *,
    cluster_name: str,
    namespace: str,
    head_port: str,
    head_service: str,
    autoscaling: bool,
    version: str,
    secrets: Mapping[str, Mapping[str, str]],
) -> Pod:
    template = group_spec["template"]
    pod_spec = template["spec"]
    container = pod_spec["containers"][RAY_CONTAINER_INDEX]
    params = {k: str(v) for k, v in (group_spec.get("rayStartParams") or {}).items()}
    update_resources(params, group_spec.get("resources") or {})
    params = set_missing_params(params, node_type, head_port=head_port, head_service=head_service)
    if node_type == "head" and autoscaling:
        params["no-monitor"] = "true"
    start = ray_start_command(node_type, params, container.get("resources") or {})
    argv = container_argv(container, start)
    ports = {
        str(p["name"]): int(p["containerPort"]) for p in container.get("ports") or [] if "name" in p
    }
    ports.setdefault(METRICS_PORT_NAME, DEFAULT_METRICS_PORT)  # KubeRay adds it when missing
    labels = dict(template.get("metadata", {}).get("labels") or {})
    field_values = {
        "metadata.name": pod_name,
        "metadata.namespace": namespace,
        "metadata.labels['ray.io/cluster']": cluster_name,
        "metadata.labels['ray.io/group']": group,
        **{f"metadata.labels['{k}']": str(v) for k, v in labels.items()},
    }
    env = container_env(container, field_values, secrets)
    env |= kuberay_env(
        env,
        node_type,
        cluster_name=cluster_name,
        namespace=namespace,
        pod_name=pod_name,
        group=group,
        head_service=head_service,
        head_port=head_port,
        start_command=start,
    )
    mounts, read_only = _mounts(container)
    inits = [
        Container(
            name=str(init["name"]),
            argv=tuple(str(a) for a in [*(init.get("command") or []), *(init.get("args") or [])]),
            env=container_env(init, field_values, secrets)
            | {"FQ_RAY_IP": head_service, "RAY_IP": head_service.split(".")[0]},
            mounts=_mounts(init)[0],
            read_only=_mounts(init)[1],
        )
        for init in pod_spec.get("initContainers") or []
    ]
    if node_type == "worker":
        inits.append(
            Container(
                name="wait-gcs-ready",
                argv=("/bin/bash", "-c", "--", wait_gcs_script(head_service, head_port)),
                env=dict(env),
                mounts=mounts,
                read_only=read_only,
            )
        )
    readiness, liveness = probes(container, node_type, params, version)
    security = pod_spec.get("securityContext") or {}
    run_as = None
    if "runAsUser" in security:
        run_as = (
            int(security["runAsUser"]),
            int(security.get("runAsGroup", security["runAsUser"])),
        )
    service_account = str(pod_spec.get("serviceAccountName") or "")
    if node_type == "head" and autoscaling and not service_account:
        service_account = cluster_name  # utils.GetHeadGroupServiceAccountName
    volumes = {str(v["name"]): v for v in pod_spec.get("volumes") or []}
    return Pod(
        name=pod_name,
        group=group,
        node_type=node_type,
        init_containers=tuple(inits),
        ray=Container(
            name=str(container["name"]), argv=argv, env=env, mounts=mounts, read_only=read_only
        ),
        ports=ports,
        readiness=readiness,
        liveness=liveness,
        volumes=volumes,
        service_account=service_account,
        automount_token=pod_spec.get("automountServiceAccountToken"),
        run_as=run_as,
    )


def update_resources(params: dict[str, str], group_resources: Mapping[str, Any]) -> None:
    """``updateRayStartParamsResources``: a group's top-level ``resources`` override its
    CPU, memory and GPU flags, and the rest become ``--resources`` as quoted JSON."""
    custom: dict[str, float] = {}
    for name, amount in group_resources.items():
        lowered = str(name).lower()
        if lowered == "cpu":
            params["num-cpus"] = str(quantity_value(amount))
        elif lowered == "memory":
            params["memory"] = str(quantity_value(amount))
        elif is_gpu_resource(lowered):
            params["num-gpus"] = str(quantity_value(amount))
        else:
            custom[str(name)] = float(quantity(amount))
    if custom:
        params["resources"] = f"'{_go_json(custom)}'"


def set_missing_params(
    params: Mapping[str, str], node_type: NodeType, *, head_port: str, head_service: str
) -> dict[str, str]:
    """``setMissingRayStartParams``: a worker's ``--address``, the head's dashboard host,
    the metrics port, ``--block`` and the dashboard agent's port."""
    result = dict(params)
    if node_type == "worker":
        result.setdefault("address", f"{head_service}:{head_port}")
    else:
        result.setdefault("dashboard-host", "0.0.0.0")
    result.setdefault("metrics-export-port", str(DEFAULT_METRICS_PORT))
    result["block"] = "true"
    result.setdefault("dashboard-agent-listen-port", str(DEFAULT_DASHBOARD_AGENT_PORT))
    return result


def ray_start_command(
    node_type: NodeType, params: dict[str, str], resources: Mapping[str, Any]
) -> str:
    """``generateRayStartCommand``: CPUs, memory and GPUs from the container's limits (CPU
    from its requests when it has no limit) unless given, then every flag."""
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    if "num-cpus" not in params:
        for source in (limits, requests):
            if "cpu" in source and quantity(source["cpu"]) != 0:
                params["num-cpus"] = str(quantity_value(source["cpu"]))
                break
    if "memory" not in params and "memory" in limits and quantity(limits["memory"]) != 0:
        params["memory"] = str(quantity_value(limits["memory"]))
    _add_accelerators(params, limits)
    head = "--head " if node_type == "head" else ""
    return f"ray start {head}{convert_param_map(params)}"


def _add_accelerators(params: dict[str, str], limits: Mapping[str, Any]) -> None:
    """``addWellKnownAcceleratorResources``."""
    if not limits:
        return
    raw = params.get("resources")
    try:
        resources: dict[str, float] = json.loads(raw.strip("'\"` ")) if raw else {}
    except json.JSONDecodeError:
        return  # KubeRay logs it and leaves the flags as they are
    added = any(name in resources for name in CUSTOM_ACCELERATORS.values())
    for key in sorted(limits):
        amount = quantity(limits[key])
        if "num-gpus" not in params and is_gpu_resource(key) and amount != 0:
            params["num-gpus"] = str(math.ceil(amount))
        if not added and key in CUSTOM_ACCELERATORS and amount != 0:
            if CUSTOM_ACCELERATORS[key] not in resources:
                resources[CUSTOM_ACCELERATORS[key]] = float(amount)
                params["resources"] = f"'{_go_json(resources)}'"
            added = True


def _go_json(data: Mapping[str, float]) -> str:
    """Go's ``json.Marshal`` of a map[string]float64: sorted keys, no spaces, 1000 not 1000.0."""
    return json.dumps(
        {k: (int(v) if float(v).is_integer() else v) for k, v in sorted(data.items())},
        separators=(",", ":"),
    )


def convert_param_map(params: Mapping[str, str]) -> str:
    """``convertParamMap``: `` --key=value `` for each parameter in key order, a bare
    `` --key `` for ``true``, nothing for ``false`` (but for the explicit boolean flags).
    Values go in verbatim: the shell that runs the line is what splits and unquotes them."""
    flags = []
    for key in sorted(params):
        value = params[key]
        if value.lower() in ("true", "false") and key not in EXPLICIT_BOOLEAN_FLAGS:
            if value.lower() == "true":
                flags.append(f" --{key} ")
        else:
            flags.append(f" --{key}={value} ")
    return "".join(flags)


def container_argv(container: Mapping[str, Any], start_command: str) -> tuple[str, ...]:
    """``BuildPod``: the container's own command and args, if any, then
    ``ulimit -n ...; ray start ...``, all one ``bash -c`` line (``utils.GetContainerCommand``;
    ``-l`` only when the operator runs with ENABLE_LOGIN_SHELL)."""
    own = "".join(
        f" {part} " for part in [*(container.get("command") or []), *(container.get("args") or [])]
    )
    generated = f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {start_command}"
    if "ray start" in own:
        return tuple(
            str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]
        )
    line = f"{own} && {generated}" if own else generated
    return ("/bin/bash", "-c", "--", line)


def container_env(
    container: Mapping[str, Any],
    field_values: Mapping[str, str],
    secrets: Mapping[str, Mapping[str, str]],
) -> dict[str, str]:
    """A container's ``env`` as the kubelet resolves it: values, fieldRefs and secretKeyRefs."""
    env: dict[str, str] = {}
    for entry in container.get("env") or []:
        name = str(entry["name"])
        if "value" in entry:
            env[name] = _expand(str(entry["value"]), env)
            continue
        source = entry.get("valueFrom") or {}
        if "fieldRef" in source:
            path = str(source["fieldRef"]["fieldPath"])
            if path not in field_values:
                raise InvalidValues(f"env {name}: fieldRef {path} is not one this boot knows")
            env[name] = field_values[path]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            secret = secrets.get(str(ref["name"]))
            if secret is None or str(ref["key"]) not in secret:
                raise InvalidValues(
                    f"env {name} reads key {ref['key']!r} of Secret {ref['name']!r}, which this "
                    "boot was not given: pass it as a secret (name, key, value)"
                )
            env[name] = secret[str(ref["key"])]
        else:
            raise InvalidValues(f"env {name}: {sorted(source)} is not a source this boot knows")
    return env


def _expand(value: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of earlier variables."""
    return re.sub(
        r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1), m.group(0)), value
    )


def kuberay_env(
    env: Mapping[str, str],
    node_type: NodeType,
    *,
    cluster_name: str,
    namespace: str,
    pod_name: str,
    group: str,
    head_service: str,
    head_port: str,
    start_command: str,
) -> dict[str, str]:
    """``setContainerEnvVars`` for a RayService's cluster: what KubeRay adds to the Ray
    container (user values of the same name win where KubeRay checks for them)."""
    added: dict[str, str] = {}
    ip = "127.0.0.1" if node_type == "head" else head_service
    if node_type == "worker":
        added |= {"FQ_RAY_IP": head_service, "RAY_IP": head_service.split(".")[0]}
    added |= {
        "RAY_CLUSTER_NAME": cluster_name,
        "RAY_CLUSTER_NAMESPACE": namespace,
        "RAY_CLOUD_INSTANCE_ID": pod_name,
        "RAY_NODE_TYPE_NAME": group,
        "KUBERAY_GEN_RAY_START_CMD": start_command,
    }
    defaults = {
        "RAY_PORT": head_port,
        "RAY_TIMEOUT_MS_TASK_WAIT_FOR_DEATH_INFO": "0",
        "RAY_GCS_SERVER_REQUEST_TIMEOUT_SECONDS": "5",
        "RAY_SERVE_KV_TIMEOUT_S": "5",
        "RAY_ADDRESS": f"{ip}:{head_port}",
        "RAY_USAGE_STATS_KUBERAY_IN_USE": "1",
        "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE": "1",
    }
    added |= {k: v for k, v in defaults.items() if k not in env}
    if node_type == "head":
        added["RAY_USAGE_STATS_EXTRA_TAGS"] = "kuberay_version=v1.7.0;kuberay_crd=RayService"
    return added


def wait_gcs_script(head_service: str, head_port: str) -> str:
    """The ``wait-gcs-ready`` init container's loop (``DefaultWorkerPodTemplate``)."""
    address = f"{head_service}:{head_port}"
    return (
        "SECONDS=0; while true; do "
        f"if ray health-check --address {address} > /dev/null 2>&1; "
        "then echo 'GCS is ready.'; break; fi; "
        'echo "$SECONDS seconds elapsed: Waiting for GCS to be ready."; sleep 5; done'
    )


def probes(
    container: Mapping[str, Any], node_type: NodeType, params: Mapping[str, str], version: str
) -> tuple[Probe, Probe]:
    """``initLivenessAndReadinessProbe`` for a RayService pod without probes of its own:
    (readiness, liveness). A worker is ready only when its Serve proxy answers too."""

    def port(key: str, default: int) -> int:
        try:
            return int(params[key])
        except (KeyError, ValueError):
            return default

    agent = port("dashboard-agent-listen-port", DEFAULT_DASHBOARD_AGENT_PORT)
    commands = [
        WGET_HEALTH.format(timeout=READINESS_TIMEOUT_S, port=agent, path=RAYLET_HEALTH_PATH)
    ]
    if node_type == "head":
        commands.append(
            WGET_HEALTH.format(
                timeout=READINESS_FAILURE_THRESHOLD,
                port=port("dashboard-port", DEFAULT_DASHBOARD_PORT),
                path=GCS_HEALTH_PATH,
            )
        )
    unified = _version(version) >= UNIFIED_HEALTH_CHECK_RAY
    timeout = 5 if node_type == "head" else 2

    def probe(initial: float, threshold: int) -> Probe:
        if unified:
            return Probe(RAY_NODE_HEALTH_PATH, agent, (), initial, 5, timeout, threshold)
        return Probe(
            None, None, ("bash", "-c", " && ".join(commands)), initial, 5, timeout, threshold
        )

    liveness = probe(30, 120)
    readiness = probe(READINESS_INITIAL_DELAY_S, READINESS_FAILURE_THRESHOLD)
    if node_type == "worker":
        serve_port = serving_port(container)
        commands.append(
            WGET_HEALTH.format(
                timeout=READINESS_INITIAL_DELAY_S, port=serve_port, path=SERVE_PROXY_HEALTH_PATH
            )
        )
        readiness = Probe(None, None, ("bash", "-c", " && ".join(commands)), 10, 5, timeout, 1)
    return readiness, liveness


def serving_port(container: Mapping[str, Any]) -> int:
    """The container port named ``serve`` (8000 when none is): where KubeRay's probes and
    the serve Service expect Serve's HTTP."""
    for entry in container.get("ports") or []:
        if entry.get("name") == SERVING_PORT_NAME:
            return int(entry["containerPort"])
    return DEFAULT_SERVING_PORT


def _version(text: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", text)[:3]
    return tuple(int(p) for p in parts) if parts else (0,)


def _mounts(container: Mapping[str, Any]) -> tuple[dict[str, str], frozenset[str]]:
    mounts = {str(m["mountPath"]): str(m["name"]) for m in container.get("volumeMounts") or []}
    read_only = frozenset(
        str(m["mountPath"]) for m in container.get("volumeMounts") or [] if m.get("readOnly")
    )
    return mounts, read_only


# -- what cannot run here, judged from the render -------------------------------------


def static_findings(
    docs: Sequence[Mapping[str, Any]], *, operator_namespace: str | None = None
) -> list[str]:
    """What a cluster would trip over that no process here can show: the autoscaler's
    token, the ports the probes, the serve Service, the PodMonitor and the operator use, and
    whether the NetworkPolicy admits their callers. Empty when all is well."""
    service = rayservice(docs)
    spec = service["spec"]["rayClusterConfig"]
    found: list[str] = []
    head_pod = spec["headGroupSpec"]["template"]["spec"]
    if (
        spec.get("enableInTreeAutoscaling")
        and head_pod.get("automountServiceAccountToken") is False
    ):
        found.append(
            "in-tree autoscaling is on but the head pod mounts no ServiceAccount token: "
            "KubeRay's autoscaler sidecar cannot reach the API server, no group ever scales"
        )
    serve = yaml_load(str(service["spec"].get("serveConfigV2", "")))
    http = serve.get("http_options") or {}
    serve_port = int(http.get("port", DEFAULT_SERVING_PORT))
    groups = [("head", spec["headGroupSpec"])] + [
        (str(g["groupName"]), g) for g in spec.get("workerGroupSpecs") or []
    ]
    for name, group in groups:
        container = group["template"]["spec"]["containers"][RAY_CONTAINER_INDEX]
        ports = {str(p.get("name")): int(p["containerPort"]) for p in container.get("ports") or []}
        if serving_port(container) != serve_port:
            found.append(
                f"group {name}: its container port named serve is {serving_port(container)} but "
                f"serveConfigV2 http_options.port is {serve_port}: readiness probes and the "
                "serve Service call a port Serve does not listen on"
            )
        for monitor in (d for d in docs if d.get("kind") == "PodMonitor"):
            for endpoint in monitor["spec"].get("podMetricsEndpoints") or []:
                if endpoint.get("port") and endpoint["port"] not in ports:
                    found.append(
                        f"group {name}: no container port named {endpoint['port']} for the "
                        "PodMonitor"
                    )
        params = group.get("rayStartParams") or {}
        metrics = int(params.get("metrics-export-port", DEFAULT_METRICS_PORT))
        if ports.get(METRICS_PORT_NAME, metrics) != metrics:
            found.append(
                f"group {name}: container port metrics is {ports[METRICS_PORT_NAME]} but Ray "
                f"exports on {metrics} (rayStartParams metrics-export-port)"
            )
    for policy in (d for d in docs if d.get("kind") == "NetworkPolicy"):
        found += _policy_findings(policy, serve_port, operator_namespace, None, spec)
    return found


def yaml_load(text: str) -> dict[str, Any]:
    loaded = yaml.safe_load(text) if text else {}
    return dict(loaded or {})


def _admits(policy: Mapping[str, Any], port: int, namespace: str | None) -> bool:
    """Whether an ingress rule of ``policy`` admits TCP ``port`` from pods of ``namespace``
    (None: from any namespace the rule names)."""
    for rule in policy["spec"].get("ingress") or []:
        ports = [int(p["port"]) for p in rule.get("ports") or [] if "port" in p]
        if ports and port not in ports:
            continue
        for peer in rule.get("from") or [{}]:
            if "podSelector" in peer and "namespaceSelector" not in peer:
                continue  # the release's own pods only
            selector = peer.get("namespaceSelector")
            if selector is None or namespace is None:
                return True
            names = set((selector.get("matchLabels") or {}).values())
            for expression in selector.get("matchExpressions") or []:
                if expression.get("operator") == "In":
                    names |= set(expression.get("values") or [])
            if not selector or namespace in names:
                return True
    return False


def _policy_findings(
    policy: Mapping[str, Any],
    serve_port: int,
    operator_namespace: str | None,
    monitor_namespace: str | None,
    spec: Mapping[str, Any],
) -> list[str]:
    found = []
    head = spec["headGroupSpec"]
    dashboard = int(
        (head.get("rayStartParams") or {}).get("dashboard-port", DEFAULT_DASHBOARD_PORT)
    )
    metrics = int(
        (head.get("rayStartParams") or {}).get("metrics-export-port", DEFAULT_METRICS_PORT)
    )
    callers = [
        ("the KubeRay operator (deploys Serve)", dashboard, operator_namespace),
        ("the KubeRay operator (checks the head's Serve proxy)", serve_port, operator_namespace),
        ("clients of the serve Service", serve_port, None),
        ("Prometheus (the PodMonitor)", metrics, monitor_namespace),
    ]
    for who, port, namespace in callers:
        if not _admits(policy, port, namespace):
            where = f" from namespace {namespace}" if namespace else ""
            found.append(
                f"NetworkPolicy {policy['metadata']['name']} refuses {who} on port {port}{where}"
            )
    return found
