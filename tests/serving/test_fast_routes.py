"""The inference routes the ingress answers before FastAPI's routing match exactly the
routes the API declares (the OpenAPI spec), with the same path parameters."""

from __future__ import annotations

import re

from serving.app import api
from serving.http import FAST_ROUTES


def concrete(template: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: f"{m.group(1)}-1.x", template)


def test_every_declared_inference_route_takes_the_fast_path_and_nothing_else() -> None:
    assert set(FAST_ROUTES.values()) == {"infer", "infer_version", "classify", "embed"}
    declared = api.openapi()["paths"]
    fast = {path for path in declared if path in FAST_ROUTES}
    assert fast == set(FAST_ROUTES), "each fast route is a declared route"
    for template, methods in declared.items():
        route = api.inference_route("POST", concrete(template))
        if template in FAST_ROUTES:
            assert "post" in methods
            name, params = route or ("", {})
            assert name == FAST_ROUTES[template]
            assert set(params) == set(re.findall(r"\{(\w+)\}", template))
            assert all(v.endswith("-1.x") for v in params.values())
        else:  # metadata, health, listing: FastAPI routes them
            assert route is None, template


def test_only_posts_to_whole_segments_match() -> None:
    assert api.inference_route("POST", "/v1/models/tiny:classify") == (
        "classify",
        {"model": "tiny"},
    )
    assert api.inference_route("POST", "/v2/models/tiny/versions/b/infer") == (
        "infer_version",
        {"model": "tiny", "version": "b"},
    )
    assert api.inference_route("GET", "/v2/models/tiny/infer") is None
    assert api.inference_route("POST", "/v1/models/a/b:classify") is None  # two segments
    assert api.inference_route("POST", "/v1/models/tiny:classifyx") is None
    assert api.inference_route("POST", "/v2/models//infer") is None  # an empty name
    assert api.inference_route("POST", "/v2/models/tiny/infer/") is None
