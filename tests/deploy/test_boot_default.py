"""The chart's default render, booted as KubeRay runs it, serves; `helm upgrade` to a new
variant under load fails nothing and restarts nothing.

Values from `sluiceway deploy values` for three models on the default `cpu` pool: the
audio classifier (wav2vec2-tiny int8), the text encoder (the real all-MiniLM-L6-v2, int8)
and an imported ONNX model (Silero VAD), each `--add`ed to one values file. Booted by
deploy.boot: the head and the cpu worker pod each in its own network namespace, running
KubeRay's own `ray start` lines on the image's Python; serveConfigV2 PUT to Serve's REST
API. Stand-ins: the claim (a host directory of copied artifacts) and the operators'
bookkeeping; no API server exists here, so what needs one is checked statically
(tests/deploy/test_kuberay.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from deploy.boot import Boot
from deploy.kuberay import static_findings
from deploy.values import PoolArtifact, add_model, add_variant, chart_values
from optimize.text import encode, load_text_source, onnx_embeddings
from tests.deploy.boot_support import MOUNT, Load, booted, poll, render, volume
from tests.import_models import silero_inputs, silero_vad
from tests.serving.test_routing_scale import PCM, pcm

pytestmark = [pytest.mark.slow, pytest.mark.integration]
TEXTS = ["a cat sat on the mat", "the server answered every request"]


@pytest.fixture(scope="module")
def claim(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_artifacts: Path,
    minilm_artifacts: Path,
    vad_artifact: Path,
) -> Path:
    return volume(
        tmp_path_factory.mktemp("claim"),
        {
            "tiny": tiny_artifacts / "int8",
            "tiny-canary": tiny_artifacts / "fp32",
            "minilm": minilm_artifacts / "int8",
            "vad": vad_artifact,
        },
    )


@pytest.fixture(scope="module")
def values(claim: Path) -> dict[str, object]:
    """What `deploy values -a tiny`, then `--add` of minilm and of vad, write."""

    def model(name: str, subdir: str) -> dict[str, object]:
        pools = {"cpu": PoolArtifact(artifact=claim / name / subdir, device="cpu")}
        return chart_values(name, pools, uri_prefix=f"{MOUNT}/{name}")

    merged = add_model(model("tiny", "int8"), model("minilm", "int8"))
    return add_model(merged, model("vad", "fp32"))


@pytest.fixture(scope="module")
def boot(
    values: dict[str, object],
    claim: Path,
    image_python: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Boot]:
    folder = tmp_path_factory.mktemp("boot-default")
    with booted(render(values, folder), image_python, folder / "pods", claim) as running:
        yield running


def test_the_default_render_has_nothing_the_cluster_would_trip_over(
    values: dict[str, object], tmp_path: Path
) -> None:
    assert static_findings(render(values, tmp_path), operator_namespace="kuberay-system") == []


def test_every_model_answers_through_every_serve_endpoint(boot: Boot, claim: Path) -> None:
    endpoints = boot.serve_endpoints()
    assert len(endpoints) == 2, endpoints  # the head (its proxy healthy) and the cpu worker
    tokenizer = load_text_source("all-minilm-l6-v2").tokenizer
    session = ort.InferenceSession(str(claim / "minilm" / "int8" / "model.onnx"))
    vectors = onnx_embeddings(session, encode(tokenizer, TEXTS, 256))
    vad = ort.InferenceSession(str(silero_vad()))
    chunk = silero_inputs(1, seed=5)[0] | {"state": np.zeros((2, 1, 128), np.float32)}
    speech, _ = vad.run(None, chunk)
    v2 = {
        "inputs": [
            {
                "name": n,
                "shape": list(a.shape),
                "datatype": "FP32" if a.dtype == np.float32 else "INT64",
                "data": a.ravel().tolist(),
            }
            for n, a in chunk.items()
        ],
        "outputs": [{"name": "output"}],
    }
    for base in endpoints:
        audio = httpx.post(
            f"{base}/v1/models/tiny:classify", content=pcm(1.0), headers=PCM, timeout=60
        )
        assert audio.status_code == 200, audio.text
        assert audio.headers["x-sluiceway-pool"] == "cpu"
        assert set(audio.json()["scores"]) == {"tonal", "noisy"}
        text = httpx.post(f"{base}/v1/models/minilm:embed", json={"text": TEXTS}, timeout=60)
        assert text.status_code == 200, text.text  # the image's Python has the tokenizer
        np.testing.assert_allclose(text.json()["embeddings"], vectors, atol=1e-4)
        tensors = httpx.post(f"{base}/v2/models/vad/infer", json=v2, timeout=60)
        assert tensors.status_code == 200, tensors.text
        output = tensors.json()["outputs"][0]
        np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), speech, atol=1e-5)


def test_every_pod_passes_its_probes_and_the_podmonitor_port_serves_our_metrics(boot: Boot) -> None:
    for name, running in boot.pods.items():
        assert boot.probe(name, running.pod.readiness), f"{name} not ready"
        assert boot.probe(name, running.pod.liveness), f"{name} not live"
    worker = next(p for p in boot.pods.values() if p.pod.node_type == "worker")
    base = boot.serve_endpoints()[0]
    for _ in range(3):
        httpx.post(f"{base}/v1/models/tiny:classify", content=pcm(0.5), headers=PCM, timeout=60)

    def scraped() -> str:
        texts = [
            httpx.get(p.url("metrics", "/metrics"), timeout=10).text for p in boot.pods.values()
        ]
        joined = "\n".join(texts)
        return joined if "sluiceway_requests_total{" in joined else ""

    text = poll(scraped, deadline_s=60, every_s=2)  # Ray exports every few seconds
    assert 'model="tiny"' in text and "sluiceway_replica_memory_bytes" in text
    assert "sluiceway_replica_memory_bytes" in httpx.get(worker.url("metrics", "/metrics")).text


def test_a_helm_upgrade_to_a_new_variant_under_load_fails_nothing_and_restarts_nothing(
    boot: Boot, values: dict[str, object], claim: Path, tmp_path: Path
) -> None:
    """What `sluiceway deploy rollout` applies: the same values plus a canary variant at
    50 %; the operator PUTs the new serveConfigV2 to the running cluster."""
    canary = add_variant(
        values,
        "tiny",
        "canary",
        {"cpu": PoolArtifact(artifact=claim / "tiny-canary" / "fp32", device="cpu")},
        50,
        uri_prefix=f"{MOUNT}/tiny-canary",
    )
    upgraded = render(canary, tmp_path)
    before = boot.replica_ids()
    with Load(boot.serve_endpoints(), clients=2) as load:
        start = time.monotonic()
        load.wait_for(lambda seen: seen[("stable", "cpu")] >= 10, start)
        boot.upgrade(upgraded)
        applied = time.monotonic()
        load.wait_for(lambda seen: seen[("canary", "cpu")] >= 1, applied, deadline_s=120)
        split_from = time.monotonic()
        load.wait_for(lambda seen: seen.total() >= 200, split_from, deadline_s=180)
    assert load.failed == [], load.failed[:5]
    after = boot.replica_ids()
    assert after == before, "a replica was restarted"
    assert after["ingress"] and after["tiny-cpu"]
    split = load.since(split_from)
    share = split[("canary", "cpu")] / split.total()
    assert 0.35 < share < 0.65, split  # 50 % by weight; 200+ answers
    print(
        f"\nboot to ready {boot.timings['ready_s']:.1f} s; upgrade under load: "
        f"{len(load.answers)} answered, {len(load.failed)} failed, replicas kept {sorted(after)}, "
        f"canary share {share:.2f} of {split.total()}"
    )
