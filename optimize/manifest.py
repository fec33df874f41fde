"""The artifact manifest: what an artifact is, how to check it, and what was measured.

An artifact is a directory holding ``model.onnx`` and ``manifest.json``. Serving and deploy
read it through this module, which imports only the standard library and pydantic (never
torch, never onnxruntime).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from optimize.errors import (
    ArtifactHashMismatch,
    ArtifactNotFound,
    ArtifactRejected,
    ManifestInvalid,
)

SCHEMA_VERSION = 1
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
EXAMPLES_FILE = "examples.npz"  # an imported model's example inputs (measured, warm-up)
_CHUNK = 1 << 20


class Precision(StrEnum):
    """Numeric precision of an artifact's weights."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Device(StrEnum):
    """Where a model runs: a serving pool's device, a measurement's."""

    CPU = "cpu"
    CUDA = "cuda"


PoolKind = Literal["gpu", "cpu"]  # the hardware an artifact is built for (its ``pool``)
# The one vocabulary between them: the pool kind of each device, the device of each kind,
# the pool kind each precision is built for, and the ONNX Runtime providers of a device.
POOL_OF_DEVICE: dict[Device, PoolKind] = {Device.CUDA: "gpu", Device.CPU: "cpu"}
DEVICE_OF_POOL: dict[PoolKind, Device] = {kind: dev for dev, kind in POOL_OF_DEVICE.items()}
POOL_OF_PRECISION: dict[Precision, PoolKind] = {
    Precision.FP32: "cpu",
    Precision.FP16: "gpu",
    Precision.INT8: "cpu",
}
PROVIDERS: dict[Device, list[str]] = {
    Device.CPU: ["CPUExecutionProvider"],
    Device.CUDA: ["CUDAExecutionProvider", "CPUExecutionProvider"],
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class InputSpec(_Frozen):
    """An audio classifier: what the model takes and what its outputs mean."""

    kind: Literal["audio"] = "audio"
    input_name: str = Field(description="graph input: float32 [batch, samples] mono audio")
    output_name: str = Field(description="graph output: float32 [batch, len(labels)] logits")
    sample_rate: int = Field(gt=0, description="Hz; audio at another rate is resampled")
    max_seconds: float = Field(gt=0, description="longest clip a request may carry")
    labels: list[str] = Field(min_length=2)


class TensorSpec(_Frozen):
    """One graph input or output: its name, element type, and shape (a dimension is a
    number, or a name when the graph leaves it free)."""

    name: str
    datatype: str = Field(description="v2 datatype: FP32, FP16, INT64, BOOL, ...")
    shape: list[int | str]


class TensorsSpec(_Frozen):
    """Any model, by its graph's signature alone (``sluiceway import``)."""

    kind: Literal["tensors"] = "tensors"
    inputs: list[TensorSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    example_shapes: dict[str, list[int]] = Field(
        description="the shape of each input it was measured at (and a replica warms up with)"
    )


class TextSpec(_Frozen):
    """A text encoder: the tokenizer (a file in the artifact) turns text into its inputs."""

    kind: Literal["text"] = "text"
    inputs: list[TensorSpec] = Field(min_length=1, description="token ids, attention mask")
    output_name: str
    tokenizer_file: str = Field(description="a `tokenizers` JSON file in the artifact")
    max_length: int = Field(gt=0, description="tokens; longer texts are truncated")
    task: Literal["embed", "classify"]
    dimension: int = Field(gt=0, description="the embedding's size, or the number of labels")
    labels: list[str] = Field(default_factory=list)
    multi_label: bool = Field(False, description="classify: sigmoid per label, not softmax")
    pooling: str | None = Field(None, description="embed: mean, cls or max over tokens")
    normalized: bool = False


def _kind(default: str) -> Any:
    """Manifests written before a field had kinds have none: they are ``default``."""

    def kind(value: Any) -> str:
        if isinstance(value, dict):
            return str(value.get("kind", default))
        return str(getattr(value, "kind", default))

    return Discriminator(kind)


ModelInput = Annotated[
    Annotated[InputSpec, Tag("audio")]
    | Annotated[TensorsSpec, Tag("tensors")]
    | Annotated[TextSpec, Tag("text")],
    _kind("audio"),
]


class SourceInfo(_Frozen):
    """The checkpoint an artifact was made from."""

    model: str = Field(description="preset name or checkpoint directory as given")
    architecture: str = Field(
        description="transformers class, e.g. Wav2Vec2ForSequenceClassification"
    )
    sha256: str = Field(description="digest of the checkpoint's files (sorted by name)")
    parameters: int = Field(ge=0)


class FileDigest(_Frozen):
    """One file of the artifact and its integrity."""

    path: str
    sha256: str
    size_bytes: int = Field(ge=0)


WIDE_SPREAD = 1.5  # latency slices' medians this far apart: the machine was busy measuring


class LatencyStats(_Frozen):
    """Latency of one inference at a stated clip length, batch and thread count."""

    p50_s: float = Field(ge=0)
    p95_s: float = Field(ge=0)
    p99_s: float = Field(ge=0)
    mean_s: float = Field(ge=0)
    runs: int = Field(gt=0)
    batch: int = Field(gt=0)
    clip_seconds: float | None = Field(None, gt=0, description="audio: the clip length")
    tokens: int | None = Field(None, gt=0, description="text: the sequence length")
    threads: int = Field(gt=0)
    spread: float | None = Field(
        None,
        ge=1,
        description="largest / smallest median of five equal slices of the runs: about 1 on "
        "a quiet machine; wide when other work shared it",
    )


class Throughput(_Frozen):
    """Inputs (clips, for audio) per second at a larger batch."""

    batch: int = Field(gt=0)
    clips_per_s: float = Field(ge=0, description="batch rows answered per second")


class Measurements(_Frozen):
    """What was measured when the artifact was made."""

    provider: str = Field(description="ONNX Runtime execution provider the numbers come from")
    size_bytes: int = Field(ge=0)
    parameters: int = Field(ge=0)
    load_time_s: float = Field(ge=0)
    latency: LatencyStats
    throughput: Throughput
    peak_rss_bytes: int = Field(ge=0, description="peak RSS of a process that loads and runs it")


class Fidelity(_Frozen):
    """A classifier's agreement with the source model on the eval set."""

    kind: Literal["classes"] = "classes"
    clips: int = Field(gt=0)
    top1_agreement: float = Field(ge=0, le=1)
    logit_cosine: float = Field(description="mean cosine similarity of logits, source vs artifact")
    max_abs_error: float = Field(
        ge=0, description="largest |logit difference| over the eval set (finite logits)"
    )
    source_class_share: dict[str, float] = Field(
        description="share of eval clips the source assigns to each label"
    )
    nonfinite_logits: int = Field(
        0, ge=0, description="the artifact's logits that were NaN or infinite on the eval set"
    )


class TensorFidelity(_Frozen):
    """How close every output is to the source model's on the same inputs (``import``)."""

    kind: Literal["tensors"] = "tensors"
    samples: int = Field(gt=0, description="input sets compared")
    max_abs_error: float = Field(ge=0, description="largest |difference| over every output")
    max_rel_error: float = Field(
        ge=0, description="largest |difference| / (|source| + 1e-6), over every float output"
    )
    min_cosine: float = Field(description="lowest cosine of an output to the source's")
    mean_cosine: float | None = Field(None, description="text: mean over the sentences")
    ranking_agreement: float | None = Field(
        None,
        description="text: share of sentences whose near copy stays closer than another one",
    )
    nonfinite_outputs: int = Field(0, ge=0, description="NaN or infinite output values")


ModelFidelity = Annotated[
    Annotated[Fidelity, Tag("classes")] | Annotated[TensorFidelity, Tag("tensors")],
    _kind("classes"),
]


class TaskMetrics(_Frozen):
    """Accuracy against ground-truth labels (macro-averaged), when labels were given."""

    clips: int = Field(gt=0)
    accuracy: float = Field(ge=0, le=1)
    precision: float = Field(ge=0, le=1)
    recall: float = Field(ge=0, le=1)
    f1: float = Field(ge=0, le=1)


class GateResult(_Frozen):
    """One quality gate: the threshold, the measured value, and the verdict."""

    name: str
    comparison: Literal[">=", "<="]
    threshold: float
    value: float
    passed: bool

    @property
    def holds(self) -> bool:
        """The verdict recomputed from value and threshold."""
        if self.comparison == ">=":
            return self.value >= self.threshold
        return self.value <= self.threshold


class QuantizationCandidate(_Frozen):
    """One int8 recipe that was tried, and what it measured."""

    name: str
    description: str
    p50_s: float | None = None
    p99_s: float | None = None
    size_bytes: int | None = None
    top1_agreement: float | None = None
    outcome: str = Field(description="chosen, slower, failed gates, or the error it raised")


class Recipe(_Frozen):
    """How the artifact was produced from the source."""

    steps: list[str]
    opset: int
    quantization: str | None = None
    quantization_reason: str | None = None
    candidates: list[QuantizationCandidate] = Field(default_factory=list)


class Manifest(_Frozen):
    """Everything an artifact says about itself."""

    schema_version: int = SCHEMA_VERSION
    variant: str = Field(description="variant name, e.g. fp32, fp16, int8")
    precision: Precision
    pool: PoolKind = Field(description="the pool this artifact is meant for")
    created: datetime
    source: SourceInfo
    input: ModelInput
    files: list[FileDigest]
    recipe: Recipe
    measurements: Measurements
    fidelity: ModelFidelity
    task: TaskMetrics | None = None
    gates: list[GateResult]

    @property
    def accepted(self) -> bool:
        """True when there are gates and every one holds (recomputed, not trusted)."""
        return bool(self.gates) and not self.failed_gates

    @property
    def failed_gates(self) -> list[GateResult]:
        """Gates whose value does not meet the threshold, whatever ``passed`` says."""
        return [g for g in self.gates if not (g.passed and g.holds)]


def utc_now() -> datetime:
    return datetime.now(UTC)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def digest_files(directory: Path, names: list[str]) -> list[FileDigest]:
    """FileDigest for each named file inside ``directory``."""
    return [
        FileDigest(
            path=name,
            sha256=sha256_file(directory / name),
            size_bytes=(directory / name).stat().st_size,
        )
        for name in sorted(names)
    ]


def write_manifest(directory: Path, manifest: Manifest) -> Path:
    """Write manifest.json into ``directory``; returns its path."""
    path = directory / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(directory: Path) -> Manifest:
    """Parse ``directory/manifest.json``; does not check hashes or gates."""
    return read_pinned(directory)[0]


def read_pinned(directory: Path) -> tuple[Manifest, str]:
    """The manifest and its ``artifact_digest``, from one read of the file (what is parsed
    is what was hashed)."""
    path = directory / MANIFEST_FILE
    if not path.is_file():
        raise ArtifactNotFound(
            f"no {MANIFEST_FILE} in {directory}: is this an artifact directory made by "
            "`sluiceway optimize`?"
        )
    data = path.read_bytes()
    try:
        raw = json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestInvalid(f"{path} is not valid JSON ({exc}); rebuild the artifact") from exc
    try:
        return Manifest.model_validate(raw), hashlib.sha256(data).hexdigest()
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(root)"
        raise ManifestInvalid(
            f"{path}: field {where!r}: {first['msg']} ({exc.error_count()} error(s)); "
            "rebuild the artifact with this version of sluiceway"
        ) from exc


def verify_artifact(directory: Path, *, expected_sha256: str | None = None) -> Manifest:
    """Read an artifact and refuse it unless every file matches and every gate passed.

    ``expected_sha256``, when given, is the artifact digest the caller was told to expect
    (the serving config's ``sha256``, see ``artifact_digest``): a different artifact, or
    this one with its manifest edited, is refused too.
    """
    manifest, digest = read_pinned(directory)
    root = directory.resolve()
    for entry in manifest.files:
        path = directory / entry.path
        if not path.resolve().is_relative_to(root):
            raise ManifestInvalid(f"{directory}: manifest file {entry.path!r} lies outside it")
        if not path.is_file():
            raise ArtifactNotFound(f"{path} is listed in the manifest but missing; rebuild it")
        actual = sha256_file(path)
        if actual != entry.sha256:
            raise ArtifactHashMismatch(
                f"{path}: sha256 {actual} does not match the manifest's {entry.sha256}; "
                "the file was changed or corrupted after it was built: rebuild the artifact"
            )
    if expected_sha256 is not None:
        check_digest(directory, manifest, digest, expected_sha256)
    if not manifest.gates:
        raise ArtifactRejected(f"{directory}: the manifest records no quality gate; rebuild it")
    if not manifest.accepted:
        names = ", ".join(
            f"{g.name} ({g.value:.4g} {'<' if g.comparison == '>=' else '>'} {g.threshold:g})"
            for g in manifest.failed_gates
        )
        raise ArtifactRejected(
            f"{directory}: the artifact failed its quality gates ({names}) and must not be "
            "served; rebuild it or pick another variant"
        )
    return manifest


def artifact_digest(directory: Path) -> str:
    """The digest that pins a whole artifact: the sha256 of its manifest.json, which records
    every file's sha256 (checked by ``verify_artifact``) beside labels, input spec,
    measurements and gate verdicts. Editing any of them, or any file, changes what pins."""
    return hashlib.sha256((directory / MANIFEST_FILE).read_bytes()).hexdigest()


def check_digest(where: object, manifest: Manifest, digest: str, expected: str) -> None:
    """Refuse an artifact whose digest is not ``expected``, saying how to fix the config."""
    if digest == expected:
        return
    if expected == model_digest(manifest):
        raise ArtifactHashMismatch(
            f"{where}: the config's sha256 {expected} is the digest of model.onnx alone (an "
            f"older sluiceway); pin the whole artifact with {digest} (the sha256 of its "
            f"{MANIFEST_FILE}, which `sluiceway deploy values` writes)"
        )
    raise ArtifactHashMismatch(
        f"{where}: the artifact's digest (sha256 of {MANIFEST_FILE}) is {digest}, expected "
        f"{expected}: it is another artifact, or its manifest was changed; point the config "
        "at the right artifact or update its sha256"
    )


def model_digest(manifest: Manifest) -> str:
    """The sha256 the manifest records for model.onnx."""
    for entry in manifest.files:
        if entry.path == MODEL_FILE:
            return entry.sha256
    raise ManifestInvalid(f"the manifest lists no {MODEL_FILE}; rebuild the artifact")
