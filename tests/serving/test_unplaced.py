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

AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.mark.slow
@pytest.mark.integration
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


@pytest.mark.parametrize(
    ("wanted", "free", "unplaceable_"),
    [
        ('{"CPU": 0.5, "pool-absent": 1.0}', '{"CPU": 1.5}', True),  # a resource nowhere
        ('{"CPU": 1.0}', '{"CPU": 0.0}', True),  # every CPU taken
        ('{"CPU": 0.5, "pool-fast": 1.0}', '{"CPU": 1.0, "pool-fast": 6.0}', False),
        ("{}", "{}", False),  # slow to start for another reason: nothing missing
    ],
)
def test_only_a_replica_that_lacks_a_resource_counts_as_unplaceable(
    wanted: str, free: str, unplaceable_: bool
) -> None:
    from serving.control import unplaceable

    message = (
        "Deployment 'ghost-absent' in application 'sluiceway' has 1 replicas that have taken "
        "more than 30s to be scheduled. This may be due to waiting for the cluster to "
        "auto-scale or for a runtime environment to be installed. Resources required for "
        f"each replica: {wanted}, total resources available: {free}. Use `ray status` for "
        "more details."
    )
    assert unplaceable(message) is unplaceable_
    assert not unplaceable(
        "Deployment 'x' has 1 replicas that have taken more than 30s to initialize."
    )
