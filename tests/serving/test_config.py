from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from serving.config import ServingConfig, load_config, parse_config
from serving.errors import ConfigError

SHA = "a" * 64


def config(**model: Any) -> dict[str, Any]:
    base = {
        "variants": {
            "stable": {
                "weight": 100,
                "artifacts": {
                    "gpu": {"uri": "/a/fp16", "sha256": SHA},
                    "cpu": {"uri": "/a/int8", "sha256": SHA},
                },
            }
        },
        "routing": {"pools": ["gpu", "cpu"]},
    }
    return {
        "models": {"w2v": base | model},
        "pools": {"gpu": {"device": "cuda", "num_gpus": 1}, "cpu": {}},
    }


def test_a_valid_config_loads_from_yaml(tmp_path: Path) -> None:
    import yaml

    path = tmp_path / "serving.yaml"
    path.write_text(yaml.safe_dump(config()))
    loaded = load_config(path)
    assert isinstance(loaded, ServingConfig)
    assert loaded.models["w2v"].routing.pools == ["gpu", "cpu"]
    assert loaded.http.port == 8000


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda c: c["models"]["w2v"]["variants"]["stable"].update(weight=90),
            "weights must sum to 100",
        ),
        (lambda c: c["pools"]["gpu"].update(num_gpus=0), "a cuda pool needs num_gpus > 0"),
        (lambda c: c["pools"]["cpu"].update(threds=2), "pools.cpu.threds: Extra inputs"),
        (
            lambda c: c["models"]["w2v"]["variants"]["stable"]["artifacts"]["cpu"].pop("sha256"),
            "artifacts.cpu.sha256: Field required",
        ),
        (
            lambda c: (
                c["models"]["w2v"]["routing"].update(pools=["gpu", "tpu"]),
                c["models"]["w2v"]["variants"]["stable"]["artifacts"].update(
                    tpu={"uri": "/a/x", "sha256": SHA}
                ),
            ),
            "undefined pool(s) ['tpu']",
        ),
        (
            lambda c: c["pools"]["cpu"].update(replicas={"min": 3, "max": 2}),
            "min (3) must not exceed max (2)",
        ),
        (
            lambda c: c["pools"]["cpu"].update(replicas={"min": -1, "max": 2}),
            "pools.cpu.replicas.min: Input should be greater than or equal to 0",
        ),
        (
            lambda c: c.update(ingress={"replicas": {"min": 0, "max": 2}}),
            "ingress: Value error, replicas.min must be at least 1",
        ),
        (
            lambda c: c["pools"]["cpu"].update(nice=20),
            "pools.cpu.nice: Input should be less than or equal to 19",
        ),
    ],
)
def test_bad_configs_name_the_field(mutate: Any, message: str) -> None:
    data = config()
    mutate(data)
    with pytest.raises(ConfigError) as info:
        parse_config(data, "serving.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("serving.yaml: ")


def test_unreadable_and_invalid_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read serving config"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_the_serve_application_holds_the_whole_config_and_refuses_a_drifted_one() -> None:
    """`application_config` splits a config into args and user_configs; reading it back
    gives the same config, and a deployment whose user_config disagrees is named."""
    from serving.config import config_from_application
    from serving.server import application_config

    whole = parse_config(config())
    app = application_config(whole)
    assert config_from_application(app, "app") == whole

    drifted = copy.deepcopy(app)
    cpu = next(d for d in drifted["deployments"] if d["name"] == "w2v-cpu")
    cpu["user_config"]["artifacts"]["stable"]["uri"] = "/a/other"
    with pytest.raises(ConfigError, match="deployment 'w2v-cpu' is given artifacts"):
        config_from_application(drifted, "app")

    no_ingress = copy.deepcopy(app)
    no_ingress["deployments"] = no_ingress["deployments"][1:]
    with pytest.raises(ConfigError, match="no user_config for the 'ingress' deployment"):
        config_from_application(no_ingress, "app")


def test_the_builder_refuses_args_that_still_carry_variants() -> None:
    """serveConfigV2 written by hand the old way (variants in args) is named, not built."""
    from serving.entrypoint import app

    with pytest.raises(ConfigError, match=r"serveConfigV2 args: models\.w2v\.variants"):
        app(config())
