"""The bearer token: read once at start-up, refused when it is empty."""

from __future__ import annotations

import os

from serving.config import ServingShape
from serving.errors import ConfigError


def read_token(config: ServingShape) -> str | None:
    """The token (environment variable first, then file); None when auth is off.

    An empty or whitespace-only token is refused: compared with an empty bearer, it would
    let anyone in.
    """
    auth = config.auth
    if not (auth.token_env or auth.token_file):
        return None
    if auth.token_env and os.environ.get(auth.token_env) is not None:
        source, value = f"environment variable {auth.token_env}", os.environ[auth.token_env]
    elif auth.token_file:
        source = f"token file {auth.token_file}"
        try:
            value = auth.token_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"auth: cannot read {source}: {exc.strerror}") from exc
    else:
        raise ConfigError(
            f"auth: environment variable {auth.token_env} is not set (and no token_file)"
        )
    token = value.strip()
    if not token:
        raise ConfigError(
            f"auth: {source} is empty; put a long random token there (an empty one would "
            "let any request in)"
        )
    return token
