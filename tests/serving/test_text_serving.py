"""The real all-MiniLM-L6-v2 served on real Ray Serve: `:embed` over HTTP and v2 with BYTES
(raw text) through tritonclient, the tokenizer running in the replica; no labels needed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from optimize.manifest import artifact_digest
from optimize.runtime import open_session
from optimize.text import encode, load_text_source, onnx_embeddings
from tests.conftest import TOKEN
from tests.serving.conftest import deploy

pytestmark = [pytest.mark.slow, pytest.mark.integration]
AUTH = {"authorization": f"Bearer {TOKEN}"}
TEXTS = ["The cat sat on the mat.", "Stock markets fell sharply on Monday after the report."]


@pytest.fixture(scope="module")
def server(ray_serve: dict[str, int], minilm_artifacts: Path, token_file: Path) -> Iterator[str]:
    def ref(variant: str) -> dict[str, str]:
        directory = minilm_artifacts / variant
        return {"uri": str(directory), "sha256": artifact_digest(directory)}

    pool = {"num_cpus": 0.5, "max_ongoing_requests": 2, "max_queued_requests": 4}
    deploy(
        {
            "models": {
                "minilm": {
                    "variants": {
                        "stable": {"weight": 100, "artifacts": {"fast": ref("int8")}},
                    },
                    "routing": {"pools": ["fast"], "slo_p99_seconds": 2.0},
                }
            },
            "pools": {"fast": pool | {"resources": {"pool-fast": 1}}},
            "http": {"host": "127.0.0.1", "port": ray_serve["http"]},
            "auth": {"token_file": str(token_file)},
            "metrics": {"export_port": ray_serve["metrics"]},
        }
    )
    yield f"http://127.0.0.1:{ray_serve['http']}"


def expected(minilm_artifacts: Path, texts: list[str]) -> np.ndarray:
    tokenizer = load_text_source("all-minilm-l6-v2").tokenizer
    session = open_session(minilm_artifacts / "int8" / "model.onnx", threads=1)
    return onnx_embeddings(session, encode(tokenizer, texts, 256))


def test_embed_answers_one_vector_per_text(server: str, minilm_artifacts: Path) -> None:
    response = httpx.post(
        f"{server}/v1/models/minilm:embed", json={"text": TEXTS}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["dimension"] == 384 and len(body["embeddings"]) == 2
    np.testing.assert_allclose(body["embeddings"], expected(minilm_artifacts, TEXTS), atol=1e-4)
    assert response.headers["x-sluiceway-artifact"] == "int8"
    one = httpx.post(
        f"{server}/v1/models/minilm:embed", json={"text": TEXTS[0]}, headers=AUTH, timeout=60
    )
    # alone, unpadded: int8's activation scales are per call, so padding shifts it a little
    alone, batched = np.asarray(one.json()["embeddings"][0]), np.asarray(body["embeddings"][0])
    assert alone @ batched / np.linalg.norm(alone) / np.linalg.norm(batched) > 0.99
    listing = httpx.get(f"{server}/v1/models", headers=AUTH, timeout=30).json()["models"]
    assert listing[0]["labels"] == []  # an embedding model has none
    assert listing[0]["verb"] == "embed"  # what to call it with


def test_v2_takes_raw_text_as_bytes_through_tritonclient(
    server: str, minilm_artifacts: Path
) -> None:
    import tritonclient.http as triton

    client = triton.InferenceServerClient(server.removeprefix("http://"))
    meta = client.get_model_metadata("minilm", headers=dict(AUTH))
    assert meta["inputs"] == [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
    assert meta["outputs"] == [
        {"name": "sentence_embedding", "datatype": "FP32", "shape": [-1, 384]}
    ]
    for binary in (True, False):
        tensor = triton.InferInput("text", [2], "BYTES")
        tensor.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), binary)
        result = client.infer(
            "minilm",
            [tensor],
            outputs=[triton.InferRequestedOutput("sentence_embedding", binary_data=binary)],
            headers=dict(AUTH),
        )
        np.testing.assert_allclose(
            result.as_numpy("sentence_embedding"), expected(minilm_artifacts, TEXTS), atol=1e-4
        )


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "must be JSON"),
        (b'{"text": []}', "non-empty list of strings"),
        (b'{"text": 3}', "a string or a non-empty list"),
        (b'{"words": "hi"}', "a string or a non-empty list"),
    ],
)
def test_bad_embed_bodies_are_400_naming_the_problem(
    server: str, body: bytes, message: str
) -> None:
    response = httpx.post(
        f"{server}/v1/models/minilm:embed",
        content=body,
        headers=AUTH | {"content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and message in response.json()["error"]


def test_classify_text_with_a_fitted_head(
    ray_serve: dict[str, int], minilm_classifier: Path, token_file: Path
) -> None:
    directory = minilm_classifier / "int8"
    ref = {"uri": str(directory), "sha256": artifact_digest(directory)}
    deploy(
        {
            "models": {
                "topics": {
                    "variants": {"stable": {"weight": 100, "artifacts": {"fast": ref}}},
                    "routing": {"pools": ["fast"], "slo_p99_seconds": 2.0},
                }
            },
            "pools": {"fast": {"num_cpus": 0.5, "resources": {"pool-fast": 1}}},
            "http": {"host": "127.0.0.1", "port": ray_serve["http"]},
            "auth": {"token_file": str(token_file)},
            "metrics": {"export_port": ray_serve["metrics"]},
        }
    )
    base = f"http://127.0.0.1:{ray_serve['http']}"
    texts = [
        "Open a TCP connection to the mail server and send the message over it.",
        "Copy the directory tree and then remove the temporary archive file.",
    ]
    response = httpx.post(
        f"{base}/v1/models/topics:classify", json={"text": texts}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["label"] for r in results] == ["network", "files"]
    assert all(abs(sum(r["scores"].values()) - 1) < 1e-5 for r in results)  # softmax
    embed = httpx.post(
        f"{base}/v1/models/topics:embed", json={"text": "hi"}, headers=AUTH, timeout=60
    )
    assert embed.status_code == 400 and "not a text embedding model" in embed.json()["error"]


def test_a_multi_label_classifier_scores_each_label_with_a_sigmoid(
    ray_serve: dict[str, int], token_file: Path, tmp_path: Path
) -> None:
    from optimize.text import TextConfig, build_text_artifacts
    from tests.import_models import sequence_classifier

    checkpoint = sequence_classifier(tmp_path / "ckpt")
    build_text_artifacts(
        TextConfig(
            model=str(checkpoint),
            output=tmp_path / "a",
            variants=("fp32",),
            latency_runs=5,
            sentences=16,
        )
    )
    directory = tmp_path / "a" / "fp32"
    ref = {"uri": str(directory), "sha256": artifact_digest(directory)}
    deploy(
        {
            "models": {
                "tickets": {
                    "variants": {"stable": {"weight": 100, "artifacts": {"fast": ref}}},
                    "routing": {"pools": ["fast"], "slo_p99_seconds": 2.0},
                }
            },
            "pools": {"fast": {"num_cpus": 0.5, "resources": {"pool-fast": 1}}},
            "http": {"host": "127.0.0.1", "port": ray_serve["http"]},
            "auth": {"token_file": str(token_file)},
            "metrics": {"export_port": ray_serve["metrics"]},
        }
    )
    base = f"http://127.0.0.1:{ray_serve['http']}"
    response = httpx.post(
        f"{base}/v1/models/tickets:classify", json={"text": TEXTS}, headers=AUTH, timeout=60
    )
    assert response.status_code == 200, response.text
    tokenizer = load_text_source(str(checkpoint)).tokenizer
    feeds = encode(tokenizer, TEXTS, 256)
    logits = open_session(directory / "model.onnx", threads=1).run(None, feeds)[0]
    for result, row in zip(response.json()["results"], logits, strict=True):
        expected = 1 / (1 + np.exp(-row.astype(np.float64)))  # each label on its own
        assert list(result["scores"]) == ["urgent", "billing", "spam"]
        np.testing.assert_allclose(list(result["scores"].values()), expected, atol=1e-4)
        over = zip(result["scores"], expected, strict=True)
        assert result["labels"] == [name for name, v in over if v >= 0.5]
