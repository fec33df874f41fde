"""The serving runtime: Ray Serve deployments that route each request to a pool (GPU first,
CPU on spillover, shed past the SLO) and run ONNX artifacts there; and ``simulate``,
the same routing code on a virtual clock at cluster scale.

Config and errors import without Ray; ``build_app``, ``start``, ``stop`` and the
deployments load Ray on first use. Nothing here imports torch (the serving image has none).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from serving.config import ServingConfig, load_config, parse_config
from serving.errors import (
    BadRequest,
    ConfigError,
    DeadlineExceeded,
    ModelError,
    ModelUnavailable,
    PayloadTooLarge,
    PoolSaturated,
    ServingError,
    Unauthorized,
    UnknownModel,
)

_LAZY = {
    "Ingress": "serving.app",
    "ModelReplica": "serving.replica",
    "build_app": "serving.server",
    "start": "serving.server",
    "stop": "serving.server",
}

__all__ = [
    "BadRequest",
    "ConfigError",
    "DeadlineExceeded",
    "Ingress",
    "ModelError",
    "ModelReplica",
    "ModelUnavailable",
    "PayloadTooLarge",
    "PoolSaturated",
    "ServingConfig",
    "ServingError",
    "Unauthorized",
    "UnknownModel",
    "build_app",
    "load_config",
    "parse_config",
    "start",
    "stop",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
