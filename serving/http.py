"""The ingress's HTTP front: FastAPI with the inference routes answered before its own
routing, the OpenAPI spec, and the one table of error handlers (``ServingError``
subclasses carry their status; FastAPI's own 404/405/422 keep the ``{"error": ...}``
contract).

No ``from __future__ import annotations``: FastAPI reads the handlers' signatures.
"""

import logging
import re
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from serving.errors import ServingError
from serving.openapi import ServedModel, served_spec
from serving.openapi import components as openapi_components
from serving.protocols import v1, v2

logger = logging.getLogger(__name__)

# The inference routes, as each protocol declares them: answered before FastAPI's routing.
FAST_ROUTES = v1.INFERENCE_ROUTES | v2.INFERENCE_ROUTES


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

    The routes are declared on the ingress's methods (they are the OpenAPI spec), each
    protocol's inference paths and their methods in its module; a POST to one of those
    paths calls the same method directly, and its errors go through the same handlers.
    """

    fast: ClassVar[tuple[tuple[re.Pattern[str], str], ...]] = tuple(
        (_path_regex(path), name) for path, name in FAST_ROUTES.items()
    )

    def inference_route(self, method: str, path: str) -> tuple[str, dict[str, str]] | None:
        """The inference method a request goes to, and its path parameters; None for the
        rest (FastAPI routes those)."""
        if method != "POST":
            return None
        for regex, name in self.fast:
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
    """FastAPI's spec plus the schemas the raw-body routes document by reference; with the
    models served now (``describe_served``), their own inference routes and bodies."""
    if api.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi

        spec = get_openapi(
            title=api.title, version=api.version, description=api.description, routes=api.routes
        )
        spec.setdefault("components", {}).setdefault("schemas", {}).update(openapi_components())
        api.openapi_schema = spec
    served: Callable[[], Mapping[str, ServedModel]] | None = getattr(
        api.state, "served_models", None
    )
    return api.openapi_schema if served is None else served_spec(api.openapi_schema, served())


def describe_served(models: Callable[[], Mapping[str, ServedModel]]) -> None:
    """Let the spec describe the models this ingress serves (asked at each request for it:
    a rollout step may add one)."""
    api.state.served_models = models


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
