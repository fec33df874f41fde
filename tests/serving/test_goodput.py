"""Goodput under a flood, on real Ray Serve on localhost: refusing is cheap and does not
starve serving.

One replica runs one request at a time (the bigger model, ~50 ms per request) and holds
two more. A steady client measures what the pool answers; then a flood of closed-loop
clients that ignore Retry-After joins it. The flood runs in its own process at the lowest
CPU priority, so that what is measured is what the server spends refusing, not what the
load generator spends asking (in production the clients are elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serving.conftest import deploy
from tests.serving.test_routing_load import wait_ready
from tests.serving.test_routing_scale import (
    AUTH,
    PCM,
    classify,
    pcm,
    replica_pids,
    slow_model_config,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]
SECONDS = 6.0

FLOOD = """
import asyncio, json, sys, time
import httpx
base, clients, seconds, body = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
payload = open(body, "rb").read()
headers = json.loads(sys.argv[5])
codes = {}
async def main():
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=clients)) as c:
        end = time.monotonic() + seconds
        async def loop():
            while time.monotonic() < end:
                r = await c.post(
                    base + "/v1/models/tiny:classify", content=payload, headers=headers
                )
                codes[r.status_code] = codes.get(r.status_code, 0) + 1
        await asyncio.gather(*(loop() for _ in range(clients)))
asyncio.run(main())
print(json.dumps(codes))
"""


async def steady(base: str, body: bytes, seconds: float) -> int:
    """Answers one closed-loop client got in ``seconds``."""
    answered = 0
    async with httpx.AsyncClient(timeout=60) as client:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if (await classify(client, base, body)).status_code == 200:
                answered += 1
    return answered


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    return sum(sum(psutil.Process(p).cpu_times()[:2]) for p in pids)


def test_a_flood_that_ignores_retry_after_is_refused_cheaply_and_serving_holds(
    ray_serve: dict[str, int],
    tiny_artifacts: Path,
    slow_artifact: Path,
    token_file: Path,
    tmp_path: Path,
) -> None:
    config = slow_model_config(
        ray_serve,
        tiny_artifacts,
        slow_artifact,
        token_file,
        routing={"pools": ["fast"]},
        fast={"max_ongoing_requests": 1, "max_queued_requests": 2},
    )
    deploy(config)
    base = f"http://127.0.0.1:{ray_serve['http']}"
    wait_ready(base)
    body = pcm(1.0)
    (tmp_path / "body").write_bytes(body)
    ingress, replica = replica_pids("ingress"), replica_pids("tiny-fast")
    asyncio.run(steady(base, body, 1.0))  # warm

    alone = asyncio.run(steady(base, body, SECONDS))
    before = {
        "ingress": cpu_seconds(list(ingress.values())),
        "replica": cpu_seconds(list(replica.values())),
    }
    flood = subprocess.Popen(
        [
            sys.executable,
            "-c",
            FLOOD,
            base,
            "24",
            str(SECONDS + 1),
            str(tmp_path / "body"),
            json.dumps(AUTH | PCM),
        ],
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: os.nice(19),
    )
    time.sleep(0.5)  # the flood is on before the steady client measures again
    during = asyncio.run(steady(base, body, SECONDS))
    codes = {int(k): v for k, v in json.loads(flood.communicate(timeout=120)[0]).items()}
    spent = {
        "ingress": cpu_seconds(list(ingress.values())) - before["ingress"],
        "replica": cpu_seconds(list(replica.values())) - before["replica"],
    }

    served = during + codes.get(200, 0)
    refused = codes.get(503, 0)
    assert set(codes) <= {200, 503}, codes
    assert refused >= 5 * served, (codes, during)  # a flood, and most of it was refused
    # serving holds: the pool answered at least 80 % of what it answered one client alone
    assert served >= 0.8 * alone, (served, alone, codes)
    # a refusal costs the ingress a small fraction of what a served request costs the replica
    per_refusal = spent["ingress"] / (refused + served)
    per_served = spent["replica"] / served
    assert per_refusal <= 0.1 * per_served, (per_refusal, per_served)
    print(
        f"alone {alone} answered; flood: {served} answered, {refused} refused; ingress "
        f"{per_refusal * 1e3:.2f} ms CPU per request, replica {per_served * 1e3:.1f} ms "
        "per answer"
    )
