"""The HTTP front door on real Ray Serve: v2 with tritonclient, classify, bad inputs, auth."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from optimize.audio import synthetic_set
from optimize.manifest import MODEL_FILE
from optimize.runtime import open_session, run_logits
from tests.serving.conftest import TOKEN, deploy, serving_config

pytestmark = [pytest.mark.slow, pytest.mark.integration]
AUTH = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path) -> Iterator[str]:
    deploy(serving_config(tiny_artifacts, token_file, ports=ray_serve))
    base = f"http://127.0.0.1:{ray_serve['http']}"
    yield base


@pytest.fixture(scope="module")
def clips() -> np.ndarray:
    return synthetic_set(4, seconds=1.0, sample_rate=16_000, seed=55).clips


def wav_bytes(clip: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, clip, 16_000, format="WAV", subtype="FLOAT")
    return buffer.getvalue()


def test_v2_with_the_real_triton_client(
    server: str, tiny_artifacts: Path, clips: np.ndarray
) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.removeprefix("http://"))
    assert client.is_server_live()
    # tritonclient writes into the headers dict it is given: hand it a fresh one each call
    assert client.is_model_ready("tiny", headers=dict(AUTH))
    meta = client.get_model_metadata("tiny", headers=dict(AUTH))
    assert meta["inputs"] == [{"name": "input_values", "datatype": "FP32", "shape": [-1, -1]}]
    assert meta["outputs"][0]["name"] == "logits"
    expected = run_logits(open_session(tiny_artifacts / "int8" / MODEL_FILE, threads=1), clips[:2])
    for binary in (True, False):  # tritonclient's default binary tensors, then plain JSON
        tensor = triton.InferInput("input_values", [2, clips.shape[1]], "FP32")
        tensor.set_data_from_numpy(clips[:2], binary_data=binary)
        result = client.infer(
            "tiny",
            [tensor],
            outputs=[triton.InferRequestedOutput("logits", binary_data=binary)],
            headers=dict(AUTH),
        )
        np.testing.assert_allclose(result.as_numpy("logits"), expected, atol=1e-4)
        assert result.get_response()["model_version"] == "stable"


def test_infer_response_says_which_pool_and_variant(server: str, clips: np.ndarray) -> None:
    body = {
        "inputs": [
            {
                "name": "input_values",
                "shape": [1, 16000],
                "datatype": "FP32",
                "data": clips[0].tolist(),
            }
        ]
    }
    response = httpx.post(f"{server}/v2/models/tiny/infer", json=body, headers=AUTH, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["x-sluiceway-variant"] == "stable"
    assert response.headers["x-sluiceway-pool"] == "fast"
    assert response.headers["x-sluiceway-route"] == "primary"
    timing = dict(
        (part.split(";dur=")[0].strip(), float(part.split(";dur=")[1]))
        for part in response.headers["server-timing"].split(",")
    )
    # Nested spans, in milliseconds: the ingress holds the dispatch, which holds the replica.
    assert set(timing) == {"ingress", "dispatch", "replica"}
    assert 0 < timing["replica"] <= timing["dispatch"] <= timing["ingress"] < 30_000
    pinned = httpx.post(
        f"{server}/v2/models/tiny/versions/fp16/infer", json=body, headers=AUTH, timeout=30
    )
    assert pinned.status_code == 200 and pinned.headers["x-sluiceway-variant"] == "fp16"
    assert pinned.json()["model_version"] == "fp16"


def test_classify_a_wav_upload(server: str, clips: np.ndarray, tiny_artifacts: Path) -> None:
    expected = run_logits(open_session(tiny_artifacts / "int8" / MODEL_FILE, threads=1), clips)
    labels = ["tonal", "noisy"]
    for clip, logits in zip(clips, expected, strict=True):
        response = httpx.post(
            f"{server}/v1/models/tiny:classify",
            content=wav_bytes(clip),
            headers=AUTH | {"content-type": "audio/wav"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["label"] == labels[int(logits.argmax())]
        assert sum(result["scores"].values()) == pytest.approx(1.0)
        assert result["pool"] == response.headers["x-sluiceway-pool"]
    listing = httpx.get(f"{server}/v1/models", headers=AUTH, timeout=30).json()
    assert listing["models"][0]["name"] == "tiny"
    assert listing["models"][0]["verb"] == "classify"
    assert listing["models"][0]["labels"] == labels
    assert [p["name"] for p in listing["models"][0]["pools"]] == ["fast", "slow"]
    assert httpx.get(f"{server}/openapi.json", timeout=30).json()["info"]["title"] == "Sluiceway"


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "message"),
    [
        ("post", "/v2/models/tiny/infer", {"content": b"{not json"}, 400, "not valid JSON"),
        (
            "post",
            "/v2/models/tiny/infer",
            {
                "json": {
                    "inputs": [
                        {
                            "name": "input_values",
                            "shape": [4],
                            "datatype": "FP32",
                            "data": [0, 0, 0, 0],
                        }
                    ]
                }
            },
            400,
            "does not fit",
        ),
        (
            "post",
            "/v2/models/tiny/infer",
            {
                "json": {
                    "inputs": [
                        {
                            "name": "input_values",
                            "shape": [1, 4],
                            "datatype": "INT32",
                            "data": [0, 0, 0, 0],
                        }
                    ]
                }
            },
            400,
            "datatype INT32, the model takes FP32",
        ),
        (  # one sample: the signature takes any length, the first convolution cannot
            "post",
            "/v2/models/tiny/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "input_values", "shape": [1, 1], "datatype": "FP32", "data": [0]}
                    ]
                }
            },
            400,
            "the model cannot take these inputs",
        ),
        (
            "post",
            "/v2/models/nope/infer",
            {"json": {"inputs": []}},
            404,
            "model 'nope' is not served",
        ),
        (
            "post",
            "/v2/models/tiny/infer",
            {"content": b"x" * (1100 * 1024)},
            413,
            "exceeds the limit",
        ),
        (
            "post",
            "/v1/models/tiny:classify",
            {"content": b"RIFFjunkWAVE"},
            400,
            "not readable audio",
        ),
        (
            "post",
            "/v1/models/tiny:classify",
            {
                "content": b"\x00\x00" * 16000 * 5,
                "headers": {"content-type": "audio/l16;rate=16000"},
            },
            413,
            "the limit is 4 s",
        ),
        (
            "post",
            "/v2/models/tiny/versions/v9/infer",
            {"json": {"inputs": []}},
            404,
            "variant 'v9'",
        ),
        ("get", "/v3/anything", {}, 404, "no route '/v3/anything'"),
        ("get", "/v2/models/tiny/infer", {}, 405, "GET is not allowed on '/v2/models/tiny/infer'"),
        (
            "post",
            "/v1/models/tiny:classify",
            {
                "content": b"\x00\x00" * 400,
                "headers": {"content-type": "audio/l16;rate=1999993"},
            },
            400,
            "sample rate 1999993 Hz is outside 8000-192000 Hz",
        ),
        (
            "post",
            "/v2/models/tiny/infer",
            {
                "json": {
                    "inputs": [
                        {"name": "input_values", "shape": [1] * 65, "datatype": "FP32", "data": [0]}
                    ]
                }
            },
            400,
            "inputs[0].shape has 65 dimensions",
        ),
    ],
)
def test_bad_input_gets_its_4xx_and_the_server_stays_healthy(
    server: str, method: str, path: str, kwargs: dict, status: int, message: str, clips: np.ndarray
) -> None:
    headers = AUTH | kwargs.pop("headers", {})
    response = httpx.request(method, server + path, headers=headers, timeout=30, **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    ok = httpx.post(
        f"{server}/v1/models/tiny:classify", content=wav_bytes(clips[0]), headers=AUTH, timeout=30
    )
    assert ok.status_code == 200
    assert httpx.get(f"{server}/v2/health/ready", timeout=30).status_code == 200


def test_a_token_is_required_except_for_health(server: str) -> None:
    assert httpx.get(f"{server}/v2/health/live", timeout=30).status_code == 200
    missing = httpx.get(f"{server}/v1/models", timeout=30)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.get(f"{server}/v1/models", headers={"authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    assert json.loads(wrong.text)["error"].startswith("missing or wrong bearer token")


def test_the_ingress_reads_the_replica_states_serve_status_reports(server: str) -> None:
    """The ingress polls replica states the cheap way (a plain dict, not ``serve.status()``'s
    pydantic models); both must say the same."""
    from ray import serve

    from serving.config import replica_deployment_name
    from serving.control import APP_NAME, DeploymentState, deployment_states

    states = deployment_states(APP_NAME)
    public = serve.status().applications[APP_NAME].deployments
    assert set(states) == set(public)
    for name, deployment in public.items():
        running = int(deployment.replica_states.get("RUNNING", 0))
        assert len(states[name].running) == running, name
        assert states[name].updating == (deployment.status == "UPDATING"), name
    fast = states[replica_deployment_name("tiny", "fast")]
    assert fast == DeploymentState(fast.running, False) and len(fast.running) >= 1
