"""Routing under real load on Ray Serve: spillover, failover, shedding (bounded, localhost)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest

from optimize.audio import synthetic_set
from tests.serving.conftest import TOKEN, deploy, serving_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]
AUTH = {"authorization": f"Bearer {TOKEN}"}
CLIP = synthetic_set(1, seconds=1.0, sample_rate=16_000, seed=8).clips[0]
PCM = (np.clip(CLIP, -1, 1) * 32767).astype("<i2").tobytes()


async def fire(
    base: str, count: int, concurrency: int, model: str = "tiny"
) -> list[httpx.Response]:
    """``count`` classify requests, ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=60) as client:

        async def one() -> httpx.Response:
            async with limit:
                return await client.post(
                    f"{base}/v1/models/{model}:classify",
                    content=PCM,
                    headers=AUTH | {"content-type": "audio/l16;rate=16000"},
                )

        return await asyncio.gather(*(one() for _ in range(count)))


def wait_ready(base: str, deadline_s: float = 120, model: str = "tiny") -> None:
    """Poll until the (re)deployed app serves ``model`` and every pool reports healthy."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            listing = httpx.get(f"{base}/v1/models", headers=AUTH, timeout=5)
            served = listing.json()["models"] if listing.status_code == 200 else []
            if [m["name"] for m in served] == [model] and all(
                p["healthy"] for p in served[0]["pools"]
            ):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError("the pools did not all become healthy")


def eventually_served_by(base: str, pool: str, deadline_s: float) -> bool:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        response = asyncio.run(fire(base, count=1, concurrency=1))[0]
        assert response.status_code == 200, response.text
        if response.headers["x-sluiceway-pool"] == pool:
            return True
        time.sleep(0.5)
    return False


def test_spills_to_the_slower_pool_under_load(
    ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path
) -> None:
    deploy(
        serving_config(
            tiny_artifacts,
            token_file,
            ports=ray_serve,
            fast={"max_ongoing_requests": 1, "max_queued_requests": 1},
            slow={"max_ongoing_requests": 4, "max_queued_requests": 8},
        )
    )
    base = f"http://127.0.0.1:{ray_serve['http']}"
    wait_ready(base)
    responses = asyncio.run(fire(base, count=60, concurrency=8))
    assert [r.status_code for r in responses] == [200] * 60
    routes = Counter(
        (r.headers["x-sluiceway-pool"], r.headers["x-sluiceway-route"]) for r in responses
    )
    assert routes[("fast", "primary")] > 0
    assert sum(n for (pool, _), n in routes.items() if pool == "slow") > 0
    assert {route for pool, route in routes if pool == "slow"} <= {"saturated", "latency"}
    # with the load gone, traffic returns to the preferred pool (hysteresis: after
    # min_spill_seconds, once the fast pool's expected latency is back under the SLO)
    assert eventually_served_by(base, "fast", deadline_s=30)


def test_fails_over_when_every_fast_replica_is_killed_mid_load(
    ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path, tmp_path: Path
) -> None:
    """The fast pool is lost the way a GPU node is: its replicas die and replacements
    cannot come up (here: its artifact no longer matches its hash) until it is repaired."""
    import ray

    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, artifacts)
    model_file = artifacts / "int8" / "model.onnx"
    deploy(
        serving_config(
            artifacts,
            token_file,
            ports=ray_serve,
            fast={"max_ongoing_requests": 2, "max_queued_requests": 4},
            slow={"max_ongoing_requests": 2, "max_queued_requests": 16},
        )
    )
    base = f"http://127.0.0.1:{ray_serve['http']}"
    wait_ready(base)
    original = model_file.read_bytes()

    async def scenario() -> list[httpx.Response]:
        """Load runs until the kill has shown (failovers served), however fast it goes."""
        responses: list[httpx.Response] = []
        killed = asyncio.Event()
        stop = asyncio.Event()

        async def client() -> None:
            while not stop.is_set():
                batch = await fire(base, count=1, concurrency=1)
                responses.extend(batch)
                if killed.is_set() and batch[0].headers.get("x-sluiceway-route") == "failover":
                    stop.set()

        load = asyncio.gather(*(client() for _ in range(4)))
        await asyncio.sleep(1.0)
        victims = [
            a for a in ray.util.list_named_actors(all_namespaces=True) if "#tiny-fast#" in a["name"]
        ]
        assert victims, "no replica of the fast pool found"
        model_file.write_bytes(original[:-16] + bytes(16))  # replacements will refuse it
        for actor in victims:  # replicas this test's cluster started: every one of the pool
            ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]))
        killed.set()
        try:
            await asyncio.wait_for(stop.wait(), timeout=30)
        finally:
            stop.set()
            await load
        return responses

    try:
        during = asyncio.run(scenario())
        # metadata (tritonclient's first call) comes from the manifest: no pool needed
        meta = httpx.get(f"{base}/v2/models/tiny", headers=AUTH, timeout=10)
        assert meta.status_code == 200, meta.text
        assert meta.json()["inputs"][0]["name"] == "input_values"
    finally:
        model_file.write_bytes(original)  # the node comes back
    codes = Counter(r.status_code for r in during)
    assert codes == {200: len(during)}, codes
    assert any(r.headers["x-sluiceway-route"] == "failover" for r in during)
    # Serve keeps replacing the replica; once one starts, the router's probe sees it
    assert eventually_served_by(base, "fast", deadline_s=120), "fast pool never came back"


def test_sheds_with_503_and_retry_after_when_every_pool_is_full(
    ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path
) -> None:
    deploy(
        serving_config(
            tiny_artifacts,
            token_file,
            ports=ray_serve,
            fast={"max_ongoing_requests": 1, "max_queued_requests": 0},
            slow={"max_ongoing_requests": 1, "max_queued_requests": 0},
            routing={"retry_after_seconds": 2},
        )
    )
    base = f"http://127.0.0.1:{ray_serve['http']}"
    wait_ready(base)
    start = time.monotonic()
    responses = asyncio.run(fire(base, count=40, concurrency=12))
    assert time.monotonic() - start < 60
    codes = Counter(r.status_code for r in responses)
    assert set(codes) == {200, 503}, codes
    shed = [r for r in responses if r.status_code == 503]
    assert all(r.headers["retry-after"] == "2" for r in shed)
    # how long the ingress held each shed request, for whoever chases a slow 503
    assert all(r.headers["server-timing"].startswith("ingress;dur=") for r in shed)
    assert "every pool is at capacity" in shed[0].json()["error"]


def test_a_redeploy_that_replaces_the_only_replica_fails_no_request(
    ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path
) -> None:
    """One pool, one replica: while Serve swaps it for a new one there is a moment with no
    running replica; requests wait for the new one (within the deadline) instead of 503."""
    one_pool = {"pools": ["fast"]}
    fast = {"max_ongoing_requests": 2, "max_queued_requests": 4}  # room for the load below
    before = serving_config(
        tiny_artifacts, token_file, ports=ray_serve, routing=one_pool, fast=fast
    )
    after = serving_config(  # a new pool setting: Serve replaces the replica
        tiny_artifacts, token_file, ports=ray_serve, routing=one_pool, fast=fast | {"nice": 1}
    )
    deploy(before)
    base = f"http://127.0.0.1:{ray_serve['http']}"
    wait_ready(base)

    async def scenario() -> list[httpx.Response]:
        responses: list[httpx.Response] = []
        done = asyncio.Event()

        async def client() -> None:
            while not done.is_set():
                responses.extend(await fire(base, count=2, concurrency=2))

        load = asyncio.gather(client())
        await asyncio.sleep(1.0)
        await asyncio.to_thread(deploy, after)  # returns once the new replica runs
        await asyncio.sleep(2.0)
        done.set()
        await load
        return responses

    responses = asyncio.run(scenario())
    codes = Counter(r.status_code for r in responses)
    errors = {r.text for r in responses if r.status_code != 200}
    assert codes[200] == len(responses) > 20, (codes, errors)
