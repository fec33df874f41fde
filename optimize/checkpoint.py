"""Source models: presets built offline from their configurations, or a checkpoint directory.

No model hub is reachable, so a preset is the real architecture with seeded weights whose
classification head is then fitted on the seeded synthetic labelled set: the teacher makes
input-dependent, balanced decisions, so agreement gates mean something.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForAudioClassification,
    HubertConfig,
    PretrainedConfig,
    PreTrainedModel,
    Wav2Vec2Config,
    WavLMConfig,
)

from optimize.audio import SYNTHETIC_LABELS, synthetic_set
from optimize.errors import CheckpointError
from optimize.manifest import sha256_file
from optimize.progress import ProgressFn, no_progress

logger = logging.getLogger(__name__)

SUPPORTED_ARCHITECTURES = (
    "Wav2Vec2ForSequenceClassification",
    "HubertForSequenceClassification",
    "WavLMForSequenceClassification",
)
_CONFIG_CLASSES: dict[str, type[PretrainedConfig]] = {
    "wav2vec2": Wav2Vec2Config,
    "hubert": HubertConfig,
    "wavlm": WavLMConfig,
}

# facebook/wav2vec2-base, exactly (config.json of the hub checkpoint), with a 2-label head.
_WAV2VEC2_BASE: dict[str, Any] = {
    "model_type": "wav2vec2",
    "activation_dropout": 0.0,
    "apply_spec_augment": True,
    "attention_dropout": 0.1,
    "bos_token_id": 1,
    "codevector_dim": 256,
    "contrastive_logits_temperature": 0.1,
    "conv_bias": False,
    "conv_dim": [512, 512, 512, 512, 512, 512, 512],
    "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
    "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "ctc_loss_reduction": "sum",
    "ctc_zero_infinity": False,
    "diversity_loss_weight": 0.1,
    "do_stable_layer_norm": False,
    "eos_token_id": 2,
    "feat_extract_activation": "gelu",
    "feat_extract_norm": "group",
    "feat_proj_dropout": 0.1,
    "feat_quantizer_dropout": 0.0,
    "final_dropout": 0.0,
    "hidden_act": "gelu",
    "hidden_dropout": 0.1,
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "layerdrop": 0.05,
    "mask_feature_length": 10,
    "mask_feature_prob": 0.0,
    "mask_time_length": 10,
    "mask_time_prob": 0.05,
    "num_attention_heads": 12,
    "num_codevector_groups": 2,
    "num_codevectors_per_group": 320,
    "num_conv_pos_embedding_groups": 16,
    "num_conv_pos_embeddings": 128,
    "num_feat_extract_layers": 7,
    "num_hidden_layers": 12,
    "num_negatives": 100,
    "pad_token_id": 0,
    "proj_codevector_dim": 256,
    "vocab_size": 32,
}

# A preset is the base configuration plus what differs: one table, no copies.
PRESETS: dict[str, dict[str, Any]] = {
    "wav2vec2-base": {},
    # Same family and operators, a fraction of the size: for tests and quick trials.
    "wav2vec2-tiny": {
        "conv_dim": [32, 32, 32, 32],
        "conv_kernel": [10, 3, 3, 2],
        "conv_stride": [5, 4, 4, 2],
        "num_feat_extract_layers": 4,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 4,
        "classifier_proj_size": 32,
    },
}

SAMPLE_RATE = 16_000
HEAD_FIT_CLIPS = 96
HEAD_FIT_STEPS = 400


@dataclass(frozen=True)
class SourceModel:
    """A loaded source model and what identifies it."""

    model: PreTrainedModel
    name: str
    directory: Path
    sha256: str
    labels: tuple[str, ...]
    sample_rate: int

    @property
    def architecture(self) -> str:
        return type(self.model).__name__

    @property
    def parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def checkpoint_digest(directory: Path) -> str:
    """sha256 over the names and digests of a checkpoint's files, sorted by name."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def preset_config(name: str, labels: tuple[str, ...] = SYNTHETIC_LABELS) -> PretrainedConfig:
    """The transformers configuration of preset ``name``."""
    if name not in PRESETS:
        raise CheckpointError(
            f"unknown preset {name!r}; presets: {', '.join(PRESETS)}, "
            "or pass a checkpoint directory"
        )
    values = {**_WAV2VEC2_BASE, **PRESETS[name]}
    values.pop("model_type")
    config = Wav2Vec2Config(
        **values,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)},
        architectures=["Wav2Vec2ForSequenceClassification"],
    )
    return config


@torch.no_grad()
def _pooled_features(
    model: PreTrainedModel, clips: np.ndarray, progress: ProgressFn
) -> torch.Tensor:
    """Mean-pooled encoder outputs, the input of the classification head."""
    batches = [clips[i : i + 8] for i in range(0, len(clips), 8)]
    out = []
    for done, batch in enumerate(batches, start=1):
        hidden = model.wav2vec2(torch.from_numpy(batch)).last_hidden_state
        out.append(hidden.mean(dim=1))
        progress("fitting head: encoding", done, len(batches))
    return torch.cat(out)


def _fit_head(model: PreTrainedModel, seed: int, seconds: float, progress: ProgressFn) -> None:
    """Fit projector + classifier on the seeded synthetic set (encoder frozen)."""
    data = synthetic_set(HEAD_FIT_CLIPS, seconds=seconds, sample_rate=SAMPLE_RATE, seed=seed + 101)
    assert data.labels is not None
    features = _pooled_features(model, data.clips, progress)
    mean, std = features.mean(0), features.std(0) + 1e-6
    targets = torch.from_numpy(data.labels)
    projector, classifier = model.projector, model.classifier
    params = [*projector.parameters(), *classifier.parameters()]
    optimiser = torch.optim.Adam(params, lr=3e-3, weight_decay=1e-3)
    # Standardising inside the fit, then folding it into the projector, keeps the head's
    # margins comparable to the feature spread (so int8 noise cannot flip decisions easily).
    with torch.enable_grad():
        for step in range(HEAD_FIT_STEPS):
            optimiser.zero_grad()
            logits = classifier(projector((features - mean) / std))
            loss = torch.nn.functional.cross_entropy(logits, targets)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            if step % 50 == 0 or step == HEAD_FIT_STEPS - 1:
                progress("fitting head: training", step + 1, HEAD_FIT_STEPS)
    with torch.no_grad():
        weight = projector.weight / std
        projector.bias -= (weight * mean).sum(dim=1)
        projector.weight.copy_(weight)
        accuracy = (classifier(projector(features)).argmax(1) == targets).float().mean().item()
    logger.info("preset head fitted: train accuracy %.3f on %d clips", accuracy, len(data))


def build_preset(
    name: str, directory: Path, *, seed: int = 0, progress: ProgressFn = no_progress
) -> SourceModel:
    """Build preset ``name`` with seeded weights, fit its head, save it to ``directory``."""
    config = preset_config(name)
    torch.manual_seed(seed)
    model = AutoModelForAudioClassification.from_config(config)
    model.eval()
    _fit_head(model, seed, seconds=3.0, progress=progress)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    return SourceModel(
        model=model,
        name=name,
        directory=directory,
        sha256=checkpoint_digest(directory),
        labels=tuple(config.id2label[i] for i in range(config.num_labels)),
        sample_rate=SAMPLE_RATE,
    )


def load_checkpoint(directory: Path, *, name: str | None = None) -> SourceModel:
    """Load an audio classifier from a local checkpoint directory (safetensors only)."""
    if not directory.is_dir():
        raise CheckpointError(
            f"checkpoint {directory} is not a directory; pass a directory holding config.json "
            f"and model.safetensors, or a preset ({', '.join(PRESETS)})"
        )
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise CheckpointError(
            f"{directory} has no config.json: it is not a transformers checkpoint"
        )
    try:
        config = AutoConfig.from_pretrained(directory, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(
            f"{config_path} cannot be read as a model configuration: {exc}"
        ) from exc
    if config.model_type not in _CONFIG_CLASSES:
        raise CheckpointError(
            f"{directory}: model type {config.model_type!r} is not supported; supported "
            f"architectures: {', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    if not any(directory.glob("*.safetensors")):
        raise CheckpointError(
            f"{directory} holds no *.safetensors weights; convert the checkpoint with "
            "save_pretrained(..., safe_serialization=True) (pickle weights are never loaded)"
        )
    try:
        model = AutoModelForAudioClassification.from_pretrained(
            directory, local_files_only=True, use_safetensors=True
        )
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as exc:
        raise CheckpointError(f"cannot load the weights in {directory}: {exc}") from exc
    if type(model).__name__ not in SUPPORTED_ARCHITECTURES:
        raise CheckpointError(
            f"{directory}: {type(model).__name__} is not supported; supported: "
            f"{', '.join(SUPPORTED_ARCHITECTURES)}"
        )
    model.eval()
    return SourceModel(
        model=model,
        name=name or str(directory),
        directory=directory,
        sha256=checkpoint_digest(directory),
        labels=tuple(str(model.config.id2label[i]) for i in range(model.config.num_labels)),
        sample_rate=SAMPLE_RATE,
    )


def resolve_source(
    spec: str, work_dir: Path, *, seed: int = 0, progress: ProgressFn = no_progress
) -> SourceModel:
    """A preset name is built into ``work_dir``; anything else is a checkpoint directory."""
    if spec in PRESETS:
        return build_preset(spec, work_dir, seed=seed, progress=progress)
    path = Path(spec)
    if not path.exists():
        raise CheckpointError(
            f"{spec!r} is neither a preset ({', '.join(PRESETS)}) nor an existing directory"
        )
    return load_checkpoint(path)
