"""What runs in the cluster: a KubeRay RayService's status and its Ray pods.

A thin layer over the official ``kubernetes`` client: it reads the RayService
(``ray.io/v1``, plural ``rayservices``) and lists pods, and turns what the API server says
into frozen dataclasses or DeployErrors. Field names are KubeRay v1's
(``status.conditions``, ``status.activeServiceStatus.applicationStatuses``, ...).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
import yaml
from kubernetes import config
from kubernetes.client import ApiClient, CoreV1Api, CustomObjectsApi
from kubernetes.client.exceptions import ApiException

from deploy.errors import (
    ClusterRequestFailed,
    DeployError,
    NoClusterContext,
    ReleaseNotFound,
    RolloutTimeout,
)

logger = logging.getLogger(__name__)

RAYSERVICE_GROUP = "ray.io"
RAYSERVICE_VERSION = "v1"
RAYSERVICE_PLURAL = "rayservices"
CLUSTER_LABEL = "ray.io/cluster"
GROUP_LABEL = "ray.io/group"
HEAD_GROUP = "headgroup"
READY = "Ready"
UPGRADE_IN_PROGRESS = "UpgradeInProgress"


@dataclass(frozen=True)
class Condition:
    """One entry of ``status.conditions``."""

    type: str
    status: str  # "True", "False" or "Unknown", as Kubernetes writes it
    reason: str = ""
    message: str = ""

    def describe(self) -> str:
        """``Ready=False (reason: message)``."""
        detail = ": ".join(part for part in (self.reason, self.message) if part)
        return f"{self.type}={self.status}" + (f" ({detail})" if detail else "")


@dataclass(frozen=True)
class DeploymentStatus:
    """A Serve deployment's status (HEALTHY, UPDATING, UNHEALTHY, ...)."""

    status: str
    message: str = ""


@dataclass(frozen=True)
class ApplicationStatus:
    """A Serve application's status (RUNNING, DEPLOYING, DEPLOY_FAILED, ...)."""

    status: str
    message: str = ""
    deployments: Mapping[str, DeploymentStatus] = field(default_factory=dict)


@dataclass(frozen=True)
class RayServiceStatus:
    """What a RayService reports about itself."""

    namespace: str
    name: str
    conditions: tuple[Condition, ...]
    applications: Mapping[str, ApplicationStatus]
    cluster_name: str | None  # status.activeServiceStatus.rayClusterName
    pending_cluster_name: str | None  # set while KubeRay brings up a new cluster
    generation: int | None  # metadata.generation: bumped by each spec change
    observed_generation: int | None  # status.observedGeneration: what KubeRay has seen

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> RayServiceStatus:
        """Parse a RayService object as the API server returns it."""
        metadata = obj.get("metadata") or {}
        status = obj.get("status") or {}
        active = status.get("activeServiceStatus") or {}
        pending = status.get("pendingServiceStatus") or {}
        return cls(
            namespace=str(metadata.get("namespace", "")),
            name=str(metadata.get("name", "")),
            conditions=tuple(
                Condition(
                    type=str(c.get("type", "")),
                    status=str(c.get("status", "Unknown")),
                    reason=str(c.get("reason") or ""),
                    message=str(c.get("message") or ""),
                )
                for c in status.get("conditions") or []
            ),
            applications={
                app: ApplicationStatus(
                    status=str(raw.get("status") or ""),
                    message=str(raw.get("message") or ""),
                    deployments={
                        name: DeploymentStatus(
                            status=str(d.get("status") or ""), message=str(d.get("message") or "")
                        )
                        for name, d in (raw.get("serveDeploymentStatuses") or {}).items()
                        if d is not None
                    },
                )
                for app, raw in (active.get("applicationStatuses") or {}).items()
                if raw is not None
            },
            cluster_name=active.get("rayClusterName") or None,
            pending_cluster_name=pending.get("rayClusterName") or None,
            generation=metadata.get("generation"),
            observed_generation=status.get("observedGeneration"),
        )

    def condition(self, type_: str) -> Condition | None:
        """The condition of that type, if reported."""
        return next((c for c in self.conditions if c.type == type_), None)

    @property
    def ready(self) -> bool:
        """Condition Ready is True."""
        ready = self.condition(READY)
        return ready is not None and ready.status == "True"

    @property
    def upgrading(self) -> bool:
        """Condition UpgradeInProgress is True (KubeRay is preparing a new cluster)."""
        upgrade = self.condition(UPGRADE_IN_PROGRESS)
        return upgrade is not None and upgrade.status == "True"

    @property
    def observed(self) -> bool:
        """KubeRay has seen the latest spec (true when either generation is not reported)."""
        if self.generation is None or self.observed_generation is None:
            return True
        return self.observed_generation >= self.generation

    @property
    def settled(self) -> bool:
        """Ready, no upgrade in progress, and the latest spec observed."""
        return self.ready and not self.upgrading and self.observed

    def describe(self) -> str:
        """Conditions, generations and unhealthy deployments, in one line."""
        parts = [c.describe() for c in self.conditions] or ["no conditions reported yet"]
        if not self.observed:
            parts.append(
                f"spec generation {self.generation} not yet observed "
                f"(observed {self.observed_generation})"
            )
        parts += [
            f"{app}/{name}={d.status}" + (f" ({d.message})" if d.message else "")
            for app, status in self.applications.items()
            for name, d in status.deployments.items()
            if d.status != "HEALTHY"
        ]
        return "; ".join(parts)


class Cluster:
    """A Kubernetes cluster reached through one API client."""

    def __init__(self, api_client: ApiClient, *, request_timeout_s: float = 10.0) -> None:
        self._client = api_client
        self._custom = CustomObjectsApi(api_client)
        self._core = CoreV1Api(api_client)
        self._timeout = request_timeout_s

    @classmethod
    def from_kubeconfig(
        cls,
        context: str | None = None,
        kubeconfig: Path | None = None,
        *,
        request_timeout_s: float = 10.0,
    ) -> Cluster:
        """A client for ``context`` (default: the current one) of ``kubeconfig`` (default:
        $KUBECONFIG, else ~/.kube/config, as kubectl)."""
        where = str(kubeconfig) if kubeconfig else "the default kubeconfig"
        try:
            client = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(kubeconfig) if kubeconfig else None,
                context=context,
                persist_config=False,
            )
        except (config.ConfigException, yaml.YAMLError, OSError) as exc:
            reason = str(exc).replace("\n", " ")
            chosen = f", context {context!r}" if context else ""
            raise NoClusterContext(
                f"no usable Kubernetes context in {where}{chosen} ({reason}): set KUBECONFIG or "
                "pass --kubeconfig, and --context to pick a context"
            ) from exc
        return cls(client, request_timeout_s=request_timeout_s)

    @property
    def server(self) -> str:
        """The API server's URL."""
        return str(self._client.configuration.host)

    def close(self) -> None:
        """Release the client's connection pool."""
        self._client.close()  # type: ignore[no-untyped-call]

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def rayservice(self, namespace: str, name: str) -> RayServiceStatus:
        """The RayService's status; ReleaseNotFound when there is none of that name."""
        what = f"rayservice {namespace}/{name}"
        try:
            obj = self._custom.get_namespaced_custom_object(
                RAYSERVICE_GROUP,
                RAYSERVICE_VERSION,
                namespace,
                RAYSERVICE_PLURAL,
                name,
                _request_timeout=self._timeout,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise self._translate(exc, what) from exc
        if not isinstance(obj, Mapping):
            raise ClusterRequestFailed(f"{what}: the API server answered {type(obj).__name__}")
        return RayServiceStatus.from_object(obj)

    def pods_per_group(self, namespace: str, cluster_name: str) -> dict[str, int]:
        """Running pods of a Ray cluster per group (``headgroup`` and each worker group); a
        group whose pods are all pending or terminating counts 0."""
        what = f"pods of ray cluster {namespace}/{cluster_name}"
        try:
            pods = self._core.list_namespaced_pod(
                namespace,
                label_selector=f"{CLUSTER_LABEL}={cluster_name}",
                _request_timeout=self._timeout,
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise self._translate(exc, what) from exc
        counts: dict[str, int] = {}
        for pod in pods.items:
            group = (pod.metadata.labels or {}).get(GROUP_LABEL) if pod.metadata else None
            if group is None:
                continue
            running = (
                pod.status is not None
                and pod.status.phase == "Running"
                and pod.metadata is not None
                and pod.metadata.deletion_timestamp is None
            )
            counts[group] = counts.get(group, 0) + int(running)
        return counts

    def wait_ready(
        self,
        namespace: str,
        name: str,
        timeout_s: float,
        poll_s: float = 2.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        on_poll: Callable[[RayServiceStatus], None] | None = None,
    ) -> RayServiceStatus:
        """Poll the RayService until it is settled: condition Ready True, no
        UpgradeInProgress True, and its latest spec generation observed (so a Ready left
        over from before a ``helm upgrade`` does not count). ``on_poll`` sees every status
        (for progress); RolloutTimeout after ``timeout_s`` names the last conditions seen."""
        deadline = clock() + timeout_s
        while True:
            status = self.rayservice(namespace, name)
            if on_poll is not None:
                on_poll(status)
            if status.settled:
                logger.info("rayservice %s/%s is ready", namespace, name)
                return status
            now = clock()
            if now >= deadline:
                raise RolloutTimeout(
                    f"rayservice {namespace}/{name} was not ready after {timeout_s:g} s; last "
                    f"seen: {status.describe()}; see `kubectl -n {namespace} describe "
                    f"rayservice {name}`, wait longer, or roll back with `helm rollback`"
                )
            sleep(min(poll_s, deadline - now))

    def _translate(
        self, exc: ApiException | urllib3.exceptions.HTTPError, what: str
    ) -> DeployError:
        if isinstance(exc, urllib3.exceptions.HTTPError):
            cause = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
            return NoClusterContext(
                f"cannot reach the Kubernetes API server at {self.server} for {what} ({cause}): "
                "check the kubeconfig context (--context) and your network"
            )
        detail = _status_message(exc)
        if exc.status == 404:
            return ReleaseNotFound(
                f"{what} does not exist ({detail}): check the name and --namespace "
                "(`kubectl get rayservices -A` lists them)"
            )
        if exc.status in (401, 403):
            return ClusterRequestFailed(
                f"the API server at {self.server} refused access to {what} "
                f"(HTTP {exc.status}: {detail}): use a context allowed to get rayservices.ray.io "
                "and list pods there"
            )
        return ClusterRequestFailed(
            f"the API server at {self.server} failed to answer for {what} "
            f"(HTTP {exc.status}: {detail}); try again, or check the API server's health"
        )


def _status_message(exc: ApiException) -> str:
    """The ``message`` of the Status object the API server sent, else its reason phrase."""
    try:
        body = json.loads(exc.body or "")
    except ValueError:
        return str(exc.reason or "no detail")
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(exc.reason or "no detail")
