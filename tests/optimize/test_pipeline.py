"""The optimize pipeline end to end on the tiny preset (real torch, ONNX, ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from optimize.audio import synthetic_set
from optimize.checkpoint import build_preset, load_checkpoint
from optimize.errors import CheckpointError, InputError
from optimize.evaluate import fidelity
from optimize.export import export_fp32
from optimize.gates import GateThresholds, judge
from optimize.manifest import MODEL_FILE, Precision, read_manifest, verify_artifact
from optimize.pipeline import OptimizeConfig, build_artifacts
from optimize.quantize import RECIPES_BY_NAME
from optimize.runtime import open_session, run_logits

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_every_variant_is_verified_measured_and_accepted(tiny_artifacts: Path) -> None:
    assert sorted(p.name for p in tiny_artifacts.iterdir()) == ["fp16", "fp32", "int8", "source"]
    for precision in Precision:
        manifest = verify_artifact(tiny_artifacts / precision.value)
        assert manifest.precision == precision
        m = manifest.measurements
        assert m.provider == "CPUExecutionProvider"
        assert 0 < m.latency.p50_s <= m.latency.p95_s <= m.latency.p99_s
        assert m.latency.clip_seconds == 1.0 and m.latency.threads == 2
        assert m.throughput.batch == 8 and m.throughput.clips_per_s > 0
        assert m.peak_rss_bytes > 50 * 2**20
        assert manifest.fidelity.clips == 48
        assert manifest.task is not None and manifest.task.accuracy > 0.8
        # the teacher's decisions are balanced, so agreement means something
        assert max(manifest.fidelity.source_class_share.values()) < 0.8
        assert manifest.input.labels == ["tonal", "noisy"]
    assert read_manifest(tiny_artifacts / "fp16").pool == "gpu"
    assert read_manifest(tiny_artifacts / "int8").pool == "cpu"


def test_int8_records_every_candidate_and_why_one_was_kept(tiny_artifacts: Path) -> None:
    recipe = read_manifest(tiny_artifacts / "int8").recipe
    assert [c.name for c in recipe.candidates] == list(RECIPES_BY_NAME)
    chosen = [c for c in recipe.candidates if c.outcome.startswith("chosen")]
    assert len(chosen) == 1 and chosen[0].name == recipe.quantization
    assert recipe.quantization_reason and recipe.quantization in recipe.quantization_reason
    timed = [c for c in recipe.candidates if c.p50_s is not None]
    assert all(chosen[0].p50_s <= c.p50_s for c in timed if c.outcome.startswith("slower"))


def test_fp16_keeps_fp32_io_and_norms(tiny_artifacts: Path) -> None:
    import onnx

    model = onnx.load(str(tiny_artifacts / "fp16" / MODEL_FILE))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    halves = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert halves, "fp16 artifact holds no fp16 weights"


def test_a_really_wrong_model_fails_the_agreement_gate(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    """An ONNX model of the same architecture but other weights is caught by the gates."""
    source = load_checkpoint(tiny_artifacts / "source")
    wrong = build_preset("wav2vec2-tiny", tmp_path / "wrong", seed=1234)
    with torch.no_grad():  # an honest mistake: the head's classes swapped
        wrong.model.classifier.weight.copy_(source.model.classifier.weight.flip(0))
        wrong.model.classifier.bias.copy_(source.model.classifier.bias.flip(0))
    data = synthetic_set(48, seconds=1.0, sample_rate=16_000, seed=77)
    export_fp32(wrong, tmp_path / "wrong.onnx", data.clips[:1])
    with torch.no_grad():
        reference = source.model(torch.from_numpy(data.clips)).logits.numpy()
    logits = run_logits(open_session(tmp_path / "wrong.onnx", threads=2), data.clips)
    results = judge(
        fidelity(reference, logits, source.labels), GateThresholds.for_precision(Precision.INT8)
    )
    failed = {g.name for g in results if not g.passed}
    assert "min_top1_agreement" in failed
    # ... while the real int8 artifact of the same source passes on the same clips
    good = run_logits(open_session(tiny_artifacts / "int8" / MODEL_FILE, threads=2), data.clips)
    assert all(
        g.passed
        for g in judge(
            fidelity(reference, good, source.labels), GateThresholds.for_precision(Precision.INT8)
        )
    )


def test_existing_output_is_not_overwritten_without_consent(tiny_artifacts: Path) -> None:
    with pytest.raises(InputError, match="already exists.*--overwrite"):
        build_artifacts(OptimizeConfig(model="wav2vec2-tiny", output=tiny_artifacts))


def test_a_corrupt_checkpoint_fails_cleanly_and_leaves_nothing(tmp_path: Path) -> None:
    checkpoint = tmp_path / "ckpt"
    build_preset("wav2vec2-tiny", checkpoint)
    (checkpoint / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    output = tmp_path / "out"
    with pytest.raises(CheckpointError, match="cannot load the weights"):
        build_artifacts(OptimizeConfig(model=str(checkpoint), output=output))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no output, no temp dir


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no-such-preset", "neither a preset"),
        ("{tmp}", "has no config.json"),
    ],
)
def test_bad_model_arguments_are_named(spec: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=message):
        build_artifacts(OptimizeConfig(model=spec.format(tmp=tmp_path), output=tmp_path / "o"))


def test_an_unsupported_architecture_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert", "architectures": ["BertModel"]}')
    with pytest.raises(CheckpointError, match="'bert' is not supported"):
        load_checkpoint(tmp_path)


def test_exported_graph_has_dynamic_batch_and_time(tiny_artifacts: Path) -> None:
    session = open_session(tiny_artifacts / "fp32" / MODEL_FILE, threads=1)
    for shape in [(1, 8000), (3, 20_000)]:
        out = session.run(None, {"input_values": np.zeros(shape, dtype=np.float32)})[0]
        assert out.shape == (shape[0], 2)


def _quick(output: Path, variants: tuple[Precision, ...], **more: object) -> OptimizeConfig:
    return OptimizeConfig(
        model="wav2vec2-tiny",
        output=output,
        variants=variants,
        seconds=1.0,
        eval_clips=24,
        calibration_clips=4,
        latency_runs=5,
        candidate_runs=3,
        int8_recipes=("dynamic-matmul-s8",),
        **more,  # type: ignore[arg-type]
    )


def test_add_builds_only_the_missing_variants_and_keeps_the_others(tmp_path: Path) -> None:
    """What `make serve` does first (int8 alone), then `make artifacts` (the rest)."""
    output = tmp_path / "tiny"
    first = build_artifacts(_quick(output, (Precision.INT8,), add=True))
    assert [b.manifest.variant for b in first] == ["int8"]
    assert sorted(p.name for p in output.iterdir()) == ["int8", "source"]
    int8 = (output / "int8" / "manifest.json").read_bytes()

    added = build_artifacts(_quick(output, (Precision.FP32, Precision.INT8), add=True))
    assert [b.manifest.variant for b in added] == ["fp32"]
    assert sorted(p.name for p in output.iterdir()) == ["fp32", "int8", "source"]
    assert (output / "int8" / "manifest.json").read_bytes() == int8  # untouched
    verify_artifact(output / "fp32")
    assert not list(tmp_path.glob(".tiny.tmp-*"))  # no work directory left behind

    assert build_artifacts(_quick(output, (Precision.INT8,), add=True)) == []


def test_add_refuses_variants_from_another_checkpoint(tmp_path: Path) -> None:
    output = tmp_path / "tiny"
    build_artifacts(_quick(output, (Precision.INT8,)))
    with pytest.raises(InputError, match="different checkpoint"):
        build_artifacts(_quick(output, (Precision.FP32,), add=True, seed=1))
    assert sorted(p.name for p in output.iterdir()) == ["int8", "source"]
    with pytest.raises(InputError, match="pick one"):
        build_artifacts(_quick(output, (Precision.FP32,), add=True, overwrite=True))
