"""From artifacts to a running cluster: chart values, helm, and the cluster's status.

The values and helm modules import without the ``kubernetes`` client; the cluster names
load it on first use (it takes a second to import, and only status and rollouts need it).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from deploy.errors import (
    BootFailed,
    ClusterRequestFailed,
    DeployError,
    HelmFailed,
    HelmMissing,
    ImageBuildFailed,
    InvalidValues,
    NoClusterContext,
    ReleaseNotFound,
    RolloutTimeout,
)
from deploy.helm import Helm
from deploy.values import (
    PoolArtifact,
    add_model,
    add_variant,
    chart_values,
    rebalance_weights,
    validate_serving,
    write_values,
)

_LAZY = {
    # the boot needs dnslib and root; the image needs a Dockerfile: loaded when asked for
    "Boot": "deploy.boot",
    "build_image_python": "deploy.image",
    "Cluster": "deploy.cluster",
    "RayServiceStatus": "deploy.cluster",
}

__all__ = [
    "Boot",
    "BootFailed",
    "Cluster",
    "ClusterRequestFailed",
    "DeployError",
    "Helm",
    "HelmFailed",
    "HelmMissing",
    "ImageBuildFailed",
    "InvalidValues",
    "NoClusterContext",
    "PoolArtifact",
    "RayServiceStatus",
    "ReleaseNotFound",
    "RolloutTimeout",
    "add_model",
    "add_variant",
    "build_image_python",
    "chart_values",
    "rebalance_weights",
    "validate_serving",
    "write_values",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")
