"""The bench's control requests: a control quoted as a path's floor must have been answered
the way that path answers; an error in its place is counted apart, not timed with it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from tools.bench_serve.load import Control, closed_loop


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # http.server calls it by this name
        code = 200 if self.path == "/ok" else 500
        self.send_response(code)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture()
def base() -> Iterator[str]:
    """A real HTTP server on localhost: 200 on /ok, 500 elsewhere."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


def test_a_control_answered_otherwise_is_counted_not_timed(base: str) -> None:
    def get(path: str) -> Control:
        async def send(client: httpx.AsyncClient) -> httpx.Response:
            return await client.get(f"{base}{path}")

        return Control(send, 200)

    outcomes = asyncio.run(
        closed_loop(
            get("/ok").send,
            clients=1,
            seconds=0.5,
            warmup_s=0.1,
            honour_retry_after=False,
            probes={"answers": get("/ok"), "fails": get("/broken")},
            probe_every_s=0.02,
        )
    )
    assert outcomes.answered, "the load itself was answered"
    assert len(outcomes.probes["answers"]) >= 5
    assert outcomes.probe_misses["answers"] == 0
    assert outcomes.probes["fails"] == []
    assert outcomes.probe_misses["fails"] >= 5
