"""The chart's values.schema.json, generated from the pydantic models it must agree with.

Run ``python -m tools.chart_schema > charts/sluiceway/values.schema.json``; a test fails when
the committed file differs from what this prints.
"""

from __future__ import annotations

import json
from typing import Any

from serving.config import ServingConfig

_RESOURCES: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "requests": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
        "limits": {"type": "object", "additionalProperties": {"type": ["string", "number"]}},
    },
}

_SCHEDULING: dict[str, Any] = {
    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "tolerations": {"type": "array", "items": {"type": "object"}},
    "affinity": {"type": "object"},
}

_WORKER_GROUP: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["minReplicas", "maxReplicas", "gpus", "resources"],
    "properties": {
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "gpus": {"type": "integer", "minimum": 0},
        "resources": _RESOURCES,
        **_SCHEDULING,
    },
}

_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
_RATIO = {"type": "number", "exclusiveMinimum": 0, "maximum": 1}
_QUANTITY = {"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?([KMGTPE]i?)?$"}
_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_NAMESPACES = {"type": "array", "items": {"type": "string", "minLength": 1}}


def _strict(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
    }
    if required:
        schema["required"] = required
    return schema


def _chart_values() -> dict[str, Any]:
    """The chart's own values (everything but `serving`)."""
    return {
        "nameOverride": {"type": "string"},
        "fullnameOverride": {"type": "string"},
        "global": {"type": "object"},
        "image": _strict(
            {
                "repository": {"type": "string", "minLength": 1},
                "tag": {"type": "string"},
                "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            },
            ["repository"],
        ),
        "imagePullSecrets": {
            "type": "array",
            "items": _strict({"name": {"type": "string", "minLength": 1}}, ["name"]),
        },
        "rayVersion": {"type": "string", "minLength": 1},
        "serviceAccount": _strict(
            {"create": {"type": "boolean"}, "name": {"type": "string"}, "annotations": _STRING_MAP},
            ["create"],
        ),
        "podSecurityContext": {"type": "object"},
        "securityContext": {"type": "object"},
        "tmpSizeLimit": _QUANTITY,
        "head": _strict({"resources": _RESOURCES, **_SCHEDULING}),
        "workerGroups": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": _WORKER_GROUP,
        },
        "artifacts": _strict(
            {
                "mountPath": {"type": "string", "pattern": "^/"},
                "existingClaim": {"type": "string"},
                "fetch": _strict(
                    {"enabled": {"type": "boolean"}, "cacheSizeLimit": _QUANTITY}, ["enabled"]
                ),
            },
            ["mountPath", "fetch"],
        ),
        "auth": _strict(
            {
                "enabled": {"type": "boolean"},
                "existingSecret": {"type": "string"},
                "secretKey": {"type": "string", "minLength": 1},
            },
            ["enabled"],
        ),
        "networkPolicy": _strict(
            {
                "enabled": {"type": "boolean"},
                "serveFromNamespaces": _NAMESPACES,
                "metricsFromNamespaces": _NAMESPACES,
                "operatorNamespace": {"type": "string", "minLength": 1},
            },
            ["enabled"],
        ),
        "podDisruptionBudget": _strict(
            {"enabled": {"type": "boolean"}, "maxUnavailable": {"type": "integer", "minimum": 1}},
            ["enabled"],
        ),
        "monitoring": _strict(
            {
                "podMonitor": _strict(
                    {"enabled": {"type": "boolean"}, "interval": _DURATION, "labels": _STRING_MAP},
                    ["enabled"],
                ),
                "prometheusRule": _strict(
                    {
                        "enabled": {"type": "boolean"},
                        "labels": _STRING_MAP,
                        "p99OverSloFor": _DURATION,
                        "spilloverRatio": _RATIO,
                        "spilloverFor": _DURATION,
                        "sheddingFor": _DURATION,
                        "memoryRatio": _RATIO,
                        "errorRatio": _RATIO,
                        "for": _DURATION,
                        "poolDownFor": _DURATION,
                    },
                    ["enabled"],
                ),
                "dashboard": _strict(
                    {
                        "enabled": {"type": "boolean"},
                        "labels": _STRING_MAP,
                        "folder": {"type": "string"},
                    },
                    ["enabled"],
                ),
            }
        ),
    }


def values_schema() -> dict[str, Any]:
    """JSON Schema of the chart's values; ``serving`` is ServingConfig's own schema."""
    serving = ServingConfig.model_json_schema()
    defs = serving.pop("$defs", {})
    # The chart's defaults hold no model yet (the template says so in a sentence); `helm
    # lint` of the bare chart must still pass, so "at least one" is left to the template.
    for key in ("models", "pools"):
        serving["properties"][key].pop("minProperties", None)
    serving["required"] = []
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["image", "rayVersion", "head", "workerGroups", "serving"],
        "properties": {**_chart_values(), "serving": serving},
        "$defs": defs,
    }


def main() -> None:
    print(json.dumps(values_schema(), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
