"""schemathesis hooks for the API fuzz run (loaded by name through SCHEMATHESIS_HOOKS)."""

from __future__ import annotations

from typing import Any

import schemathesis


@schemathesis.check
def no_server_error_but_overload(ctx: Any, response: Any, case: Any) -> None:
    """A 5xx is a bug unless it is an overload (503) or a deadline (504)."""
    if response.status_code >= 500 and response.status_code not in (503, 504):
        raise AssertionError(f"{response.status_code}: {response.text[:300]}")


@schemathesis.serializer("audio/wav", "audio/flac", "audio/l16", "audio/pcm-f32le")
def audio(ctx: Any, value: Any) -> bytes:
    """Uploads are bytes as generated (the server must refuse what is not audio)."""
    return value if isinstance(value, bytes) else str(value).encode()
