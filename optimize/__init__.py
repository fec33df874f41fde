"""Checkpoint -> verified, measured ONNX artifacts.

The manifest, gates, errors and audio helpers import without torch (serving and deploy use
them); the builders (``build_artifacts``, ``run_bench``, ...) load torch on first use.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from optimize.errors import (
    ArtifactError,
    ArtifactHashMismatch,
    ArtifactNotFound,
    ArtifactRejected,
    AudioDecodeError,
    CheckpointError,
    DatasetError,
    ExportMismatch,
    GatesFailed,
    GateSpecError,
    InputError,
    ManifestInvalid,
    ModelLoadError,
    OptimizeError,
)
from optimize.gates import GateThresholds
from optimize.manifest import Manifest, Precision, read_manifest, verify_artifact

_LAZY = {
    "BenchConfig": "optimize.bench",
    "OptimizeConfig": "optimize.pipeline",
    "build_artifacts": "optimize.pipeline",
    "run_bench": "optimize.bench",
}

__all__ = [
    "ArtifactError",
    "ArtifactHashMismatch",
    "ArtifactNotFound",
    "ArtifactRejected",
    "AudioDecodeError",
    "BenchConfig",
    "CheckpointError",
    "DatasetError",
    "ExportMismatch",
    "GateSpecError",
    "GateThresholds",
    "GatesFailed",
    "InputError",
    "Manifest",
    "ManifestInvalid",
    "ModelLoadError",
    "OptimizeConfig",
    "OptimizeError",
    "Precision",
    "build_artifacts",
    "read_manifest",
    "run_bench",
    "verify_artifact",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'optimize' has no attribute {name!r}")
