"""The chart's values.schema.json, generated from the pydantic models it must agree with.

Run ``python -m serving.schema > charts/sluiceway/values.schema.json``; a test fails when
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

_WORKER_GROUP: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["minReplicas", "maxReplicas", "gpus", "resources"],
    "properties": {
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 1},
        "gpus": {"type": "integer", "minimum": 0},
        "resources": _RESOURCES,
        "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
        "tolerations": {"type": "array", "items": {"type": "object"}},
    },
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
        "properties": {
            "nameOverride": {"type": "string"},
            "fullnameOverride": {"type": "string"},
            "global": {"type": "object"},
            "image": {
                "type": "object",
                "additionalProperties": False,
                "required": ["repository"],
                "properties": {
                    "repository": {"type": "string", "minLength": 1},
                    "tag": {"type": "string"},
                    "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
                },
            },
            "rayVersion": {"type": "string", "minLength": 1},
            "head": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"resources": _RESOURCES},
            },
            "workerGroups": {
                "type": "object",
                "minProperties": 1,
                "additionalProperties": _WORKER_GROUP,
            },
            "serving": serving,
        },
        "$defs": defs,
    }


def main() -> None:
    print(json.dumps(values_schema(), indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
