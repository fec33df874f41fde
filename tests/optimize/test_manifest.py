"""The manifest contract: serving reads artifacts without torch, and refuses bad ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from optimize.errors import (
    ArtifactHashMismatch,
    ArtifactNotFound,
    ArtifactRejected,
    ManifestInvalid,
)
from optimize.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    artifact_digest,
    read_manifest,
    verify_artifact,
)


def test_manifest_imports_without_torch_or_onnxruntime() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'onnxruntime', 'onnx', 'transformers'):\n"
        "    sys.modules[name] = None  # any import of these now fails\n"
        "import optimize.manifest, optimize.gates, optimize.errors, serving, deploy\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_the_serving_image_modules_import_without_torch_or_transformers() -> None:
    """What runs in the serving image (no torch, no transformers; ONNX Runtime and Ray
    there): the ingress, the replica, the artifact fetch, the entrypoint and the router."""
    code = (
        "import importlib.abc, sys\n"
        "class Absent(importlib.abc.MetaPathFinder):  # as if not installed (scipy probes\n"
        "    def find_spec(self, name, path, target=None):  # sys.modules for torch)\n"
        "        if name.split('.')[0] in ('torch', 'transformers', 'onnx'):\n"
        "            raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Absent())\n"
        "import serving.app, serving.replica, serving.fetch, serving.entrypoint\n"
        "import serving.routing.router, serving.server, simulate\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "ok"


@pytest.fixture
def artifact(tiny_artifacts: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "int8"
    shutil.copytree(tiny_artifacts / "int8", copy)
    return copy


@pytest.mark.slow
def test_verify_accepts_a_good_artifact(artifact: Path) -> None:
    manifest = verify_artifact(artifact, expected_sha256=artifact_digest(artifact))
    assert manifest.accepted
    assert manifest.precision == "int8"


@pytest.mark.slow
def test_verify_refuses_a_changed_model_file(artifact: Path) -> None:
    with (artifact / MODEL_FILE).open("r+b") as handle:
        handle.seek(100)
        byte = handle.read(1)
        handle.seek(100)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ArtifactHashMismatch, match=r"model\.onnx.*does not match"):
        verify_artifact(artifact)


@pytest.mark.slow
def test_verify_refuses_an_unexpected_digest(artifact: Path) -> None:
    with pytest.raises(ArtifactHashMismatch, match="expected 0+"):
        verify_artifact(artifact, expected_sha256="0" * 64)
    # the model file untouched, the labels swapped: another artifact as far as serving goes
    pinned = artifact_digest(artifact)
    raw = json.loads((artifact / MANIFEST_FILE).read_text())
    raw["input"]["labels"] = raw["input"]["labels"][::-1]
    (artifact / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactHashMismatch, match="its manifest was changed"):
        verify_artifact(artifact, expected_sha256=pinned)


@pytest.mark.slow
def test_verify_refuses_an_artifact_that_failed_its_gates(artifact: Path) -> None:
    raw = json.loads((artifact / MANIFEST_FILE).read_text())
    raw["gates"][0]["passed"] = False
    (artifact / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactRejected, match=raw["gates"][0]["name"]):
        verify_artifact(artifact)


@pytest.mark.slow
def test_an_edited_verdict_or_escaping_path_is_not_trusted(artifact: Path) -> None:
    raw = json.loads((artifact / MANIFEST_FILE).read_text())
    gate = raw["gates"][0]  # min_top1_agreement: make the value fail but claim it passed
    gate["value"], gate["passed"] = 0.5, True
    (artifact / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactRejected, match="min_top1_agreement"):
        verify_artifact(artifact)
    raw["gates"] = []
    (artifact / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ArtifactRejected, match="no quality gate"):
        verify_artifact(artifact)
    raw["files"][0]["path"] = "../../etc/passwd"
    (artifact / MANIFEST_FILE).write_text(json.dumps(raw))
    with pytest.raises(ManifestInvalid, match="lies outside it"):
        verify_artifact(artifact)


def test_missing_and_invalid_manifests_are_named(tmp_path: Path) -> None:
    with pytest.raises(ArtifactNotFound, match="no manifest.json"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ManifestInvalid, match="not valid JSON"):
        read_manifest(tmp_path)
    (tmp_path / MANIFEST_FILE).write_text(json.dumps({"variant": "int8"}))
    with pytest.raises(ManifestInvalid, match="field 'precision'"):
        read_manifest(tmp_path)
