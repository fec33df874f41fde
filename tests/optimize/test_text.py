"""A text encoder on real weights: all-MiniLM-L6-v2 to fp32 and int8, its pooling in the
graph, gated on real sentences against PyTorch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from optimize.errors import CheckpointError
from optimize.manifest import TensorFidelity, TextSpec, verify_artifact
from optimize.runtime import open_session
from optimize.text import (
    encode,
    is_text_model,
    load_text_source,
    onnx_embeddings,
    sentences,
    torch_embeddings,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_minilm_int8_keeps_its_embeddings_and_rankings(minilm_artifacts: Path) -> None:
    fp32 = verify_artifact(minilm_artifacts / "fp32")
    int8 = verify_artifact(minilm_artifacts / "int8")  # every gate passed
    for manifest in (fp32, int8):
        spec = manifest.input
        assert isinstance(spec, TextSpec)
        assert (spec.task, spec.pooling, spec.normalized) == ("embed", "mean", True)
        assert spec.dimension == 384 and spec.labels == [] and spec.max_length == 256
        assert (minilm_artifacts / manifest.variant / spec.tokenizer_file).is_file()
        assert manifest.measurements.latency.tokens == 128
        assert isinstance(manifest.fidelity, TensorFidelity)
        assert manifest.fidelity.samples == 200
    assert isinstance(int8.fidelity, TensorFidelity)
    assert int8.fidelity.mean_cosine is not None and int8.fidelity.mean_cosine >= 0.99
    assert int8.fidelity.ranking_agreement is not None and int8.fidelity.ranking_agreement >= 0.95
    assert {g.name for g in int8.gates} >= {"min_mean_cosine", "min_ranking_agreement"}
    assert int8.measurements.size_bytes <= 0.30 * fp32.measurements.size_bytes


def test_the_artifact_embeds_like_the_checkpoint(minilm_artifacts: Path) -> None:
    source = load_text_source("all-minilm-l6-v2")
    texts = sentences(300)[-8:]  # beyond the 200 the gates saw
    feeds = encode(source.tokenizer, texts, 128)
    expected = torch_embeddings(source, feeds)
    got = onnx_embeddings(open_session(minilm_artifacts / "fp32" / "model.onnx", threads=2), feeds)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-4)  # the checkpoint normalises


def test_a_text_checkpoint_without_a_tokenizer_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    assert is_text_model(str(tmp_path))
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        load_text_source(str(tmp_path))


def test_real_sentences_are_real_and_stable() -> None:
    first = sentences(250)
    assert len(set(first)) == 250 and first == sentences(250)
    assert all(8 <= len(t.split()) <= 40 and t.endswith(".") for t in first)


def test_a_head_fitted_on_real_sentences_classifies_and_int8_keeps_its_decisions(
    minilm_classifier: Path,
) -> None:
    from optimize.manifest import Fidelity

    fp32 = verify_artifact(minilm_classifier / "fp32")
    int8 = verify_artifact(minilm_classifier / "int8")  # every gate passed
    for manifest in (fp32, int8):
        spec = manifest.input
        assert isinstance(spec, TextSpec) and spec.task == "classify"
        assert spec.labels == ["network", "files", "concurrency"] and not spec.multi_label
        assert isinstance(manifest.fidelity, Fidelity)
        # judged on the labelled sentences the head never saw
        assert manifest.task is not None and manifest.task.accuracy >= 0.8
        assert any("linear head fitted" in step for step in manifest.recipe.steps)
    # int8 flips a few near ties of the fp32 model, and keeps its accuracy
    assert isinstance(int8.fidelity, Fidelity) and int8.fidelity.top1_agreement >= 0.95
    assert fp32.task is not None and int8.task is not None
    assert abs(int8.task.accuracy - fp32.task.accuracy) <= 0.02
    assert {g.name for g in int8.gates} >= {"min_top1_agreement", "max_source_class_share"}


def test_a_sequence_classifier_keeps_its_own_labels_and_problem_type(tmp_path: Path) -> None:
    """A BERT ``ForSequenceClassification`` checkpoint (MiniLM's real encoder, a seeded
    3-label multi-label head): its head and labels come along; no head is fitted."""
    from optimize.text import TextConfig, build_text_artifacts
    from tests.import_models import sequence_classifier

    checkpoint = sequence_classifier(tmp_path / "ckpt")

    (manifest,) = build_text_artifacts(
        TextConfig(
            model=str(checkpoint), output=tmp_path / "out", variants=("fp32",), latency_runs=5
        )
    )
    spec = manifest.input
    assert isinstance(spec, TextSpec) and spec.task == "classify" and spec.multi_label
    assert spec.labels == ["urgent", "billing", "spam"] and spec.output_name == "logits"
    assert manifest.accepted and manifest.task is None  # its labels are not the built-in topics
    assert not any("fitted" in step for step in manifest.recipe.steps)
