"""The Serve application builder KubeRay imports (``serveConfigV2``'s ``import_path``), and
`serving.server.deploy` with it.

``args`` is the serving config without its variants (`ServingConfig.shape`); the variants
reach the deployments as their ``user_config``, from the application's ``deployments``
(`serving.server.application_config`; the chart renders the same). A rollout step changes
only those, and Serve reconfigures the running replicas instead of restarting them.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from ray.serve.deployment import Application

from serving.config import ServingShape, describe_validation_error
from serving.errors import ConfigError
from serving.server import build_shape


def app(args: dict[str, Any]) -> Application:
    """Build the application from the RayService application ``args``."""
    try:
        shape = ServingShape.model_validate(args)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, "serveConfigV2 args")) from exc
    return build_shape(shape)
