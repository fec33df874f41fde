"""The Serve application builder KubeRay imports (``serveConfigV2``'s ``import_path``).

``args`` is the chart's ``serving`` values subtree; the same pydantic model as
``sluiceway serve --config`` validates it, so chart and code cannot drift.
"""

from __future__ import annotations

from typing import Any

from ray.serve.deployment import Application

from serving.config import parse_config
from serving.server import build_app


def app(args: dict[str, Any]) -> Application:
    """Build the application from the RayService application ``args``."""
    return build_app(parse_config(args, origin="serveConfigV2 args"))
