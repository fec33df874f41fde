"""A rollout step restarts nothing: `serving.server.deploy` applies the config as Serve's
declarative config (the chart's serveConfigV2 path), the variants as the deployments'
user_config, so a new weight or a new artifact reconfigures the running replicas in place.

Real Ray Serve on localhost; steady load runs through both steps and none of it may fail.
"""

from __future__ import annotations

import asyncio
import copy
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from optimize.manifest import artifact_digest, model_digest, read_manifest
from serving.config import parse_config
from serving.control import APP_NAME, deployment_states
from serving.errors import ConfigError
from serving.server import application_config, deploy
from tests.conftest import TOKEN
from tests.serving.conftest import artifact, serving_config
from tests.serving.test_routing_scale import PCM, pcm

pytestmark = [pytest.mark.slow, pytest.mark.integration]
AUTH = {"authorization": f"Bearer {TOKEN}"}


class Load:
    """Two clients posting clips from a thread until stopped; what answered them."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.answers: Counter[tuple[str, str, str]] = Counter()  # variant, pool, artifact
        self.ingresses: set[str] = set()
        self.failed: list[tuple[float, int | str]] = []
        self._stop = threading.Event()
        self._body = pcm(0.5)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:

            async def worker() -> None:
                while not self._stop.is_set():
                    try:
                        r = await client.post(
                            f"{self.base}/v1/models/tiny:classify",
                            content=self._body,
                            headers=AUTH | PCM,
                        )
                    except httpx.TransportError as exc:
                        self.failed.append((time.monotonic(), type(exc).__name__))
                        continue
                    if r.status_code != 200:
                        self.failed.append((time.monotonic(), r.status_code))
                        continue
                    h = r.headers
                    key = (h["x-sluiceway-variant"], h["x-sluiceway-pool"])
                    self.answers[(*key, h["x-sluiceway-artifact"])] += 1
                    self.ingresses.add(h["x-sluiceway-ingress"])

            await asyncio.gather(worker(), worker())

    def wait_for(self, seen: tuple[str, str, str], deadline_s: float = 60) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self.answers[seen]:
                return
            time.sleep(0.2)
        raise AssertionError(f"no answer from {seen} within {deadline_s} s: {self.answers}")

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def running() -> dict[str, tuple[str, ...]]:
    return {name: state.running for name, state in deployment_states(APP_NAME).items()}


def test_weights_and_an_artifact_change_in_place_under_load(
    ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path
) -> None:
    base = f"http://127.0.0.1:{ray_serve['http']}"
    config: dict[str, Any] = serving_config(tiny_artifacts, token_file, ports=ray_serve)
    deploy(parse_config(config))
    before = running()
    assert set(before) == {"ingress", "tiny-fast", "tiny-slow"}

    canary = copy.deepcopy(config)
    canary["models"]["tiny"]["variants"]["stable"]["weight"] = 50
    canary["models"]["tiny"]["variants"]["fp16"]["weight"] = 50
    swapped = copy.deepcopy(canary)  # the fast pool's stable variant: int8 -> fp32
    swapped["models"]["tiny"]["variants"]["stable"]["artifacts"]["fast"] = artifact(
        tiny_artifacts / "fp32"
    )
    corrupt = copy.deepcopy(swapped)  # an artifact whose files do not match its digest
    corrupt["models"]["tiny"]["variants"]["stable"]["artifacts"]["fast"] = {
        "uri": str(tiny_artifacts / "int8"),
        "sha256": "0" * 64,
    }
    with Load(base) as load:
        load.wait_for(("stable", "fast", "int8"))
        deploy(parse_config(canary))
        load.wait_for(("fp16", "fast", "fp16"))
        deploy(parse_config(swapped))
        load.wait_for(("stable", "fast", "fp32"))
        swapped_in = Counter(load.answers)
        deploy(parse_config(corrupt))  # refused by the replica: fp32 keeps serving
        end = time.monotonic() + 30
        while load.answers.total() < swapped_in.total() + 20 and time.monotonic() < end:
            time.sleep(0.2)
    assert load.failed == []
    assert running() == before, "a replica was restarted"
    assert load.ingresses == set(before["ingress"])
    # once the swap is in, the fast pool serves fp32 for stable, never int8 again: neither
    # the old artifact nor the corrupt one that followed it
    late = load.answers - swapped_in
    assert late[("stable", "fast", "int8")] == 0
    assert late[("stable", "fast", "fp32")] > 0
    assert late.total() >= 20


def test_the_application_config_carries_the_variants_outside_args(
    tiny_artifacts: Path, token_file: Path
) -> None:
    """What Serve restarts on (``args``) holds no variant: weights and artifacts are each
    deployment's user_config, which Serve applies in place."""
    ports = {"http": 8000, "metrics": 8080}
    config = parse_config(serving_config(tiny_artifacts, token_file, ports=ports))
    app = application_config(config)
    assert "variants" not in app["args"]["models"]["tiny"]
    user_configs = {d["name"]: d["user_config"] for d in app["deployments"]}
    assert user_configs["ingress"]["variants"] == config.variants()
    fast = user_configs["tiny-fast"]["artifacts"]
    assert fast["stable"]["uri"] == str(tiny_artifacts / "int8")
    assert set(fast) == {"stable", "fp16"}


def test_a_deploy_that_fails_says_what_its_replicas_said(
    ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path
) -> None:
    """A config pinned with an older sluiceway's model-only digest: no replica can load it,
    and the error `sluiceway serve` prints names the digest to pin instead (the replicas'
    own words, which Serve keeps in each deployment's status), not just DEPLOY_FAILED."""
    from ray import serve

    # a first deploy, as `sluiceway serve` makes (a running app would keep its variants
    # through a step it cannot apply: the in-place test above)
    serve.delete(APP_NAME)
    raw = serving_config(tiny_artifacts, token_file, ports=ray_serve)
    int8 = tiny_artifacts / "int8"
    old = {"uri": str(int8), "sha256": model_digest(read_manifest(int8))}
    raw["models"]["tiny"]["variants"] = {
        "stable": {"weight": 100, "artifacts": {"fast": old, "slow": old}}
    }
    with pytest.raises(ConfigError) as failed:
        deploy(parse_config(raw), timeout_s=180)
    lines = str(failed.value).splitlines()
    assert "DEPLOY_FAILED" in lines[0]
    pinned = f"pin the whole artifact with {artifact_digest(int8)}"
    # a failed deployment named, with its replicas' exception and the fix in it (which of
    # the three Serve marks failed first varies: each said the same)
    reasons = [line for line in lines if line.startswith("  ")]
    assert reasons, lines
    for line in reasons:
        name, _, why = line.strip().partition(": ")
        assert set(name.split(", ")) <= {"ingress", "tiny-fast", "tiny-slow"}, line
        assert why.split(": ")[0] in {"ConfigError", "ArtifactFetchError"}, line
        assert pinned in why, line
    assert "Traceback" not in str(failed.value)
