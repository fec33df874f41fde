"""Readiness that tells the truth: a model whose replicas Serve cannot place (a pool whose
resource no node has, as four one-CPU models on a two-CPU machine) is named at deploy
time, keeps the server not ready, and answers a quick 503 that says what its replicas
need, while the other models serve. Real Ray Serve on localhost."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import httpx
import pytest

from serving.config import parse_config
from serving.control import APP_NAME
from serving.server import deploy
from tests.conftest import TOKEN
from tests.serving.conftest import artifact, serving_config
from tests.serving.test_routing_scale import PCM, pcm, poll

pytestmark = [pytest.mark.slow, pytest.mark.integration]
AUTH = {"authorization": f"Bearer {TOKEN}"}


def test_a_model_whose_replicas_cannot_be_placed_is_named_and_refused_at_once(
    ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path
) -> None:
    from ray import serve

    raw = serving_config(tiny_artifacts, token_file, ports=ray_serve)
    ghost = copy.deepcopy(raw["models"]["tiny"])
    ghost["routing"]["pools"] = ["absent"]
    ghost["variants"] = {
        "stable": {"weight": 100, "artifacts": {"absent": artifact(tiny_artifacts / "int8")}}
    }
    raw["models"]["ghost"] = ghost
    # one replica wants a resource no node of this cluster offers
    raw["pools"]["absent"] = raw["pools"]["fast"] | {"resources": {"pool-absent": 1}}
    try:
        started = time.monotonic()
        unplaced = deploy(parse_config(raw), timeout_s=180)
        # named once Serve says why (after its slow-start warning), not after the timeout
        assert time.monotonic() - started < 120
        assert set(unplaced) == {"ghost-absent"}, unplaced
        assert '"pool-absent": 1.0' in unplaced["ghost-absent"]

        base = f"http://127.0.0.1:{ray_serve['http']}"
        ready = httpx.get(f"{base}/v2/health/ready", timeout=30)
        assert ready.status_code == 503
        waiting = ready.json()["waiting"]
        assert set(waiting) == {"ghost"} and "pool-absent" in json.dumps(waiting)

        def ghost_answer() -> httpx.Response | None:
            r = httpx.post(
                f"{base}/v1/models/ghost:classify", content=pcm(0.5), headers=AUTH | PCM, timeout=30
            )
            return r if r.status_code == 503 else None

        # the ingress learns it from Serve within a poll; from then on at once, not a 504
        # after the 20 s deadline
        refused = poll(ghost_answer, deadline_s=30)
        assert refused is not None
        error = refused.json()["error"]
        assert "model 'ghost' has no replica running" in error
        assert '"pool-absent": 1.0' in error and "total resources available" in error
        assert float(refused.headers["server-timing"].split("dur=")[1]) < 1000
        ok = httpx.post(
            f"{base}/v1/models/tiny:classify", content=pcm(0.5), headers=AUTH | PCM, timeout=30
        )
        assert ok.status_code == 200, ok.text
    finally:
        serve.delete(APP_NAME)  # its replica would wait for the resource forever
