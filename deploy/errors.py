"""Errors raised on the way from artifacts to a running cluster.

The tree::

    DeployError
    ├── HelmMissing             no helm binary under .tools/helm/ or on PATH
    ├── HelmFailed              helm exited non-zero for another reason (carries its stderr)
    ├── NoClusterContext        no usable kubeconfig/context, or the API server is unreachable
    ├── ClusterRequestFailed    the API server answered an error other than not-found
    ├── ReleaseNotFound         no such Helm release or RayService
    ├── RolloutTimeout          the RayService did not become Ready in time
    ├── InvalidValues           chart values the serving config or `helm template` refuses
    ├── ImageBuildFailed        the Dockerfile's instructions could not be followed here
    └── BootFailed              a booted render's pod or Serve application did not come up

Every message says what was wrong, the value, and what to do. Foreign errors (subprocess,
the kubernetes client, pydantic) are wrapped where they enter, with ``raise ... from exc``.
"""

from __future__ import annotations


class DeployError(Exception):
    """Base of every error raised by `deploy`."""


class HelmMissing(DeployError):
    """No helm binary could be found."""


class HelmFailed(DeployError):
    """helm exited non-zero; ``stderr`` holds what it said."""

    def __init__(self, message: str, *, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


class NoClusterContext(DeployError):
    """No usable kubeconfig or context, or its API server cannot be reached."""


class ClusterRequestFailed(DeployError):
    """The Kubernetes API server refused a request (other than not-found)."""


class ReleaseNotFound(DeployError):
    """The Helm release or RayService does not exist in that namespace."""


class RolloutTimeout(DeployError):
    """The RayService did not become Ready before the deadline."""


class InvalidValues(DeployError):
    """Chart values that the serving config or the chart refuses."""


class ImageBuildFailed(DeployError):
    """The Dockerfile's instructions could not be followed (a pip line failed, a COPY source
    is missing, an instruction `deploy.image` does not know)."""


class BootFailed(DeployError):
    """A pod or the Serve applications of a booted render did not come up."""
