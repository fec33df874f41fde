"""The bearer token at start-up: an empty one is refused, never compared with an empty bearer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.auth import read_token
from serving.config import ServingConfig
from serving.errors import ConfigError


def config(auth: dict[str, Any]) -> ServingConfig:
    return ServingConfig.model_validate(
        {
            "models": {
                "m": {
                    "variants": {
                        "v": {
                            "weight": 100,
                            "artifacts": {"cpu": {"uri": "/a", "sha256": "0" * 64}},
                        }
                    },
                    "routing": {"pools": ["cpu"], "slo_p99_seconds": 1},
                }
            },
            "pools": {"cpu": {}},
            "auth": auth,
        }
    )


def test_the_token_comes_from_the_variable_then_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "token"
    path.write_text("from-file\n")
    monkeypatch.setenv("SW_TOKEN", " from-env ")
    assert read_token(config({"token_env": "SW_TOKEN", "token_file": str(path)})) == "from-env"
    monkeypatch.delenv("SW_TOKEN")
    assert read_token(config({"token_env": "SW_TOKEN", "token_file": str(path)})) == "from-file"
    assert read_token(config({})) is None


@pytest.mark.parametrize("value", ["", "   ", "\n\t\n"])
def test_an_empty_or_blank_token_is_refused_at_start_up(
    value: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SW_TOKEN", value)
    with pytest.raises(ConfigError, match="environment variable SW_TOKEN is empty"):
        read_token(config({"token_env": "SW_TOKEN"}))
    path = tmp_path / "token"
    path.write_text(value)
    with pytest.raises(ConfigError, match=f"token file {path} is empty"):
        read_token(config({"token_file": str(path)}))


def test_a_token_that_is_not_there_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SW_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="SW_TOKEN is not set"):
        read_token(config({"token_env": "SW_TOKEN"}))
    with pytest.raises(ConfigError, match="cannot read token file"):
        read_token(config({"token_file": str(tmp_path / "missing")}))
