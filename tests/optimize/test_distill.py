"""A student distilled from the tiny preset: shape and initialisation from the teacher,
deterministic and resumable training, the export + int8 path with its own gates, and a
student that failed its gates refused by serving's loader."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from optimize.checkpoint import build_preset
from optimize.distill import STUDENT_VARIANT, StudentRecipe, distill, make_student
from optimize.errors import GatesFailed
from optimize.manifest import read_manifest
from optimize.pipeline import OptimizeConfig, build_artifacts

TINY = StudentRecipe(layer_stride=2, conv_keep=0.5, steps=6, batch_size=4, checkpoint_every=3)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return build_preset("wav2vec2-tiny", tmp_path_factory.mktemp("teacher"), seed=0)


def test_the_student_keeps_every_kth_layer_and_the_strongest_conv_channels(teacher) -> None:  # type: ignore[no-untyped-def]
    recipe = StudentRecipe(layer_stride=2, conv_keep=0.5)
    student = make_student(teacher.model, recipe)
    assert recipe.teacher_layers(2) == [1]
    assert student.config.num_hidden_layers == 1
    assert student.config.conv_dim == [16, 16, 16, 16]
    t, s = teacher.model.state_dict(), student.state_dict()
    key = "wav2vec2.encoder.layers.{}.attention.q_proj.weight"
    assert torch.equal(s[key.format(0)], t[key.format(1)])  # student layer 0 = teacher 1
    conv = "wav2vec2.feature_extractor.conv_layers.0.conv.weight"
    kept_norms = s[conv].abs().sum(dim=(1, 2))
    all_norms = t[conv].abs().sum(dim=(1, 2))
    assert torch.allclose(kept_norms.sort().values, all_norms.sort().values[-16:])
    assert StudentRecipe(layer_stride=4).teacher_layers(12) == [3, 7, 11]


def test_training_is_deterministic_and_resumes_where_it_stopped(teacher, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    once, report = distill(teacher, TINY, tmp_path / "a")
    assert report.steps == 6 and report.resumed_from == 0
    half = TINY.model_copy(update={"steps": 3})
    distill(teacher, half, tmp_path / "b")  # stopped after 3 steps, checkpoint left behind
    resumed, report_b = distill(teacher, TINY, tmp_path / "b")
    assert report_b.resumed_from == 3 and report_b.steps == 6
    for (name, a), (_, b) in zip(
        once.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b, atol=1e-5), name


def test_student_int8_artifact_records_its_teacher_and_failed_gates_refuse_it(
    tmp_path: Path,
) -> None:
    config = OptimizeConfig(
        model="wav2vec2-tiny",
        output=tmp_path / "tiny",
        variants=(),
        seconds=1.0,
        eval_clips=24,
        calibration_clips=4,
        latency_runs=5,
        candidate_runs=3,
        int8_recipes=("dynamic-matmul-s8",),
        student=TINY,
        # an agreement no student of 6 steps reaches: the artifact is written, rejected
        gate_overrides={None: {"min_top1_agreement": 1.0, "min_logit_cosine": 0.99999}},
    )
    with pytest.raises(GatesFailed, match=STUDENT_VARIANT):
        build_artifacts(config)
    directory = tmp_path / "tiny" / STUDENT_VARIANT
    manifest = read_manifest(directory)
    assert manifest.variant == STUDENT_VARIANT and manifest.pool == "cpu"
    assert any(
        "knowledge distillation" in step and manifest.source.sha256 in step
        for step in manifest.recipe.steps
    )
    assert manifest.fidelity.clips == 24
    assert not manifest.accepted

    from optimize.errors import ArtifactError
    from optimize.manifest import artifact_digest
    from serving.config import ArtifactRef, PoolConfig
    from serving.replica import load_variant

    ref = ArtifactRef(uri=str(directory), sha256=artifact_digest(directory))
    with pytest.raises(ArtifactError, match="gate"):
        load_variant(ref, PoolConfig())
