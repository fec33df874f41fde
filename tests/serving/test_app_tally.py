"""Every inference response is counted and timed with its code and reason, whatever ends it
(a bug's exception included), and keeps the JSON error contract. The ingress's bookkeeping
alone, without Ray: the handler is a plain coroutine."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.responses import JSONResponse

from serving.app import Ingress, Tally
from serving.errors import BadRequest, ServingError
from serving.http import _serving_error


class Recorder:
    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []

    def inc(self, tags: dict[str, str]) -> None:
        self.seen.append(tags)

    def observe(self, seconds: float, tags: dict[str, str]) -> None:
        self.seen.append(tags | {"observed": "yes"})


class Metrics:
    def __init__(self) -> None:
        self.requests = Recorder()
        self.request_duration = Recorder()
        self.rejected = Recorder()


def ingress() -> Any:
    # the class as written, below Serve's ASGI wrapper (whose __del__ needs a running replica)
    wrapper = Ingress.func_or_class
    cls = next(c for c in wrapper.__mro__[1:] if c.__module__ == "serving.app")
    bare = cls.__new__(cls)
    bare._control = SimpleNamespace(routers={})
    bare._metrics = Metrics()
    bare._bytes_in_flight = 0
    return bare


async def ok(tally: Tally, start: float) -> JSONResponse:
    tally.variant, tally.pool = "stable", "gpu"
    return JSONResponse({"label": "a"})


async def refused(tally: Tally, start: float) -> JSONResponse:
    raise BadRequest("the upload is not readable audio")


async def bug(tally: Tally, start: float) -> JSONResponse:
    tally.body_bytes = 1234
    raise KeyError("logits")


async def written(response: Any) -> list[dict[str, Any]]:
    """What the response sends, as the ingress's HTTP server would take it."""
    messages: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        messages.append(message)

    await response({"type": "http"}, None, send)
    return messages


def test_success_error_and_bug_are_each_counted_once_with_code_and_reason() -> None:
    server = ingress()
    response = asyncio.run(server._answer("m", ok))
    assert response.status_code == 200
    assert server._metrics.requests.seen == []  # counted once written, off the client's time
    assert [m["type"] for m in asyncio.run(written(response))] == [
        "http.response.start",
        "http.response.body",
    ]
    with pytest.raises(BadRequest):
        asyncio.run(server._answer("m", refused))
    server._bytes_in_flight = 1234
    with pytest.raises(ServingError) as caught:
        asyncio.run(server._answer("m", bug))
    assert caught.value.status_code == 500
    assert "internal error (KeyError)" in caught.value.detail
    assert server._bytes_in_flight == 0  # what the failed request held is released
    counted = [(t["code"], t["reason"], t["pool"]) for t in server._metrics.requests.seen]
    # the model is not served here: its label is "unknown", never the name a client sent
    assert counted == [
        ("200", "ok", "gpu"),
        ("400", "bad_request", "none"),
        ("500", "internal", "none"),
    ]
    assert {t["model"] for t in server._metrics.requests.seen} == {"unknown"}
    assert len(server._metrics.request_duration.seen) == 3
    response = asyncio.run(_serving_error(None, caught.value))  # type: ignore[arg-type]
    assert response.status_code == 500
    assert json.loads(response.body)["error"].startswith("internal error")


def test_body_bytes_in_flight_are_bounded_per_ingress_and_released() -> None:
    from types import SimpleNamespace

    from serving.errors import PoolSaturated

    server = ingress()
    server._shape = SimpleNamespace(ingress=SimpleNamespace(max_body_bytes_in_flight=10_000))
    router = SimpleNamespace(config=SimpleNamespace(routing=SimpleNamespace(retry_after_seconds=1)))
    first, second, third = Tally("m"), Tally("m"), Tally("m")
    server._hold_bytes(first, 8_000, router)
    with pytest.raises(PoolSaturated, match="holds 8000 bytes of request bodies") as caught:
        server._hold_bytes(second, 4_000, router)
    assert caught.value.headers["retry-after"] == "1" and caught.value.reason == "shed"
    server._hold_bytes(third, 2_000, router)  # what fits still gets in
    assert server._bytes_in_flight == 10_000

    async def holds_then_ends(tally: Tally, start: float) -> JSONResponse:
        server._hold_bytes(tally, 9_000, router)
        return JSONResponse({})

    server._bytes_in_flight = 0
    asyncio.run(server._answer("m", holds_then_ends))
    assert server._bytes_in_flight == 0
    # a body the ingress's bytes refuse is a shed like any other: in requests_total with
    # reason shed and in requests_rejected_total as saturated, what the alert and the
    # dashboard's shed panel read
    server._bytes_in_flight = 8_000
    with pytest.raises(PoolSaturated):
        asyncio.run(server._answer("m", holds_then_ends))
    assert [(t["code"], t["reason"]) for t in server._metrics.requests.seen] == [
        ("503", "shed")  # (the 200 above is counted once written: never, here)
    ]
    assert server._metrics.rejected.seen == [{"model": "unknown", "reason": "saturated"}]
    server._bytes_in_flight = 0
    # one body larger than the bound alone is the model's size limit's business, not this
    server._hold_bytes(Tally("m"), 50_000, router)
