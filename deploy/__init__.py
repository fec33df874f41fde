"""From artifacts to a running cluster: chart values, helm, and the cluster's status.

The values and helm modules import without the ``kubernetes`` client; the cluster names
load it on first use (it takes a second to import, and only status and rollouts need it).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from deploy.errors import (
    ClusterRequestFailed,
    DeployError,
    HelmFailed,
    HelmMissing,
    InvalidValues,
    NoClusterContext,
    ReleaseNotFound,
    RolloutTimeout,
)
from deploy.helm import Helm
from deploy.values import (
    PoolArtifact,
    add_variant,
    chart_values,
    rebalance_weights,
    validate_serving,
    write_values,
)

_LAZY = {
    "Cluster": "deploy.cluster",
    "RayServiceStatus": "deploy.cluster",
}

__all__ = [
    "Cluster",
    "ClusterRequestFailed",
    "DeployError",
    "Helm",
    "HelmFailed",
    "HelmMissing",
    "InvalidValues",
    "NoClusterContext",
    "PoolArtifact",
    "RayServiceStatus",
    "ReleaseNotFound",
    "RolloutTimeout",
    "add_variant",
    "chart_values",
    "rebalance_weights",
    "validate_serving",
    "write_values",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'deploy' has no attribute {name!r}")
