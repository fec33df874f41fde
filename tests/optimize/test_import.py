"""`sluiceway import` of any ONNX model: signature from the graph, measured and gated on
example or seeded inputs, converted copies gated on closeness, bad files refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from optimize.errors import InputError
from optimize.manifest import EXAMPLES_FILE, TensorFidelity, TensorsSpec, verify_artifact
from optimize.onnx_import import ImportConfig, import_model, index_bounds
from tests.import_models import minilm_three_inputs, silero_inputs, silero_vad, token_model

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def tokens(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return token_model(tmp_path_factory.mktemp("onnx") / "tokens.onnx")


def test_a_multi_input_int64_model_is_imported_measured_and_converted(
    tokens: Path, tmp_path: Path
) -> None:
    output = tmp_path / "tokens"
    built = import_model(
        ImportConfig(
            model=tokens,
            output=output,
            dims={"sequence": 12},
            variants=("fp16", "int8"),  # type: ignore[arg-type]
            latency_runs=5,
            samples=3,
        )
    )
    assert [m.variant for m in built] == ["fp32", "fp16", "int8"]
    for manifest in built:
        assert verify_artifact(output / manifest.variant) == manifest  # files, gates
        spec = manifest.input
        assert isinstance(spec, TensorsSpec)
        assert [(t.name, t.datatype, t.shape) for t in spec.inputs] == [
            ("input_ids", "INT64", ["batch", "sequence"]),
            ("attention_mask", "INT64", ["batch", "sequence"]),
        ]
        assert [t.name for t in spec.outputs] == ["logits", "pooled"]
        assert spec.example_shapes == {"input_ids": [1, 12], "attention_mask": [1, 12]}
        assert manifest.measurements.latency.p50_s > 0
        assert manifest.measurements.throughput.batch == 8  # batch axis free: stacked
        assert manifest.measurements.peak_rss_bytes > 10 * 2**20
        assert isinstance(manifest.fidelity, TensorFidelity)
        assert manifest.fidelity.samples == 3 and manifest.fidelity.nonfinite_outputs == 0
    # the converted copies are gated on how close they stay to the imported model
    fp16, int8 = built[1], built[2]
    assert {g.name for g in fp16.gates} == {"min_cosine", "max_nonfinite_outputs"}
    assert isinstance(int8.fidelity, TensorFidelity) and int8.fidelity.min_cosine >= 0.99
    assert fp16.pool == "gpu" and int8.pool == "cpu"


def test_a_stateful_third_party_model_is_measured_on_its_example_inputs(
    tmp_path: Path,
) -> None:
    first = silero_inputs(1)[0] | {"state": np.zeros((2, 1, 128), np.float32)}
    np.savez(tmp_path / "chunk.npz", **first)
    output = tmp_path / "vad"
    (manifest,) = import_model(
        ImportConfig(
            model=silero_vad(),
            output=output,
            example_inputs=(tmp_path / "chunk.npz",),
            latency_runs=5,
        )
    )
    spec = manifest.input
    assert isinstance(spec, TensorsSpec)
    assert {t.name: t.datatype for t in spec.inputs} == {
        "input": "FP32",
        "state": "FP32",
        "sr": "INT64",
    }
    assert spec.example_shapes == {"input": [1, 512], "state": [2, 1, 128], "sr": []}
    assert manifest.measurements.throughput.batch == 1  # state and sr have no batch axis
    assert manifest.accepted
    with np.load(output / "fp32" / EXAMPLES_FILE) as kept:  # the replica warms up on these
        assert int(kept["sr"]) == 16000


@pytest.mark.slow
def test_seeded_ids_stay_within_the_tables_a_real_text_encoder_gathers_from(
    tmp_path: Path,
) -> None:
    """The real all-MiniLM-L6-v2 with ``token_type_ids``: seeded ids of 0-9 there fell
    outside its 2-row token type table and the import failed; they are kept below it."""
    model = minilm_three_inputs(tmp_path / "minilm.onnx")
    built = import_model(
        ImportConfig(model=model, output=tmp_path / "minilm", latency_runs=5, samples=3)
    )
    fidelity = built[0].fidelity
    assert isinstance(fidelity, TensorFidelity) and fidelity.nonfinite_outputs == 0
    assert index_bounds(model, built[0].input.inputs) == {  # type: ignore[union-attr]
        "input_ids": 30522,  # the vocabulary
        "token_type_ids": 2,
    }


def test_dims_with_example_inputs_are_refused_not_ignored(tmp_path: Path) -> None:
    np.savez(tmp_path / "one.npz", **silero_inputs(1)[0])
    config = ImportConfig(
        model=silero_vad(),
        output=tmp_path / "vad",
        example_inputs=(tmp_path / "one.npz",),
        dims={"batch": 4},
    )
    with pytest.raises(InputError, match=r"--dim \['batch'\]: sizes are for seeded inputs"):
        import_model(config)
    assert not (tmp_path / "vad").exists()


def test_example_inputs_that_do_not_match_are_refused_naming_the_input(
    tmp_path: Path,
) -> None:
    wrong = silero_inputs(1)[0] | {"state": np.zeros((3, 1, 128), np.float32)}
    np.savez(tmp_path / "wrong.npz", **wrong)
    config = ImportConfig(
        model=silero_vad(), output=tmp_path / "vad", example_inputs=(tmp_path / "wrong.npz",)
    )
    with pytest.raises(InputError, match="input 'state' has 3 on axis 0; the model fixes it at 2"):
        import_model(config)
    np.savez(tmp_path / "short.npz", **silero_inputs(1)[0])
    with pytest.raises(InputError, match=r"no array for input\(s\) \['state'\]"):
        import_model(config.model_copy(update={"example_inputs": (tmp_path / "short.npz",)}))
    assert not (tmp_path / "vad").exists() and not list(tmp_path.glob(".vad.tmp-*"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not a model at all", "is not a valid ONNX model"),
        (b"", "is not a valid ONNX model"),
    ],
)
def test_a_corrupt_or_non_onnx_file_is_refused_with_one_error(
    content: bytes, message: str, tmp_path: Path
) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(content)
    with pytest.raises(InputError, match=message):
        import_model(ImportConfig(model=bad, output=tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_truncated_model_is_refused(tokens: Path, tmp_path: Path) -> None:
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(tokens.read_bytes()[: tokens.stat().st_size // 2])
    with pytest.raises(InputError, match="cut.onnx"):
        import_model(ImportConfig(model=cut, output=tmp_path / "out"))


def test_the_imported_model_answers_like_the_original(tokens: Path, tmp_path: Path) -> None:
    import_model(ImportConfig(model=tokens, output=tmp_path / "t", latency_runs=5, samples=2))
    feeds = {
        "input_ids": np.array([[1, 2, 3, 4]], np.int64),
        "attention_mask": np.array([[1, 1, 1, 0]], np.int64),
    }
    ours = ort.InferenceSession(str(tmp_path / "t" / "fp32" / "model.onnx")).run(None, feeds)
    theirs = ort.InferenceSession(str(tokens)).run(None, feeds)
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_bool_and_fp16_tensors_are_imported_and_measured(tmp_path: Path) -> None:
    from tests.import_models import flag_model

    (manifest,) = import_model(
        ImportConfig(
            model=flag_model(tmp_path / "flags.onnx"), output=tmp_path / "f", latency_runs=5
        )
    )
    spec = manifest.input
    assert isinstance(spec, TensorsSpec)
    assert [(t.name, t.datatype) for t in spec.inputs] == [("x", "FP16"), ("flag", "BOOL")]
    assert [(t.name, t.datatype) for t in spec.outputs] == [("y", "FP16"), ("total", "FP32")]
    assert manifest.precision.value == "fp16" and manifest.accepted
    with np.load(tmp_path / "f" / "fp16" / EXAMPLES_FILE) as kept:
        assert kept["flag"].dtype == np.bool_ and kept["x"].dtype == np.float16
