"""Sluiceway's own v1 routes: a verb on a model (``:classify``, ``:embed``), the model
listing. The bodies each verb takes and the answers it gives are the model's task's
(``serving.tasks``)."""

from __future__ import annotations

CLASSIFY_PATH = "/v1/models/{model}:classify"
EMBED_PATH = "/v1/models/{model}:embed"
MODELS_PATH = "/v1/models"
# The routes that run a model, and the ingress method that answers each (answered before
# FastAPI's routing, ``serving.http``).
INFERENCE_ROUTES = {CLASSIFY_PATH: "classify", EMBED_PATH: "embed"}
