"""What the OpenAPI spec says of each route: its real status codes with the error body, and
the v2 request and response bodies (the handlers read raw bodies, so FastAPI cannot infer
them). A generated client or a fuzzer (``make fuzz``) learns the API from these."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from serving.protocols.v1 import CLASSIFY_PATH, EMBED_PATH
from serving.protocols.v2 import (
    BYTES,
    DATATYPES,
    HEADER_LENGTH,
    INFER_PATH,
    INFER_VERSION_PATH,
    TensorSpec,
)


class ErrorBody(BaseModel):
    """Every error, whatever its status."""

    error: str = Field(description="what was wrong and what to do")


class V2Parameters(BaseModel):
    model_config = ConfigDict(extra="allow")

    binary_data_size: int | None = Field(
        None, ge=0, description="bytes of this tensor after the JSON"
    )
    binary_data: bool | None = Field(None, description="an output: return it as binary")
    binary_data_output: bool | None = Field(None, description="request: every output binary")


class V2InputTensor(BaseModel):
    name: str
    shape: list[Annotated[int, Field(ge=0)]] = Field(max_length=32)
    datatype: Literal[tuple(sorted([*DATATYPES, BYTES]))]  # type: ignore[valid-type]
    data: list[Any] | None = Field(None, description="row-major values, flat or nested")
    parameters: V2Parameters | None = None


class V2RequestedOutput(BaseModel):
    name: str
    parameters: V2Parameters | None = None


class V2InferRequest(BaseModel):
    """Open Inference Protocol v2 request (JSON, or JSON + binary tensors with the
    ``Inference-Header-Content-Length`` header giving the JSON part's length)."""

    id: str | None = None
    parameters: V2Parameters | None = None
    inputs: list[V2InputTensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = None


class V2OutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any] | None = None
    parameters: V2Parameters | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1: any length")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class TextResult(BaseModel):
    label: str = Field(description="the top label")
    labels: list[str] = Field(description="every label over 0.5 (multi-label), else the top")
    scores: dict[str, float]


class ClassifyResponse(BaseModel):
    """Audio: one label, scores and the clip's length; text: one result per text."""

    model: str
    variant: str
    pool: str
    label: str | None = None
    scores: dict[str, float] | None = None
    seconds: float | None = Field(None, description="audio: length of the clip, seconds")
    results: list[TextResult] | None = Field(None, description="text: one per text, in order")


class EmbedRequest(BaseModel):
    """Text to embed: one string, or a list of them (one vector each)."""

    text: str | list[str] = Field(description="UTF-8 text; longer than the model takes: cut")


class EmbedResponse(BaseModel):
    model: str
    variant: str
    pool: str
    dimension: int
    embeddings: list[list[float]] = Field(description="one vector per text, in order")


_WHY = {
    400: "the body, its tensors or its audio are malformed; the error names the field",
    401: "missing or wrong bearer token (when auth is on)",
    404: "no such model or variant",
    413: "the body or the audio is longer than the model's limit",
    500: "the model or the server failed on this request",
    503: "shed (every pool is full; Retry-After says when to retry) or no pool can serve",
    504: "no result within the model's deadline",
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """FastAPI ``responses`` for these error codes, each with the error body."""
    return {code: {"model": ErrorBody, "description": _WHY[code]} for code in codes}


INFER_CODES = (400, 401, 404, 413, 500, 503, 504)


_REF = "#/components/schemas/{model}"


def components() -> dict[str, Any]:
    """Schemas the request bodies refer to, for the spec's ``components.schemas``."""
    schema = V2InferRequest.model_json_schema(ref_template=_REF)
    embed = EmbedRequest.model_json_schema(ref_template=_REF)
    return {"V2InferRequest": schema, "EmbedRequest": embed, **schema.pop("$defs", {})}


def v2_infer_docs() -> dict[str, Any]:
    """``openapi_extra`` of the v2 infer routes: the request body, JSON or binary."""
    return {
        "parameters": [
            {
                "name": HEADER_LENGTH,
                "in": "header",
                "required": False,
                "schema": {"type": "integer", "minimum": 0},
                "description": "a binary request: the length of its JSON part (without it, "
                "the whole body is JSON)",
            }
        ],
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model="V2InferRequest")}},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": f"JSON part then binary tensors; {HEADER_LENGTH} header "
                    "gives the JSON part's length",
                },
            },
        },
    }


def embed_docs() -> dict[str, Any]:
    """``openapi_extra`` of embed: a JSON body with the text."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": _REF.format(model="EmbedRequest")}}
            },
        }
    }


_AUDIO = {"schema": {"type": "string", "format": "binary", "minLength": 1}}
# what a v1 body of each content type is, as a task declares the types it takes
V1_CONTENT: dict[str, dict[str, Any]] = {
    "application/json": {"schema": {"$ref": _REF.format(model="EmbedRequest")}},
    "audio/wav": _AUDIO,
    "audio/flac": _AUDIO,
    "audio/l16": _AUDIO | {"description": "raw 16-bit PCM, mono; ;rate=N (Hz)"},
    "audio/pcm-f32le": _AUDIO | {"description": "raw float32 PCM, mono; ;rate=N"},
}


def classify_docs() -> dict[str, Any]:
    """``openapi_extra`` of classify: the audio upload, or a text classifier's text."""
    content = dict(V1_CONTENT)
    content["application/json"] = content["application/json"] | {
        "description": "text classifiers: the text"
    }
    return {"requestBody": {"required": True, "content": content}}


@dataclass(frozen=True)
class ServedModel:
    """What the spec says of one served model: its v1 verb and the body types it takes,
    its v2 inputs and its versions."""

    verb: str | None
    content_types: tuple[str, ...]
    inputs: list[TensorSpec]
    versions: list[str]


def served_spec(spec: dict[str, Any], models: Mapping[str, ServedModel]) -> dict[str, Any]:
    """``spec`` with its inference routes for the models served now: a path per model, and
    each with the bodies that model takes (an audio classifier's ``:classify`` takes
    audio, a text classifier's JSON text; v2 lists the model's own inputs), so that a
    generated client, or a fuzzer, sends what the model accepts."""
    spec = copy.deepcopy(spec)
    paths = spec["paths"]
    routes = [INFER_PATH, INFER_VERSION_PATH, CLASSIFY_PATH, EMBED_PATH]
    templates = {route: paths.pop(route) for route in routes if route in paths}
    for name, model in models.items():
        verb_path = {"classify": CLASSIFY_PATH, "embed": EMBED_PATH}.get(model.verb or "")
        for route in [INFER_PATH, INFER_VERSION_PATH, *([verb_path] if verb_path else [])]:
            if route not in templates:
                continue
            item = copy.deepcopy(templates[route])
            operation = item["post"]
            operation["operationId"] = f"{operation['operationId']}_{name}"
            operation["parameters"] = [
                _versions(p, model.versions)
                for p in operation.get("parameters", [])
                if p.get("name") != "model"
            ]
            content = operation["requestBody"]["content"]
            if route in (INFER_PATH, INFER_VERSION_PATH):
                content["application/json"] = {"schema": _v2_request(model.inputs)}
            else:
                operation["requestBody"]["content"] = {
                    t: V1_CONTENT[t] for t in model.content_types if t in V1_CONTENT
                }
            paths[route.replace("{model}", name)] = item
    return spec


def _versions(parameter: dict[str, Any], versions: list[str]) -> dict[str, Any]:
    if parameter.get("name") != "version":
        return parameter
    return parameter | {"schema": {"type": "string", "enum": versions}}


def _v2_request(inputs: list[TensorSpec]) -> dict[str, Any]:
    """The v2 request of a model: every one of its inputs, by name, datatype and rank."""
    tensors = [
        {
            "type": "object",
            # a JSON body carries its values (binary ones come with the header, as
            # application/octet-stream); that their count is the shape's product, no JSON
            # Schema can say
            "required": ["name", "shape", "datatype", "data"],
            "properties": {
                "name": {"const": t.name},
                "datatype": {"const": t.datatype},
                "shape": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 1},
                    "minItems": len(t.shape),
                    "maxItems": len(t.shape),
                },
                "data": {
                    "type": "array",
                    "minItems": 1,
                    "description": "row-major values, flat or nested",
                },
                "parameters": {"$ref": _REF.format(model="V2Parameters")},
            },
        }
        for t in inputs
    ]
    return {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string"},
            "parameters": {"$ref": _REF.format(model="V2Parameters")},
            "inputs": {
                "type": "array",
                "items": {"oneOf": tensors},
                "minItems": len(inputs),
                "maxItems": len(inputs),
            },
            "outputs": {
                "type": "array",
                "items": {"$ref": _REF.format(model="V2RequestedOutput")},
            },
        },
    }
