"""Chart values made from real tiny artifacts, rendered by the real `helm template` and
validated against the strict KubeRay RayService schema (and the Kubernetes schemas for the
other objects). No Kubernetes API server runs here: nothing is applied. Tests using the
session's tiny artifacts (built once by the real optimize pipeline) are marked slow."""

from __future__ import annotations

import hashlib
import math
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from deploy.errors import InvalidValues
from deploy.helm import DEFAULT_CHART, Helm
from deploy.values import (
    CHART_DEFAULT_WORKER_GROUPS,
    PoolArtifact,
    add_variant,
    chart_values,
    parse_memory_bytes,
    rebalance_weights,
    slo_origin,
    write_values,
)
from optimize.manifest import MANIFEST_FILE, read_manifest
from serving.config import config_from_application, parse_config
from tests.charts.test_chart import SCHEMAS, schema_errors

PREFIX = "https://models.example.com/w2v"


@pytest.fixture(scope="module")
def helm() -> Helm:
    return Helm.find()


def gpu_cpu(artifacts: Path, **cpu: Any) -> dict[str, PoolArtifact]:
    # cpu given first on purpose: routing must still put the GPU pool first
    return {
        "cpu": PoolArtifact(artifact=artifacts / "int8", device="cpu", threads=2, **cpu),
        "gpu": PoolArtifact(artifact=artifacts / "fp16", device="cuda", max_replicas=2),
    }


@pytest.fixture
def values(tiny_artifacts: Path) -> dict[str, Any]:
    return chart_values("w2v", gpu_cpu(tiny_artifacts), uri_prefix=PREFIX)


def render(helm: Helm, path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(helm.template("demo", DEFAULT_CHART, [path], "ml")) if d]


def rayservice(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (service,) = [d for d in docs if d["kind"] == "RayService"]
    return service


@pytest.mark.slow
def test_artifacts_carry_the_artifact_digest_and_the_uri_under_the_prefix(
    values: dict[str, Any], tiny_artifacts: Path
) -> None:
    model = values["serving"]["models"]["w2v"]
    refs = model["variants"]["stable"]["artifacts"]
    for pool, name in (("gpu", "fp16"), ("cpu", "int8")):
        # the whole artifact is pinned: its manifest, which pins every file in turn
        digest = hashlib.sha256((tiny_artifacts / name / MANIFEST_FILE).read_bytes()).hexdigest()
        assert refs[pool] == {"uri": f"{PREFIX}/{name}", "sha256": digest}
    assert model["variants"]["stable"]["weight"] == 100
    assert model["routing"]["pools"] == ["gpu", "cpu"]  # GPU first, whatever the order given
    config = parse_config(values["serving"])
    assert config.pools["gpu"].device == "cuda" and config.pools["gpu"].num_gpus == 1
    assert config.pools["gpu"].batching is not None and config.pools["cpu"].batching is None
    assert config.pools["cpu"].resources == {"pool-cpu": 1}
    # a CPU pod's two CPUs run two model calls of one thread each
    cpu = config.pools["cpu"]
    assert (cpu.threads, cpu.max_ongoing_requests, cpu.num_cpus) == (1, 2, 2)


@pytest.mark.slow
def test_memory_is_the_measured_peak_rss_plus_ray_baseline_plus_headroom(
    values: dict[str, Any], tiny_artifacts: Path
) -> None:
    for pool, name in (("gpu", "fp16"), ("cpu", "int8")):
        rss = read_manifest(tiny_artifacts / name).measurements.peak_rss_bytes
        mib = math.ceil((2**30 + rss) * 1.5 / 2**20)
        assert 1536 < mib < 1536 + 1.5 * rss / 2**20 + 1  # 1 GiB baseline x 1.5, plus the RSS
        resources = values["workerGroups"][pool]["resources"]
        assert resources["requests"]["memory"] == resources["limits"]["memory"] == f"{mib}Mi"
    cpu_group = values["workerGroups"]["cpu"]
    assert cpu_group["resources"]["limits"]["cpu"] == "2" and cpu_group["gpus"] == 0
    assert values["workerGroups"]["gpu"]["gpus"] == 1
    assert values["workerGroups"]["gpu"]["maxReplicas"] == 2


@pytest.mark.slow
def test_headroom_and_threads_default_from_the_manifest(tiny_artifacts: Path) -> None:
    pools = {"cpu": PoolArtifact(artifact=tiny_artifacts / "int8", device="cpu")}
    values = chart_values("w2v", pools, uri_prefix=None, headroom=0.0)
    manifest = read_manifest(tiny_artifacts / "int8")
    rss = manifest.measurements.peak_rss_bytes
    limits = values["workerGroups"]["cpu"]["resources"]["limits"]
    assert limits["memory"] == f"{math.ceil((2**30 + rss) / 2**20)}Mi"
    assert limits["cpu"] == str(manifest.measurements.latency.threads)
    ref = values["serving"]["models"]["w2v"]["variants"]["stable"]["artifacts"]["cpu"]
    assert ref["uri"] == str((tiny_artifacts / "int8").resolve())  # no prefix: local path


@pytest.mark.slow
def test_slo_defaults_to_twice_the_preferred_pools_p99_rounded_up_to_10_ms(
    values: dict[str, Any], tiny_artifacts: Path
) -> None:
    p99 = read_manifest(tiny_artifacts / "fp16").measurements.latency.p99_s  # the GPU pool's
    slo = values["serving"]["models"]["w2v"]["routing"]["slo_p99_seconds"]
    assert slo == math.ceil(p99 * 2 * 100 - 1e-9) / 100
    assert slo >= 2 * p99 and slo - 2 * p99 < 0.01
    given = chart_values("w2v", gpu_cpu(tiny_artifacts), uri_prefix=PREFIX, slo_p99_seconds=0.3)
    assert given["serving"]["models"]["w2v"]["routing"]["slo_p99_seconds"] == 0.3


def test_the_user_is_told_which_figure_the_slo_came_from_and_when_to_distrust_it(
    values: dict[str, Any], tiny_artifacts: Path
) -> None:
    slo = values["serving"]["models"]["w2v"]["routing"]["slo_p99_seconds"]
    latency = read_manifest(tiny_artifacts / "fp16").measurements.latency
    said = slo_origin(gpu_cpu(tiny_artifacts), None)
    assert said.startswith(f"SLO {slo:g} s: 2x the P99 of pool gpu's artifact fp16 (")
    assert f"{latency.p99_s * 1e3:.0f} ms over {latency.runs} runs" in said
    # the fp16 artifact was timed here, on the CPU: not what a GPU pool will see
    assert "measured on CPUExecutionProvider, not the GPU this pool runs on" in said
    assert said.endswith("pass --slo-p99-seconds")
    assert slo_origin(gpu_cpu(tiny_artifacts), 0.3) == "SLO 0.3 s: given (--slo-p99-seconds)"


@pytest.mark.slow
def test_written_values_render_and_every_object_validates(
    values: dict[str, Any], helm: Helm, tmp_path: Path
) -> None:
    assert (SCHEMAS / "kuberay" / "rayservice-v1.strict.schema.json").is_file()
    path = write_values(values, tmp_path / "out" / "values.yaml", helm)
    assert yaml.safe_load(path.read_text()) == values
    assert [p.name for p in path.parent.iterdir()] == ["values.yaml"]  # no temp file left
    docs = render(helm, path)
    for doc in docs:
        assert schema_errors(doc) == [], (doc["kind"], doc["metadata"]["name"])
    service = rayservice(docs)
    groups = {g["groupName"]: g for g in service["spec"]["rayClusterConfig"]["workerGroupSpecs"]}
    assert set(groups) == {"gpu", "cpu"}
    limits = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["memory"] == values["workerGroups"]["gpu"]["resources"]["limits"]["memory"]
    assert limits["nvidia.com/gpu"] == 1
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    config = config_from_application(app, "rendered")
    assert config.models["w2v"].variants["stable"].artifacts["gpu"].uri.startswith(PREFIX)


@pytest.mark.slow
def test_a_gpu_only_pool_list_drops_the_charts_default_cpu_group(
    tiny_artifacts: Path, helm: Helm, tmp_path: Path
) -> None:
    chart_defaults = yaml.safe_load((DEFAULT_CHART / "values.yaml").read_text())
    assert tuple(chart_defaults["workerGroups"]) == CHART_DEFAULT_WORKER_GROUPS
    pools = {"gpu": PoolArtifact(artifact=tiny_artifacts / "fp16", device="cuda")}
    values = chart_values("w2v", pools, uri_prefix="/artifacts/w2v")
    assert values["workerGroups"]["cpu"] is None
    docs = render(helm, write_values(values, tmp_path / "values.yaml", helm))
    groups = rayservice(docs)["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert [g["groupName"] for g in groups] == ["gpu"]
    for doc in docs:
        assert schema_errors(doc) == [], (doc["kind"], doc["metadata"]["name"])


@pytest.mark.slow
def test_add_variant_rebalances_weights_to_100_and_still_validates(
    values: dict[str, Any], tiny_artifacts: Path, helm: Helm, tmp_path: Path
) -> None:
    canary_pools = {
        "gpu": PoolArtifact(artifact=tiny_artifacts / "fp32", device="cuda"),
        "cpu": PoolArtifact(artifact=tiny_artifacts / "int8", device="cpu"),
    }
    with_canary = add_variant(values, "w2v", "canary", canary_pools, 10, uri_prefix=PREFIX)
    variants = with_canary["serving"]["models"]["w2v"]["variants"]
    assert {n: v["weight"] for n, v in variants.items()} == {"stable": 90, "canary": 10}
    assert variants["canary"]["artifacts"]["gpu"]["uri"] == f"{PREFIX}/fp32"
    assert values["serving"]["models"]["w2v"]["variants"]["stable"]["weight"] == 100  # a copy
    assert with_canary["workerGroups"] == values["workerGroups"]  # Serve updates in place
    stepped = add_variant(with_canary, "w2v", "canary", canary_pools, 50, uri_prefix=PREFIX)
    weights = {n: v["weight"] for n, v in stepped["serving"]["models"]["w2v"]["variants"].items()}
    assert weights == {"stable": 50, "canary": 50}
    third = add_variant(stepped, "w2v", "b", canary_pools, 33, uri_prefix=PREFIX)
    weights = {n: v["weight"] for n, v in third["serving"]["models"]["w2v"]["variants"].items()}
    assert weights == {"stable": 34, "canary": 33, "b": 33}
    for doc in render(helm, write_values(third, tmp_path / "values.yaml", helm)):
        assert schema_errors(doc) == [], (doc["kind"], doc["metadata"]["name"])


@pytest.mark.parametrize(
    ("current", "weight", "expected"),
    [
        ({"stable": 100}, 10, {"stable": 90, "new": 10}),
        ({"stable": 70, "old": 30}, 20, {"stable": 56, "old": 24, "new": 20}),
        ({"a": 1, "b": 1, "c": 1}, 0, {"a": 34, "b": 33, "c": 33, "new": 0}),
        ({"stable": 100}, 100, {"stable": 0, "new": 100}),
        ({"new": 100}, 100, {"new": 100}),
    ],
)
def test_rebalance_weights_always_sums_to_100(
    current: dict[str, int], weight: int, expected: dict[str, int]
) -> None:
    result = rebalance_weights(current, "new", weight)
    assert result == expected and sum(result.values()) == 100


@pytest.mark.parametrize(
    ("current", "weight", "message"),
    [
        ({"stable": 100}, 120, "weight 120 is not a percentage"),
        ({"stable": 100}, -5, "weight -5 is not a percentage"),
        ({"new": 100}, 60, "cannot sum to 100"),  # replacing the only variant
        ({"stable": 0, "new": 100}, 40, "cannot sum to 100"),
    ],
)
def test_weights_that_cannot_sum_to_100_are_refused(
    current: dict[str, int], weight: int, message: str
) -> None:
    with pytest.raises(InvalidValues, match=message):
        rebalance_weights(current, "new", weight)


@pytest.mark.slow
def test_add_variant_refuses_what_would_not_run(
    tiny_artifacts: Path, values: dict[str, Any]
) -> None:
    int8 = PoolArtifact(artifact=tiny_artifacts / "int8", device="cpu")
    fp16 = PoolArtifact(artifact=tiny_artifacts / "fp16", device="cuda")
    with pytest.raises(InvalidValues, match=r"weight 120 is not a percentage"):
        add_variant(values, "w2v", "canary", {"gpu": fp16, "cpu": int8}, 120)
    with pytest.raises(InvalidValues, match=r"model 'bert' is not in the values"):
        add_variant(values, "bert", "canary", {"cpu": int8}, 10)
    with pytest.raises(InvalidValues, match=r"pool 'edge' is not in serving.pools"):
        add_variant(values, "w2v", "canary", {"edge": int8}, 10)
    with pytest.raises(InvalidValues, match=r"pool 'cpu' is a cpu pool .* given for cuda"):
        add_variant(values, "w2v", "canary", {"cpu": fp16, "gpu": fp16}, 10)
    with pytest.raises(InvalidValues, match=r"variant 'canary' has no artifact for pool.*gpu"):
        add_variant(values, "w2v", "canary", {"cpu": int8}, 10)
    snug = chart_values("w2v", gpu_cpu(tiny_artifacts), uri_prefix=PREFIX, headroom=0.0)
    with pytest.raises(InvalidValues, match=r"does not fit beside the current variants"):
        add_variant(snug, "w2v", "canary", {"gpu": fp16, "cpu": int8}, 10, headroom=0.0)


@pytest.mark.slow
def test_an_artifact_without_a_manifest_is_refused_naming_the_pool(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "int8"
    shutil.copytree(tiny_artifacts / "int8", broken)
    (broken / MANIFEST_FILE).unlink()
    pools = {"cpu": PoolArtifact(artifact=broken, device="cpu")}
    with pytest.raises(InvalidValues, match=rf"pool 'cpu': no {MANIFEST_FILE} in {broken}"):
        chart_values("w2v", pools, uri_prefix=PREFIX)
    with pytest.raises(InvalidValues, match=r"no pools given"):
        chart_values("w2v", {}, uri_prefix=PREFIX)
    with pytest.raises(InvalidValues, match=r"headroom -0.5"):
        chart_values("w2v", gpu_cpu(tiny_artifacts), uri_prefix=PREFIX, headroom=-0.5)
    with pytest.raises(ValueError, match=r"min_replicas \(3\) must not exceed max_replicas \(2\)"):
        PoolArtifact(artifact=broken, device="cpu", min_replicas=3, max_replicas=2)


@pytest.mark.slow
def test_a_bad_variant_name_is_refused_with_its_field_path(tiny_artifacts: Path) -> None:
    with pytest.raises(InvalidValues, match=r"values: serving: models\.w2v\.variants\.Stable"):
        chart_values("w2v", gpu_cpu(tiny_artifacts), uri_prefix=PREFIX, variant="Stable")


@pytest.mark.slow
def test_values_that_helm_refuses_are_not_written(
    values: dict[str, Any], helm: Helm, tmp_path: Path
) -> None:
    values["workerGroups"]["gpu"]["gpus"] = 0
    target = tmp_path / "values.yaml"
    target.write_text("previous: true\n")
    with pytest.raises(InvalidValues, match=r"serving.pools.gpu is a cuda pool but workerGroups"):
        write_values(values, target, helm)
    assert target.read_text() == "previous: true\n"  # the old file, untouched
    assert [p.name for p in tmp_path.iterdir()] == ["values.yaml"]
    values["serving"]["models"]["w2v"]["variants"]["stable"]["weight"] = 90
    with pytest.raises(InvalidValues, match=r"models\.w2v: .*weights must sum to 100, got 90"):
        write_values(values, target, helm)


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [("1536Mi", 1536 * 2**20), ("2Gi", 2 * 2**30), ("4G", 4 * 10**9), (1024, 1024), ("1e9", 10**9)],
)
def test_memory_quantities(quantity: str | int, expected: int) -> None:
    assert parse_memory_bytes(quantity) == expected


def test_a_memory_quantity_that_is_not_one_is_refused() -> None:
    with pytest.raises(InvalidValues, match=r"'4GB' is not a Kubernetes quantity"):
        parse_memory_bytes("4GB")


@pytest.mark.slow
def test_an_imported_model_gets_values_that_render_and_validate(helm: Helm, tmp_path: Path) -> None:
    import numpy as np

    from optimize.onnx_import import ImportConfig, import_model
    from tests.import_models import silero_inputs, silero_vad

    np.savez(tmp_path / "chunk.npz", **silero_inputs(1)[0], state=np.zeros((2, 1, 128), "f4"))
    import_model(
        ImportConfig(
            model=silero_vad(),
            output=tmp_path / "vad",
            example_inputs=(tmp_path / "chunk.npz",),
            latency_runs=5,
        )
    )
    pools = {"cpu": PoolArtifact(artifact=tmp_path / "vad" / "fp32", device="cpu", threads=1)}
    assert "inputs of {'input': [1, 512]" in slo_origin(pools, None)
    values = chart_values("vad", pools, uri_prefix=PREFIX)
    path = write_values(values, tmp_path / "values.yaml", helm)
    for doc in render(helm, path):
        assert schema_errors(doc) == [], (doc["kind"], doc["metadata"]["name"])
