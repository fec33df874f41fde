"""The OpenAPI spec an ingress serves describes its models as they are: a path per model
and verb it answers, each with the bodies that model takes; no route a model would refuse
whatever it was sent. (The spec a real server answers is fuzzed in test_fuzz.py.)"""

from __future__ import annotations

from typing import Any

import serving.app  # noqa: F401  (registers the ingress's routes on the api)
from serving.http import _openapi, api, describe_served
from serving.openapi import ServedModel, served_spec
from serving.protocols.v2 import TensorSpec
from serving.tasks import AudioClassify, TextEmbed

AUDIO = ServedModel(
    verb="classify",
    content_types=AudioClassify.content_types,
    inputs=[TensorSpec("input_values", "FP32", (-1, -1))],
    versions=["stable", "fp16"],
)
TEXT = ServedModel(
    verb="embed",
    content_types=TextEmbed.content_types,
    inputs=[TensorSpec("text", "BYTES", (-1,))],
    versions=["stable"],
)
TENSORS = ServedModel(
    verb=None,
    content_types=(),
    inputs=[TensorSpec("input_ids", "INT64", (-1, -1)), TensorSpec("mask", "INT64", (-1, -1))],
    versions=["stable"],
)


def spec() -> dict[str, Any]:
    return served_spec(_openapi(), {"tiny": AUDIO, "mini": TEXT, "vad": TENSORS})


def test_each_model_gets_the_routes_it_answers_and_no_other() -> None:
    paths = spec()["paths"]
    inference = {p for p in paths if p.endswith(("infer", ":classify", ":embed"))}
    assert inference == {
        "/v2/models/tiny/infer",
        "/v2/models/tiny/versions/{version}/infer",
        "/v1/models/tiny:classify",
        "/v2/models/mini/infer",
        "/v2/models/mini/versions/{version}/infer",
        "/v1/models/mini:embed",
        "/v2/models/vad/infer",
        "/v2/models/vad/versions/{version}/infer",
    }
    operations = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(operations) == len(set(operations))  # a generated client needs them unique
    version = paths["/v2/models/tiny/versions/{version}/infer"]["post"]["parameters"]
    assert version[0]["schema"]["enum"] == ["stable", "fp16"]
    assert all(p["name"] != "model" for p in version)


def test_each_verb_documents_only_the_bodies_its_model_takes() -> None:
    paths = spec()["paths"]
    audio = paths["/v1/models/tiny:classify"]["post"]["requestBody"]["content"]
    assert set(audio) == {"audio/wav", "audio/flac", "audio/l16", "audio/pcm-f32le"}
    text = paths["/v1/models/mini:embed"]["post"]["requestBody"]["content"]
    assert set(text) == {"application/json"}


def test_v2_documents_the_models_own_inputs() -> None:
    body = spec()["paths"]["/v2/models/vad/infer"]["post"]["requestBody"]["content"]
    inputs = body["application/json"]["schema"]["properties"]["inputs"]
    assert inputs["minItems"] == inputs["maxItems"] == 2
    tensors = inputs["items"]["oneOf"]
    assert [
        (t["properties"]["name"]["const"], t["properties"]["datatype"]["const"]) for t in tensors
    ] == [
        ("input_ids", "INT64"),
        ("mask", "INT64"),
    ]
    assert tensors[0]["properties"]["shape"]["maxItems"] == 2


def test_the_served_spec_follows_the_models_of_the_moment() -> None:
    models: dict[str, ServedModel] = {"tiny": AUDIO}
    describe_served(lambda: models)
    try:
        assert "/v1/models/tiny:classify" in api.openapi()["paths"]
        models["mini"] = TEXT  # a rollout step added a model
        assert "/v1/models/mini:embed" in api.openapi()["paths"]
    finally:
        del api.state.served_models
    assert "/v1/models/{model}:classify" in api.openapi()["paths"]  # no ingress: the template
