"""The HTTP front door (one port): v2 inference protocol, audio classify, model listing.

Every response names the ingress replica, variant, pool and artifact that served it
(``x-sluiceway-ingress``, ``x-sluiceway-variant``, ``x-sluiceway-pool``,
``x-sluiceway-artifact``, and ``x-sluiceway-route``: primary, latency, saturated, failover,
sample) and where its time went (``Server-Timing``).
Errors go through one handler table: ``ServingError`` subclasses carry their status.

The HTTP front (routing, the spec, error handlers) is ``serving.http``; what the ingress
serves and knows of its pools, ``serving.control``; this module is the request path.

No ``from __future__ import annotations`` here: FastAPI must resolve the route signatures
at run time, and Serve's class-based ingress hides this module's globals from it.
"""

import asyncio
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.background import BackgroundTask

from serving.auth import read_token
from serving.build import build_version
from serving.config import (
    INGRESS_NAME,
    ServingShape,
)
from serving.control import ControlPlane
from serving.errors import (
    BadRequest,
    DeadlineExceeded,
    PayloadTooLarge,
    PoolSaturated,
    ServingError,
    Unauthorized,
)
from serving.http import api, describe_served
from serving.metrics import IngressMetrics, refresh_forever
from serving.openapi import (
    INFER_CODES,
    ClassifyResponse,
    EmbedResponse,
    ServedModel,
    V2InferResponse,
    V2ModelMetadata,
    classify_docs,
    embed_docs,
    errors,
    v2_infer_docs,
)
from serving.protocols.v1 import CLASSIFY_PATH, EMBED_PATH, MODELS_PATH
from serving.protocols.v2 import (
    HEADER_LENGTH,
    INFER_PATH,
    INFER_VERSION_PATH,
    TensorSpec,
    encode_infer_response,
    model_metadata,
    parse_infer_request,
)
from serving.routing.pool_stats import ReplicaState
from serving.routing.router import ModelRouter, Routed
from serving.routing.variants import PIN_HEADER
from serving.tasks import INLINE_DECODE_BYTES, Verb

logger = logging.getLogger(__name__)


# the requests a refusal ended, as requests_rejected_total labels them: a shed 503
# (whichever limit refused it: pools full, the ingress's body bytes) and a 504
REJECTED_AS = {PoolSaturated.reason: "saturated", DeadlineExceeded.reason: "deadline"}


@dataclass
class Tally:
    """One inference request's labels, filled in as they become known."""

    model: str
    variant: str = "none"
    pool: str = "none"
    body_bytes: int = 0  # counted against the ingress's bytes in flight until it ends


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
        self._control = ControlPlane(self._shape, handles, self._metrics)
        self._bytes_in_flight = 0  # request bodies held by this replica's handlers
        describe_served(self._served_models)

    def _served_models(self) -> dict[str, ServedModel]:
        """Each model as the OpenAPI spec describes it (its first variant's task speaks
        for it: a model's variants share their inputs)."""
        served = {}
        for name, router in self._control.routers.items():
            task = next(iter(self._control.tasks[name].values()))
            served[name] = ServedModel(
                verb=task.verb,
                content_types=task.content_types,
                inputs=task.signature()[0],
                versions=list(router.config.variants),
            )
        return served

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """A rollout step's variants (Serve calls it before the first request too)."""
        await self._control.reconfigure(user_config)

    def check_health(self) -> None:
        """Serve's health check: an ingress that was given no variants serves nothing."""
        self._control.check_health()

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
        tally = Tally(model if model in self._control.routers else "unknown")
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
        router = self._control.router(model)
        tally.variant = self._variant(router, request, pinned)
        await self._control.first_status()
        self._control.refuse_if_unplaced(model)
        router.refuse_if_full()
        return router, await self._body(request, router, tally)

    async def _dispatch(
        self, router: ModelRouter, tally: Tally, inputs: dict[str, Any], start: float
    ) -> Routed:
        """Route with the model's deadline (``start``: when the handler began; body read
        and decoding count as latency too)."""
        self._control.ensure_watcher()
        budget = router.config.limits.deadline_seconds
        remaining = budget - (time.perf_counter() - start)
        try:
            async with asyncio.timeout(remaining):  # no extra task, unlike wait_for
                routed = await router.infer(tally.variant, inputs, time.time() + remaining)
        except (TimeoutError, DeadlineExceeded) as exc:
            raise DeadlineExceeded(
                f"model {router.name!r}: no result within the {budget:g} s deadline"
            ) from (None if isinstance(exc, TimeoutError) else exc)
        tally.pool = routed.pool
        return routed

    def _count(self, tally: Tally, code: int, reason: str, start: float) -> None:
        self._record(tally, code, reason, self._seconds(tally, start))

    def _seconds(self, tally: Tally, start: float) -> float:
        seconds = time.perf_counter() - start
        if tally.model in self._control.routers:  # a 504's time is its deadline, not a little more
            seconds = min(
                seconds, self._control.routers[tally.model].config.limits.deadline_seconds
            )
        return seconds

    def _record(self, tally: Tally, code: int, reason: str, seconds: float) -> None:
        tags = {"model": tally.model, "variant": tally.variant, "pool": tally.pool}
        tags["code"] = str(code)
        self._metrics.request_duration.observe(seconds, tags=tags)
        self._metrics.requests.inc(tags=tags | {"reason": reason})
        if reason in REJECTED_AS:  # here alone: every shed counts, whichever limit shed it
            self._metrics.rejected.inc(tags={"model": tally.model, "reason": REJECTED_AS[reason]})

    def _variant(self, router: ModelRouter, request: Request, pinned: str | None = None) -> str:
        return router.splitter.choose(pinned or request.headers.get(PIN_HEADER))

    def _signature(self, model: str, variant: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
        """A variant's inputs and outputs, from its manifest: metadata needs no pool up."""
        return self._control.tasks[model][variant].signature()

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
        """Ready once every model has a replica running (Serve's word, asked now if the
        watcher has not yet); else a 503 naming the models that wait, and what Serve says
        of each of their pools (resources their replicas need, for one)."""
        await self._control.first_status()
        waiting = self._control.waiting()
        ready = not waiting and all(
            any(s.healthy for s in r.stats.values()) for r in self._control.routers.values()
        )
        body: dict[str, Any] = {"ready": ready} | ({"waiting": waiting} if waiting else {})
        return JSONResponse(body, status_code=200 if ready else 503)

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
        router = self._control.router(model)
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
        router = self._control.router(model)
        self._control.ensure_watcher()
        ready = any(s.healthy for s in router.stats.values())
        return JSONResponse({"name": model, "ready": ready}, status_code=200 if ready else 503)

    @api.get(MODELS_PATH, tags=["v1"], responses=errors(401))
    async def list_models(self, request: Request) -> dict[str, Any]:
        self._authorize(request)
        # an ingress asked only this still learns its pools' replicas
        self._control.ensure_watcher()
        return {
            "models": [
                {
                    "name": name,
                    "variants": {n: v.weight for n, v in router.config.variants.items()},
                    "verb": task.verb,
                    "labels": task.labels,
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
                for name, router in self._control.routers.items()
                # the first variant's task speaks for the model: its variants share inputs
                for task in [next(iter(self._control.tasks[name].values()))]
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
            task = self._control.tasks[model][tally.variant]
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
