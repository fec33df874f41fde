"""The HTTP front door (one port): v2 inference protocol, audio classify, model listing.

Every response names the ingress replica, variant, pool and artifact that served it
(``x-sluiceway-ingress``, ``x-sluiceway-variant``, ``x-sluiceway-pool``,
``x-sluiceway-artifact``, and ``x-sluiceway-route``: primary, latency, saturated, failover,
sample) and where its time went (``Server-Timing``).
Errors go through one handler table: ``ServingError`` subclasses carry their status.

No ``from __future__ import annotations`` here: FastAPI must resolve the route signatures
at run time, and Serve's class-based ingress hides this module's globals from it.
"""

import asyncio
import functools
import hmac
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.exceptions import RayError
from ray.serve.context import _get_global_client
from ray.serve.exceptions import RayServeException
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import DeploymentStatus
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from optimize.manifest import Manifest
from serving.auth import read_token
from serving.build import build_version
from serving.config import (
    INGRESS_NAME,
    ServingConfig,
    ServingShape,
    replica_deployment_name,
)
from serving.errors import (
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    PayloadTooLarge,
    PoolSaturated,
    ServingError,
    Unauthorized,
    UnknownModel,
)
from serving.fetch import artifact_manifest
from serving.metrics import IngressMetrics, refresh_forever
from serving.openapi import (
    INFER_CODES,
    ClassifyResponse,
    EmbedResponse,
    V2InferResponse,
    V2ModelMetadata,
    classify_docs,
    embed_docs,
    errors,
    v2_infer_docs,
)
from serving.openapi import (
    components as openapi_components,
)
from serving.protocols.v2 import (
    HEADER_LENGTH,
    TensorSpec,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)
from serving.routing.pool_stats import ReplicaState
from serving.routing.ray_transport import RayTransport
from serving.routing.router import MetricEvents, ModelRouter, Routed
from serving.routing.variants import PIN_HEADER
from serving.tasks import INLINE_DECODE_BYTES, Task, Verb, task_of

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

# The inference routes (path -> the Ingress method): answered before FastAPI's routing.
INFER_PATH = "/v2/models/{model}/infer"
INFER_VERSION_PATH = "/v2/models/{model}/versions/{version}/infer"
CLASSIFY_PATH = "/v1/models/{model}:classify"
EMBED_PATH = "/v1/models/{model}:embed"
FAST_ROUTES = {
    INFER_PATH: "infer",
    INFER_VERSION_PATH: "infer_version",
    CLASSIFY_PATH: "classify",
    EMBED_PATH: "embed",
}


def _path_regex(template: str) -> re.Pattern[str]:
    """A route template as FastAPI matches it: each ``{name}`` is one path segment."""
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(
        f"(?P<{part}>[^/]+)" if i % 2 else re.escape(part) for i, part in enumerate(parts)
    )
    return re.compile(f"^{pattern}$")


def _route_path(scope: Scope) -> str:
    """The path below the app's mount point (Serve's route prefix), as routes match it."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


class Api(FastAPI):
    """FastAPI, with the inference routes answered before its routing and dependency
    solving, which cost each request more than all of Sluiceway's own work in the ingress
    (`make bench-serve`'s Server-Timing spans; the numbers are in the commit).

    The routes stay declared below (they are the OpenAPI spec); a POST whose path matches
    one calls the same method directly, and its errors go through the same handlers.
    """

    fast_routes: ClassVar[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
        (_path_regex(path), name) for path, name in FAST_ROUTES.items()
    )

    def inference_route(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """The inference method a request goes to, and its path parameters; None for the
        rest (FastAPI routes those)."""
        if method != "POST":
            return None
        for regex, name in self.fast_routes:
            match = regex.match(path)
            if match is not None:
                return name, match.groupdict()
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self.inference_route(scope["method"], _route_path(scope))
            if scope["type"] == "http"
            else None
        )
        if route is None:
            await super().__call__(scope, receive, send)
            return
        name, params = route
        request = Request(scope, receive, send)
        ingress = serve.get_replica_context().servable_object
        try:
            response = await getattr(ingress, name)(request=request, **params)
        except ServingError as exc:
            response = await _serving_error(request, exc)
        except Exception as exc:  # noqa: BLE001  # as FastAPI's handler for Exception would
            response = await _unexpected(request, exc)
        await response(scope, receive, send)


api = Api(
    title="Sluiceway",
    description="Audio model serving: Open Inference Protocol v2 and audio classification.",
    version="1",
)


def _openapi() -> dict[str, Any]:
    """FastAPI's spec plus the schemas the raw-body routes document by reference."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        spec.setdefault("components", {}).setdefault("schemas", {}).update(openapi_components())
        api.openapi_schema = spec
    return api.openapi_schema


api.openapi = _openapi  # type: ignore[method-assign]


@api.exception_handler(ServingError)
async def _serving_error(_request: Request, exc: ServingError) -> JSONResponse:
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """FastAPI's own answers (no route: 404; wrong method: 405) keep the error contract."""
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no route {request.url.path!r}: see /docs for the API"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path!r}"
    return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    return JSONResponse({"error": f"invalid request: {exc.errors()}"}, status_code=422)


@api.exception_handler(Exception)
async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    """A bug or a library's error outside the counted routes: still JSON, still logged."""
    logger.error("unexpected error: %r", exc, exc_info=exc)
    message = f"internal error ({type(exc).__name__}); the ingress log has the details"
    return JSONResponse({"error": message}, status_code=500)


@dataclass
class Tally:
    """One inference request's labels, filled in as they become known."""

    model: str
    variant: str = "none"
    pool: str = "none"
    body_bytes: int = 0  # counted against the ingress's bytes in flight until it ends


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


@dataclass(frozen=True)
class DeploymentState:
    running: tuple[str, ...]  # ids of the replicas RUNNING
    updating: bool  # Serve is rolling out new replicas


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


def _ingress_timing(start: float) -> str:
    """``Server-Timing`` of a request the ingress answered without a result (shed, 504)."""
    return f"ingress;dur={(time.perf_counter() - start) * 1e3:.1f}"


def _route_headers(routed: Routed, start: float, ingress: str) -> dict[str, str]:
    """Where the request went (ingress replica, pool, variant, why), and where its time went
    (``Server-Timing``, milliseconds: in the ingress in all, waiting on the replica, inside
    the replica)."""
    timing = {
        "ingress": time.perf_counter() - start,
        "dispatch": routed.dispatch_s,
        "replica": routed.replica_s,
    }
    return {
        "x-sluiceway-ingress": ingress,
        "x-sluiceway-variant": routed.variant,
        "x-sluiceway-pool": routed.pool,
        "x-sluiceway-artifact": routed.artifact,
        "x-sluiceway-route": routed.reason.value,
        "server-timing": ", ".join(f"{k};dur={v * 1e3:.1f}" for k, v in timing.items()),
    }


@serve.deployment(name=INGRESS_NAME)
@serve.ingress(api)
class Ingress:
    """Routes requests to the (model, pool) deployments."""

    def __init__(
        self, shape: ServingShape, handles: dict[str, dict[str, DeploymentHandle]]
    ) -> None:
        """``shape``: the serving config without its variants; they come with
        ``reconfigure`` (Serve calls it before the first request, and at each rollout
        step, without restarting this replica)."""
        self._shape = ServingShape.model_validate(shape)
        self._id: str = serve.get_replica_context().replica_id.unique_id
        self._token = read_token(self._shape)
        self._metrics = IngressMetrics.create()
        build = {"version": build_version()}
        self._metrics.build_info.set(1, tags=build)
        refresh_forever(lambda: self._metrics.build_info.set(1, tags=build), "build-info")
        self._handles = {
            name: {pool: direct(handle) for pool, handle in pools.items()}
            for name, pools in handles.items()
        }
        self._config: ServingConfig | None = None
        self._routers: dict[str, ModelRouter] = {}
        self._manifests: dict[str, dict[str, Manifest]] = {}
        self._tasks: dict[str, dict[str, Task]] = {}
        self._bytes_in_flight = 0  # request bodies held by this replica's handlers
        self._watcher: asyncio.Task[None] | None = None

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
            if self._config is None:
                raise
            logger.error("new variants NOT applied, the previous ones serve: %s", exc.detail)
            return
        for name, model in config.models.items():
            if name in self._routers:
                added = set(model.variants) - set(self._routers[name].config.variants)
                if added:
                    await self._wait_loaded(name, model.routing.pools, added)
                self._routers[name].update(model)
            else:
                transport = RayTransport(name, self._handles[name])
                events = MetricEvents(self._metrics, name)
                self._routers[name] = ModelRouter(name, model, config.pools, transport, events)
            # a request that chose a variant now gone still finds its manifest
            self._manifests[name] = self._manifests.get(name, {}) | manifests[name]
            tasks = {v: task_of(m.input) for v, m in manifests[name].items()}
            self._tasks[name] = self._tasks.get(name, {}) | tasks
        self._config = config

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
        if self._config is None:
            raise ConfigError(
                "the ingress was given no variants; they come as its user_config "
                "(serveConfigV2 'deployments', as the chart renders them, or "
                "serving.server.application_config)"
            )

    # -- plumbing -------------------------------------------------------------------

    def _ensure_watcher(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._watch_pools())

    async def _refresh_from_status(self) -> None:
        """Replica counts per pool from Serve's controller (advisory: skipped if unavailable)."""
        try:
            deployments = await asyncio.to_thread(deployment_states, APP_NAME)
        except (KeyError, RayServeException, RayError) as exc:
            logger.debug("serve status unavailable: %s", exc)
            return
        for router in self._routers.values():
            for pool in router.order:
                state = deployments.get(replica_deployment_name(router.name, pool))
                if state is not None:
                    router.set_running_replicas(pool, state.running, updating=state.updating)

    def _report_load(self) -> None:
        """Each pool's load as this ingress sees it (a gauge: sampled, not per request)."""
        for router in self._routers.values():
            for view in router.views():
                tags = {"model": router.name, "pool": view.name}
                self._metrics.inflight.set(view.held, tags=tags)

    async def _probe(self) -> None:
        """Probe failed pools, and stalled or lost replicas, until they answer."""
        probes = []
        for router in self._routers.values():
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
                await self._refresh_from_status()
                self._report_load()
            for router in self._routers.values():
                router.check_stalls()
            if now - probed >= min(
                m.routing.health_check_seconds for m in self._shape.models.values()
            ):
                probed = now
                await self._probe()
            await asyncio.sleep(tick)

    def _authorize(self, request: Request) -> None:
        if self._token is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), self._token.encode()
        ):
            raise Unauthorized(
                "missing or wrong bearer token: send 'Authorization: Bearer <token>'",
                headers={"www-authenticate": "Bearer"},
            )

    def _router(self, model: str) -> ModelRouter:
        if model not in self._routers:
            raise UnknownModel(f"model {model!r} is not served; models: {sorted(self._routers)}")
        return self._routers[model]

    async def _body(self, request: Request, router: ModelRouter, tally: Tally) -> bytes:
        """The body, within the model's size limit and the ingress's bytes in flight: a
        flood of large bodies is a 503, not an ingress killed for its memory."""
        limit = router.config.limits.max_body_bytes
        declared = request.headers.get("content-length")
        known = declared is not None and declared.isascii() and declared.isdigit()
        if known and int(str(declared)) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
        self._hold_bytes(tally, int(str(declared)) if known else 0, router)
        chunks, size = [], 0
        async for chunk in request.stream():  # chunked uploads carry no content-length
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
            if size > tally.body_bytes:
                self._hold_bytes(tally, size, router)
            chunks.append(chunk)
        return b"".join(chunks)

    def _hold_bytes(self, tally: Tally, size: int, router: ModelRouter) -> None:
        extra = size - tally.body_bytes
        bound = self._shape.ingress.max_body_bytes_in_flight
        if extra > 0 and self._bytes_in_flight + extra > bound and self._bytes_in_flight:
            retry = router.config.routing.retry_after_seconds
            raise PoolSaturated(
                f"this ingress holds {self._bytes_in_flight} bytes of request bodies, its "
                f"limit is {bound} (ingress.max_body_bytes_in_flight); retry in {retry} s",
                headers={"retry-after": str(retry)},
            )
        self._bytes_in_flight += extra
        tally.body_bytes = size

    async def _answer(
        self,
        model: str,
        handler: Callable[[Tally, float], Awaitable[Response]],
    ) -> Response:
        """Run an inference handler; count and time its response, whatever ends it (a 500
        from a bug included: the error ratio must see a canary that crashes)."""
        start = time.perf_counter()
        tally = Tally(model if model in self._routers else "unknown")
        try:
            response = await handler(tally, start)
        except ServingError as exc:
            self._count(tally, exc.status_code, exc.reason, start)
            exc.headers.setdefault("server-timing", _ingress_timing(start))
            raise
        except Exception as exc:
            logger.error("%s: unexpected error: %r", model, exc, exc_info=exc)
            self._count(tally, 500, ServingError.reason, start)
            raise ServingError(
                f"internal error ({type(exc).__name__}); the ingress log has the details",
                headers={"server-timing": _ingress_timing(start)},
            ) from exc
        finally:
            self._bytes_in_flight -= tally.body_bytes
            tally.body_bytes = 0
        code, seconds = response.status_code, self._seconds(tally, start)

        async def count() -> None:
            self._record(tally, code, "ok", seconds)

        # Recorded once the response is written: the client does not wait on the metrics.
        response.background = BackgroundTask(count)
        return response

    async def _begin(
        self, model: str, request: Request, tally: Tally, pinned: str | None = None
    ) -> tuple[ModelRouter, bytes]:
        """What every inference request does first: its token, model and variant; then a
        503 before the body is read when every pool is full (an overloaded server answers
        fast and spends nothing on a request it will not serve); then the body."""
        self._authorize(request)
        router = self._router(model)
        tally.variant = self._variant(router, request, pinned)
        router.refuse_if_full()
        return router, await self._body(request, router, tally)

    async def _dispatch(
        self, router: ModelRouter, tally: Tally, inputs: dict[str, Any], start: float
    ) -> Routed:
        """Route with the model's deadline (``start``: when the handler began; body read
        and decoding count as latency too)."""
        self._ensure_watcher()
        budget = router.config.limits.deadline_seconds
        remaining = budget - (time.perf_counter() - start)
        try:
            async with asyncio.timeout(remaining):  # no extra task, unlike wait_for
                routed = await router.infer(tally.variant, inputs, time.time() + remaining)
        except (TimeoutError, DeadlineExceeded) as exc:
            self._metrics.rejected.inc(tags={"model": router.name, "reason": "deadline"})
            raise DeadlineExceeded(
                f"model {router.name!r}: no result within the {budget:g} s deadline"
            ) from (None if isinstance(exc, TimeoutError) else exc)
        tally.pool = routed.pool
        return routed

    def _count(self, tally: Tally, code: int, reason: str, start: float) -> None:
        self._record(tally, code, reason, self._seconds(tally, start))

    def _seconds(self, tally: Tally, start: float) -> float:
        seconds = time.perf_counter() - start
        if tally.model in self._routers:  # a 504's time is its deadline, not a little more
            seconds = min(seconds, self._routers[tally.model].config.limits.deadline_seconds)
        return seconds

    def _record(self, tally: Tally, code: int, reason: str, seconds: float) -> None:
        tags = {"model": tally.model, "variant": tally.variant, "pool": tally.pool}
        tags["code"] = str(code)
        self._metrics.request_duration.observe(seconds, tags=tags)
        self._metrics.requests.inc(tags=tags | {"reason": reason})

    def _variant(self, router: ModelRouter, request: Request, pinned: str | None = None) -> str:
        return router.splitter.choose(pinned or request.headers.get(PIN_HEADER))

    def _signature(self, model: str, variant: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """A variant's inputs and outputs, from its manifest: metadata needs no pool up."""
        return self._tasks[model][variant].signature()

    # -- health and metadata ---------------------------------------------------------

    @api.get("/v2/health/live", tags=["health"])
    async def live(self) -> dict[str, bool]:
        return {"live": True}

    @api.get(
        "/v2/health/ready",
        tags=["health"],
        responses={503: {"description": "not ready: some model has no pool that can serve"}},
    )
    async def ready(self) -> Response:
        self._ensure_watcher()
        ready = all(any(s.healthy for s in r.stats.values()) for r in self._routers.values())
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @api.get("/v2", tags=["v2"])
    async def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "sluiceway",
            "version": build_version(),
            "extensions": ["binary_tensor_data"],
        }

    @api.get(
        "/v2/models/{model}",
        tags=["v2"],
        response_model=V2ModelMetadata,
        responses=errors(401, 404),
    )
    async def metadata(self, model: str, request: Request) -> dict[str, Any]:
        self._authorize(request)
        router = self._router(model)
        variant = self._variant(router, request)
        inputs, outputs = self._signature(model, variant)
        return model_metadata(model, sorted(router.config.variants), inputs, outputs)

    @api.get(
        "/v2/models/{model}/ready",
        tags=["v2"],
        responses=errors(401, 404) | {503: {"description": "no pool of the model can serve"}},
    )
    async def model_ready(self, model: str, request: Request) -> Response:
        self._authorize(request)
        router = self._router(model)
        self._ensure_watcher()
        ready = any(s.healthy for s in router.stats.values())
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    @api.get("/v1/models", tags=["v1"], responses=errors(401))
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        self._ensure_watcher()  # an ingress asked only this still learns its pools' replicas
        return {
            "models": [
                {
                    "name": name,
                    "variants": {n: v.weight for n, v in router.config.variants.items()},
                    "labels": getattr(
                        next(iter(self._manifests[name].values())).input, "labels", []
                    ),
                    "pools": [
                        {
                            "name": v.name,
                            "healthy": v.healthy,
                            "inflight": v.held,
                            "capacity": v.capacity,
                            "replicas": {
                                state.value: sum(
                                    1
                                    for r in router.stats[v.name].replicas.values()
                                    if r.state is state
                                )
                                for state in ReplicaState
                            },
                        }
                        for v in router.views()
                    ],
                    "spilling": router.policy.spilling,
                }
                for name, router in self._routers.items()
            ]
        }

    # -- inference ---------------------------------------------------------------------

    async def _infer_v2(self, model: str, request: Request, pinned: str | None) -> Response:
        async def handle(tally: Tally, start: float) -> Response:
            router, body = await self._begin(model, request, tally, pinned)
            raw_length = request.headers.get(HEADER_LENGTH)
            if raw_length is not None and not (raw_length.isascii() and raw_length.isdigit()):
                raise BadRequest(f"{HEADER_LENGTH} must be an integer, got {raw_length!r}")
            length = int(raw_length) if raw_length is not None else None
            parse = functools.partial(parse_infer_request, body, length)
            # JSON tensors of a large body take milliseconds: off the event loop
            parsed = parse() if len(body) <= INLINE_DECODE_BYTES else await asyncio.to_thread(parse)
            routed = await self._dispatch(router, tally, parsed.inputs, start)
            content, headers = encode_infer_response(
                model_name=model,
                model_version=routed.variant,
                request=parsed,
                outputs=routed.outputs,
            )
            return Response(content, headers=headers | _route_headers(routed, start, self._id))

        return await self._answer(model, handle)

    @api.post(
        INFER_PATH,
        tags=["v2"],
        response_model=V2InferResponse,
        responses=errors(*INFER_CODES),
        openapi_extra=v2_infer_docs(),
    )
    async def infer(self, model: str, request: Request) -> Response:
        return await self._infer_v2(model, request, None)

    @api.post(
        INFER_VERSION_PATH,
        tags=["v2"],
        response_model=V2InferResponse,
        responses=errors(*INFER_CODES),
        openapi_extra=v2_infer_docs(),
    )
    async def infer_version(self, model: str, version: str, request: Request) -> Response:
        """A version is a variant: this pins it."""
        return await self._infer_v2(model, request, version)

    @api.post(
        CLASSIFY_PATH,
        tags=["v1"],
        response_model=ClassifyResponse,
        responses=errors(*INFER_CODES),
        openapi_extra=classify_docs(),
    )
    async def classify(self, model: str, request: Request) -> Response:
        """A WAV/FLAC upload (or raw PCM: audio/l16;rate=N) -> labels and scores; for a
        text classifier, ``{"text": ...}`` -> a label and scores per text."""
        return await self._v1(model, "classify", request)

    @api.post(
        EMBED_PATH,
        tags=["v1"],
        response_model=EmbedResponse,
        responses=errors(*INFER_CODES),
        openapi_extra=embed_docs(),
    )
    async def embed(self, model: str, request: Request) -> Response:
        """``{"text": "..."}`` or ``{"text": ["...", ...]}`` -> one vector per text."""
        return await self._v1(model, "embed", request)

    async def _v1(self, model: str, verb: Verb, request: Request) -> Response:
        """A v1 verb: the variant's task decodes the body and shapes the answer."""

        async def handle(tally: Tally, start: float) -> Response:
            router, body = await self._begin(model, request, tally)
            task = self._tasks[model][tally.variant]
            if task.verb != verb:
                raise BadRequest(task.refusal(model, verb))
            content_type = request.headers.get("content-type", "audio/wav")
            decoded = await task.decode(body, content_type, router.config.limits)
            routed = await self._dispatch(router, tally, decoded.inputs, start)
            answer = {"model": model, "variant": routed.variant, "pool": routed.pool}
            return JSONResponse(
                answer | task.answer(routed.outputs, decoded),
                headers=_route_headers(routed, start, self._id),
            )

        return await self._answer(model, handle)
