"""Real Ray Serve on localhost, serving real tiny-preset artifacts.

Two CPU pools stand in for GPU and CPU (no GPU here): ``fast`` serves the int8 artifact,
``slow`` the fp32 one; the router does not care what hardware a pool has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from optimize.manifest import artifact_digest
from tests.conftest import TOKEN, free_port  # noqa: F401 (re-exported for the tests here)


def artifact(directory: Path) -> dict[str, str]:
    return {"uri": str(directory), "sha256": artifact_digest(directory)}


def serving_config(
    artifacts: Path,
    token_file: Path,
    *,
    fast: dict[str, Any] | None = None,
    slow: dict[str, Any] | None = None,
    routing: dict[str, Any] | None = None,
    limits: dict[str, Any] | None = None,
    ports: dict[str, int],
    model: str = "tiny",
) -> dict[str, Any]:
    pools = {"fast": "int8", "slow": "fp32"}
    return {
        "models": {
            model: {
                "variants": {
                    "stable": {
                        "weight": 100,
                        "artifacts": {p: artifact(artifacts / v) for p, v in pools.items()},
                    },
                    "fp16": {
                        "weight": 0,
                        "artifacts": {p: artifact(artifacts / "fp16") for p in pools},
                    },
                },
                "routing": {
                    "pools": ["fast", "slow"],
                    "slo_p99_seconds": 1.0,
                    "min_spill_seconds": 0.5,
                    **(routing or {}),
                },
                "limits": {
                    "max_body_bytes": 1024 * 1024,
                    "max_audio_seconds": 4.0,
                    "deadline_seconds": 20.0,
                    **(limits or {}),
                },
            }
        },
        "pools": {
            "fast": {
                "num_cpus": 0.5,
                "max_ongoing_requests": 2,
                "max_queued_requests": 2,
                "resources": {"pool-fast": 1},
                **(fast or {}),
            },
            "slow": {
                "num_cpus": 0.5,
                "max_ongoing_requests": 2,
                "max_queued_requests": 2,
                "resources": {"pool-slow": 1},
                **(slow or {}),
            },
        },
        "http": {"host": "127.0.0.1", "port": ports["http"]},
        "auth": {"token_file": str(token_file)},
        "metrics": {"export_port": ports["metrics"]},
    }


def deploy(config: dict[str, Any]) -> None:
    from ray import serve

    from serving.config import parse_config
    from serving.control import APP_NAME
    from serving.server import QUIET_LOGS, build_app

    serve.run(
        build_app(parse_config(config)), name=APP_NAME, route_prefix="/", logging_config=QUIET_LOGS
    )
