"""The ingress's control plane: what it serves and what it knows of its pools.

Each ingress replica holds one :class:`ControlPlane`: the variants of every model (set at
each rollout step, ``reconfigure``), each model's router and the manifests and tasks of
its variants, and a watcher that follows Serve's replica lists, takes stalled replicas
out, probes what failed and reports each pool's load. The request path
(``serving.app``) only reads from it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from ray.exceptions import RayError
from ray.serve.context import _get_global_client
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import DeploymentStatus

from optimize.manifest import Manifest
from serving.config import ServingConfig, ServingShape, replica_deployment_name
from serving.errors import ConfigError, ModelUnavailable, ServingError, UnknownModel
from serving.fetch import artifact_manifest
from serving.metrics import IngressMetrics
from serving.routing.pool_stats import ReplicaState
from serving.routing.ray_transport import RayTransport
from serving.routing.router import MetricEvents, ModelRouter
from serving.tasks import Task, task_of

logger = logging.getLogger(__name__)

APP_NAME = "sluiceway"
STATUS_POLL_SECONDS = 1.0
# How often the ingress looks for stalled replicas, at most (a quarter of the stall bound
# when that is shorter): a hung replica's requests go elsewhere soon after the bound.
STALL_CHECK_SECONDS = 0.25
# A rollout step's new variants are split to once every replica serves them, or after this
# long (a GPU replica loading a large canary included).
VARIANT_WAIT_S = 120.0
VARIANT_POLL_S = 0.5
# Replica states in Serve's details: serving, or being reconfigured in place (and serving).
SERVING_STATES = frozenset({"RUNNING", "UPDATING"})


def direct(handle: DeploymentHandle) -> DeploymentHandle:
    """A handle that calls the replicas over gRPC, not as Ray actor tasks.

    Serve's ``_by_reference=False`` sends a request straight to the replica's gRPC server
    and its answer straight back: a shorter hop than an actor task. A replica that dies
    answers UNAVAILABLE, which Serve raises as ``ActorUnavailableError``: the router fails
    over as before. Calls and replies are plain pickles (``serving.calls``' dataclasses and
    arrays, all importable): Serve's default, cloudpickle, pickles each object in Python.
    """
    return handle.options(
        _by_reference=False, request_serialization="pickle", response_serialization="pickle"
    )


# In Serve's message for a deployment whose replicas wait to be placed (after
# RAY_SERVE_SLOW_STARTUP_WARNING_S, 30 s by default): what they need, what there is free.
UNPLACED_MARK = "Resources required for each replica"
_WANTED = re.compile(
    re.escape(UNPLACED_MARK) + r": (\{[^{}]*\}), total resources available: (\{[^{}]*\})"
)


def unplaceable(message: str) -> bool:
    """Whether Serve's ``message`` says a replica waits for a resource there is not enough
    of (a replica slow to start for another reason says so with nothing missing)."""
    found = _WANTED.search(message)
    if found is None:
        return False
    try:
        wanted, free = (json.loads(part) for part in found.groups())
    except json.JSONDecodeError:
        return False
    return any(amount > free.get(name, 0.0) for name, amount in wanted.items())


@dataclass(frozen=True)
class DeploymentState:
    running: tuple[str, ...]  # ids of the replicas RUNNING
    updating: bool  # Serve is rolling out new replicas
    message: str = ""  # Serve's own words on it (why it waits, why it failed)

    @property
    def unplaced(self) -> bool:
        """No replica runs and Serve says they cannot be placed (resources missing)."""
        return not self.running and unplaceable(self.message)


def deployment_states(app: str) -> dict[str, DeploymentState]:
    """Every deployment of ``app``: its running replicas, and whether it is updating.

    Read from the controller's instance details as a plain dict (the schema of Serve's REST
    API, ``GET /api/serve/applications/``) rather than through ``serve.status()``, which
    builds pydantic models from the same dict at many times the CPU: the ingress polls once
    a second, and that CPU holds the GIL its event loop needs to answer requests.
    ``_get_global_client`` is how ``serve.status()`` itself reaches the controller.
    """
    details = _get_global_client().get_serve_details()
    return {
        name: DeploymentState(
            tuple(r["replica_id"] for r in d["replicas"] if r["state"] == "RUNNING"),
            d["status"] == DeploymentStatus.UPDATING,
            d.get("message") or "",
        )
        for name, d in details["applications"][app]["deployments"].items()
    }


def serving_replicas(app: str) -> dict[str, tuple[str, ...]]:
    """Each deployment's replicas that serve or are being reconfigured in place."""
    details = _get_global_client().get_serve_details()
    return {
        name: tuple(r["replica_id"] for r in d["replicas"] if r["state"] in SERVING_STATES)
        for name, d in details["applications"][app]["deployments"].items()
    }


class ControlPlane:
    """One ingress replica's models, routers and pool watcher."""

    def __init__(
        self,
        shape: ServingShape,
        handles: dict[str, dict[str, DeploymentHandle]],
        metrics: IngressMetrics,
    ) -> None:
        self._shape = shape
        self._metrics = metrics
        self._handles = {
            name: {pool: direct(handle) for pool, handle in pools.items()}
            for name, pools in handles.items()
        }
        self.config: ServingConfig | None = None
        self.routers: dict[str, ModelRouter] = {}
        self.manifests: dict[str, dict[str, Manifest]] = {}
        self.tasks: dict[str, dict[str, Task]] = {}
        self._watcher: asyncio.Task[None] | None = None
        # each model's pools as Serve last said: running replicas, and why none can start
        self.pools_state: dict[str, dict[str, DeploymentState]] | None = None
        self._asked = False  # whether Serve was asked once (answered or not)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve ``user_config["variants"]`` (model -> variant -> weight and artifacts): a
        rollout step. Routers keep their pools' state; only the split changes.

        A step that cannot be applied (a manifest that cannot be read) leaves the variants
        as they were, logged: raising here would make Serve stop this replica."""
        try:
            config = self._shape.with_variants(user_config.get("variants", {}), "user_config")
            # Manifests are small JSON files beside the artifacts: labels, rate, input names
            # (checked against the config's sha256; an http(s) artifact's manifest alone).
            manifests = await asyncio.to_thread(
                lambda: {
                    name: {
                        variant: artifact_manifest(v.artifacts[model.routing.pools[0]])
                        for variant, v in model.variants.items()
                    }
                    for name, model in config.models.items()
                }
            )
        except ServingError as exc:
            if self.config is None:
                raise
            logger.error("new variants NOT applied, the previous ones serve: %s", exc.detail)
            return
        for name, model in config.models.items():
            if name in self.routers:
                added = set(model.variants) - set(self.routers[name].config.variants)
                if added:
                    await self._wait_loaded(name, model.routing.pools, added)
                self.routers[name].update(model)
            else:
                transport = RayTransport(name, self._handles[name])
                events = MetricEvents(self._metrics, name)
                self.routers[name] = ModelRouter(name, model, config.pools, transport, events)
            # a request that chose a variant now gone still finds its manifest
            self.manifests[name] = self.manifests.get(name, {}) | manifests[name]
            tasks = {v: task_of(m.input) for v, m in manifests[name].items()}
            self.tasks[name] = self.tasks.get(name, {}) | tasks
        self.config = config

    async def _wait_loaded(self, model: str, pools: list[str], variants: set[str]) -> None:
        """Until every replica of ``model``'s pools serves ``variants``: Serve reconfigures
        the pools and the ingresses at the same time, and a request split to a variant its
        replica has not loaded yet would fail. After ``VARIANT_WAIT_S`` they are split
        anyway (a replica that cannot load one answers 'not loaded' and the request fails
        over to another pool, as for a corrupt upload)."""
        deadline = time.monotonic() + VARIANT_WAIT_S
        while time.monotonic() < deadline:
            try:
                replicas = await asyncio.to_thread(serving_replicas, APP_NAME)
            except (KeyError, RayServeException, RayError):
                replicas = {}
            pinned = [
                (replica, self._handles[model][pool].loaded.remote(replica=replica))
                for pool in pools
                for replica in replicas.get(replica_deployment_name(model, pool), ())
            ]
            answers = await asyncio.gather(
                *(asyncio.wait_for(call, VARIANT_POLL_S * 4) for _, call in pinned),
                return_exceptions=True,
            )
            if all(
                not isinstance(answer, BaseException)
                and answer[0] == replica
                and variants <= set(answer[1])
                for (replica, _), answer in zip(pinned, answers, strict=True)
            ):
                return
            await asyncio.sleep(VARIANT_POLL_S)
        logger.warning(
            "%s: variants %s not loaded on every replica after %g s; splitting to them anyway",
            model,
            sorted(variants),
            VARIANT_WAIT_S,
        )

    def check_health(self) -> None:
        """Serve's health check: an ingress that was given no variants serves nothing."""
        if self.config is None:
            raise ConfigError(
                "the ingress was given no variants; they come as its user_config "
                "(serveConfigV2 'deployments', as the chart renders them, or "
                "serving.server.application_config)"
            )

    # -- plumbing -------------------------------------------------------------------

    def ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_pools())

    async def first_status(self) -> None:
        """Start the watcher and, the first time only, ask Serve now: what a request or a
        readiness probe needs to know cannot wait for the watcher's first poll."""
        self.ensure_watcher()
        if not self._asked:
            await self.refresh_from_status()

    async def refresh_from_status(self) -> None:
        """Replica counts per pool from Serve's controller (advisory: skipped if unavailable)."""
        self._asked = True
        try:
            deployments = await asyncio.to_thread(deployment_states, APP_NAME)
        except (KeyError, RayServeException, RayError) as exc:
            logger.debug("serve status unavailable: %s", exc)
            return
        pools_state: dict[str, dict[str, DeploymentState]] = {}
        for router in self.routers.values():
            pools_state[router.name] = {}
            for pool in router.order:
                state = deployments.get(replica_deployment_name(router.name, pool))
                if state is not None:
                    router.set_running_replicas(pool, state.running, updating=state.updating)
                    pools_state[router.name][pool] = state
        self.pools_state = pools_state

    def waiting(self) -> dict[str, dict[str, str]]:
        """The models no replica of which runs (model -> pool -> what Serve says of it):
        not ready. Everything, before Serve was first asked."""
        if self.pools_state is None:
            return {name: {} for name in self.routers}
        return {
            name: {pool: state.message for pool, state in pools.items()}
            for name, pools in self.pools_state.items()
            if not any(state.running for state in pools.values())
        }

    def refuse_if_unplaced(self, model: str) -> None:
        """A quick 503 for a model no replica of which runs and whose replicas Serve cannot
        place (resources missing), naming what they need: waiting for them until the
        deadline would only end in a 504 that says nothing."""
        pools = (self.pools_state or {}).get(model, {})
        if not pools or any(state.running for state in pools.values()):
            return
        unplaced = {pool: state for pool, state in pools.items() if state.unplaced}
        if unplaced:
            pool, state = next(iter(unplaced.items()))
            raise ModelUnavailable(
                f"model {model!r} has no replica running: Serve cannot place those of pool "
                f"{pool!r} ({state.message[state.message.index(UNPLACED_MARK) :]}); add "
                "the resources or nodes they need, or lower the pool's num_cpus/resources"
            )

    def _report_load(self) -> None:
        """Each pool's load as this ingress sees it (a gauge: sampled, not per request)."""
        for router in self.routers.values():
            for view in router.views():
                tags = {"model": router.name, "pool": view.name}
                self._metrics.inflight.set(view.held, tags=tags)

    async def _probe(self) -> None:
        """Probe failed pools, and stalled or lost replicas, until they answer."""
        probes = []
        for router in self.routers.values():
            for pool in router.order:
                stats = router.stats[pool]
                if not stats.healthy:
                    probes.append(router.probe(pool))
                probes.extend(
                    router.probe_replica(pool, r.id)
                    for r in stats.replicas.values()
                    if r.state is not ReplicaState.UP
                )
        await asyncio.gather(*probes)

    async def _watch_pools(self) -> None:
        """Follow Serve's replica states, take stalled replicas out, probe what failed."""
        tick = min(
            [STALL_CHECK_SECONDS]
            + [m.routing.stall_seconds / 4 for m in self._shape.models.values()]
        )
        polled = probed = -float("inf")
        while True:
            now = time.monotonic()
            if now - polled >= STATUS_POLL_SECONDS:
                polled = now
                await self.refresh_from_status()
                self._report_load()
            for router in self.routers.values():
                router.check_stalls()
            if now - probed >= min(
                m.routing.health_check_seconds for m in self._shape.models.values()
            ):
                probed = now
                await self._probe()
            await asyncio.sleep(tick)

    def router(self, model: str) -> ModelRouter:
        if model not in self.routers:
            raise UnknownModel(f"model {model!r} is not served; models: {sorted(self.routers)}")
        return self.routers[model]
