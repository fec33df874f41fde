"""Errors raised by serving; each carries the HTTP status it becomes.

The tree::

    ServingError
    ├── ConfigError             the serving config is invalid (field path, value, limit)
    ├── ScenarioError           a simulation scenario is invalid (field path, value)
    ├── ArtifactFetchError      an http(s) artifact could not be downloaded, or did not match
    ├── BuildFailed             `serve --build-from` could not build what the pools need
    ├── BadRequest (400)        malformed JSON, wrong shape or dtype, undecodable audio
    ├── Unauthorized (401)      missing or wrong bearer token
    ├── UnknownModel (404)      no such model or variant
    ├── PayloadTooLarge (413)   body or audio over the configured limit
    ├── ModelError (500)        the model itself failed on the request (counted, no failover)
    ├── PoolSaturated (503)     every pool (or the ingress's body bytes) full: shed, Retry-After
    ├── ModelUnavailable (503)  no healthy replica in any pool: an outage, counted as an error
    └── DeadlineExceeded (504)  the request's deadline passed before a result came back
"""

from __future__ import annotations


class ServingError(Exception):
    """Base of every error raised by `serving`."""

    status_code = 500
    reason = "internal"  # labels sluiceway_requests_total: why a request ended so
    headers: dict[str, str]

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}


class ConfigError(ServingError):
    """The serving configuration is invalid."""


class ScenarioError(ServingError):
    """A simulation scenario is invalid or unreadable."""


class ArtifactFetchError(ServingError):
    """An artifact could not be fetched into the local cache, or was not the one expected."""


class BuildFailed(ServingError):
    """Building the artifacts a local first run needs failed."""


class BadRequest(ServingError):
    """The request body or its tensors are malformed."""

    status_code = 400
    reason = "bad_request"


class Unauthorized(ServingError):
    """A bearer token is required and was missing or wrong."""

    status_code = 401
    reason = "unauthorized"


class UnknownModel(ServingError):
    """The model or variant named in the request does not exist."""

    status_code = 404
    reason = "unknown_model"


class PayloadTooLarge(ServingError):
    """The body or the audio is longer than the configured limit."""

    status_code = 413
    reason = "too_large"


class ModelError(ServingError):
    """The model raised while running the request; only that request fails."""

    status_code = 500
    reason = "model_error"


class PoolSaturated(ServingError):
    """Every pool is at capacity; the request is shed."""

    status_code = 503
    reason = "shed"


class ModelUnavailable(ServingError):
    """No pool has a healthy replica for the model."""

    status_code = 503
    reason = "unavailable"


class DeadlineExceeded(ServingError):
    """The per-request deadline passed."""

    status_code = 504
    reason = "deadline"
