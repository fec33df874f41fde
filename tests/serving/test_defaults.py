from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from optimize.manifest import artifact_digest
from serving.defaults import config_for_artifacts, gpu_visible
from serving.errors import ConfigError


@pytest.mark.slow
def test_default_config_serves_int8_on_cpu_and_fp16_on_gpu_when_there_is_one(
    tiny_artifacts: Path,
) -> None:
    cpu_only = config_for_artifacts(tiny_artifacts, gpu=False, port=9000)
    model = cpu_only.models["tiny"]
    assert model.routing.pools == ["cpu"]
    ref = model.variants["default"].artifacts["cpu"]
    assert ref.local_path() == (tiny_artifacts / "int8").resolve()
    assert ref.sha256 == artifact_digest(tiny_artifacts / "int8")
    assert cpu_only.http.port == 9000
    # One machine: CPU inference yields to the proxy and ingress (nice), the GPU pool's
    # threads mostly wait on the device and keep normal priority.
    assert cpu_only.pools["cpu"].nice > 0
    with_gpu = config_for_artifacts(tiny_artifacts, gpu=True)
    assert with_gpu.models["tiny"].routing.pools == ["gpu", "cpu"]
    assert with_gpu.pools["gpu"].device == "cuda"
    assert with_gpu.pools["gpu"].nice == 0 < with_gpu.pools["cpu"].nice
    assert with_gpu.models["tiny"].variants["default"].artifacts["gpu"].uri.endswith("fp16")


@pytest.mark.slow
def test_a_directory_without_the_artifact_is_named(tiny_artifacts: Path, tmp_path: Path) -> None:
    partial = tmp_path / "partial"
    (partial / "source").mkdir(parents=True)
    with pytest.raises(ConfigError, match=r"partial/int8 is not an artifact"):
        config_for_artifacts(partial, gpu=False)
    # fp32 alone (an import without --variants): both pools serve it
    shutil.copytree(tiny_artifacts / "fp32", partial / "fp32")
    config = config_for_artifacts(partial, gpu=True)
    artifacts = config.models["partial"].variants["default"].artifacts
    assert {pool: Path(ref.uri).name for pool, ref in artifacts.items()} == {
        "gpu": "fp32",
        "cpu": "fp32",
    }


@pytest.mark.slow
def test_the_cpu_pool_serves_the_student_when_it_passed_its_gates(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    import json

    built = tmp_path / "built"
    shutil.copytree(tiny_artifacts, built)
    shutil.copytree(tiny_artifacts / "int8", built / "student-int8")  # stands for a student
    ref = config_for_artifacts(built, gpu=False).models["built"].variants["default"]
    assert ref.artifacts["cpu"].uri.endswith("student-int8")
    manifest = json.loads((built / "student-int8" / "manifest.json").read_text())
    manifest["gates"][0]["threshold"] = 1.5  # now no value can pass it: rejected
    (built / "student-int8" / "manifest.json").write_text(json.dumps(manifest))
    ref = config_for_artifacts(built, gpu=False).models["built"].variants["default"]
    assert ref.artifacts["cpu"].uri.endswith("/int8")


@pytest.mark.parametrize(
    ("visible", "device_file", "usable"),
    [
        (None, True, True),
        (None, False, False),
        ("0", False, True),  # a container may expose the GPU without /dev/nvidia0 here
        ("GPU-5d1c2b3a", False, True),
        ("1,0", True, True),
        ("-1", True, False),  # the usual way to hide every GPU
        ("", True, False),
        (" -1,0", True, False),  # CUDA stops at the first invalid entry
    ],
)
def test_cuda_visible_devices_hides_or_names_gpus(
    visible: str | None, device_file: bool, usable: bool
) -> None:
    assert gpu_visible(visible, device_file) is usable
