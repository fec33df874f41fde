"""Imported models served on real Ray Serve and answered through tritonclient: several
int64 inputs and two outputs, and Silero VAD (third-party, stateful) fed its state back."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from optimize.manifest import artifact_digest
from optimize.onnx_import import ImportConfig, import_model
from tests.conftest import TOKEN
from tests.import_models import silero_inputs, silero_vad, token_model
from tests.serving.conftest import deploy

pytestmark = [pytest.mark.slow, pytest.mark.integration]
AUTH = {"authorization": f"Bearer {TOKEN}"}


def _model(directory: Path) -> dict[str, Any]:
    ref = {"uri": str(directory), "sha256": artifact_digest(directory)}
    return {
        "variants": {"stable": {"weight": 100, "artifacts": {"fast": ref, "slow": ref}}},
        "routing": {"pools": ["fast", "slow"], "slo_p99_seconds": 1.0},
    }


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory, vad_artifact: Path) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("imported")
    tokens = token_model(root / "tokens.onnx")
    import_model(ImportConfig(model=tokens, output=root / "tokens", latency_runs=5, samples=2))
    return {"tokens": root / "tokens" / "fp32", "vad": vad_artifact, "onnx": tokens}


@pytest.fixture(scope="module")
def server(ray_serve: dict[str, int], imported: dict[str, Path], token_file: Path) -> Iterator[str]:
    pool = {"num_cpus": 0.5, "max_ongoing_requests": 2, "max_queued_requests": 4}
    deploy(
        {
            "models": {"tokens": _model(imported["tokens"]), "vad": _model(imported["vad"])},
            "pools": {
                "fast": pool | {"resources": {"pool-fast": 1}},
                "slow": pool | {"resources": {"pool-slow": 1}},
            },
            "http": {"host": "127.0.0.1", "port": ray_serve["http"]},
            "auth": {"token_file": str(token_file)},
            "metrics": {"export_port": ray_serve["metrics"]},
        }
    )
    yield f"http://127.0.0.1:{ray_serve['http']}"


def _infer(client: Any, model: str, feeds: dict[str, np.ndarray], outputs: list[str]) -> Any:
    import tritonclient.http as triton
    from tritonclient.utils import np_to_triton_dtype

    tensors = []
    for name, array in feeds.items():
        tensor = triton.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    wanted = [triton.InferRequestedOutput(n) for n in outputs]
    return client.infer(model, tensors, outputs=wanted, headers=dict(AUTH))


def test_a_model_with_several_int64_inputs_answers_through_tritonclient(
    server: str, imported: dict[str, Path]
) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.removeprefix("http://"))
    meta = client.get_model_metadata("tokens", headers=dict(AUTH))
    assert meta["inputs"] == [
        {"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]},
        {"name": "attention_mask", "datatype": "INT64", "shape": [-1, -1]},
    ]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "pooled"]
    feeds = {
        "input_ids": np.array([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]], np.int64),
        "attention_mask": np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], np.int64),
    }
    result = _infer(client, "tokens", feeds, ["logits", "pooled"])
    expected = ort.InferenceSession(str(imported["onnx"])).run(None, feeds)
    np.testing.assert_allclose(result.as_numpy("logits"), expected[0], atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("pooled"), expected[1], atol=1e-5)


def test_a_stateful_model_is_fed_its_state_back_over_v2(server: str) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.removeprefix("http://"))
    local = ort.InferenceSession(str(silero_vad()))
    served_state = local_state = np.zeros((2, 1, 128), np.float32)
    for chunk in silero_inputs(4, seed=3):  # consecutive chunks: each needs the last state
        result = _infer(client, "vad", chunk | {"state": served_state}, ["output", "stateN"])
        served_state = result.as_numpy("stateN")
        expected, local_state = local.run(None, chunk | {"state": local_state})
        np.testing.assert_allclose(result.as_numpy("output"), expected, atol=1e-5)
        np.testing.assert_allclose(served_state, local_state, atol=1e-5)
    assert np.abs(served_state).max() > 0  # the state moved: it was really fed back


def test_audio_classify_on_a_tensor_model_says_to_use_v2(server: str) -> None:
    response = httpx.post(
        f"{server}/v1/models/vad:classify",
        content=b"\0\0" * 1600,
        headers=AUTH | {"content-type": "audio/l16;rate=16000"},
        timeout=30,
    )
    assert response.status_code == 400
    assert "/v2/models/vad/infer" in response.json()["error"]
    listing = httpx.get(f"{server}/v1/models", headers=AUTH, timeout=30).json()["models"]
    assert {m["name"]: m["labels"] for m in listing} == {"tokens": [], "vad": []}
    assert {m["name"]: m["verb"] for m in listing} == {"tokens": None, "vad": None}  # v2 only
