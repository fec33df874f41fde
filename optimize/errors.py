"""Errors raised while turning a checkpoint into artifacts, and while reading one back.

The tree::

    OptimizeError
    ├── InputError                  a user input is wrong; the message says which and what to do
    │   ├── CheckpointError         missing/corrupt checkpoint directory, unsupported architecture
    │   ├── AudioDecodeError        a WAV file that cannot be read
    │   ├── DatasetError            an empty data folder, a labels CSV that does not match
    │   └── GateSpecError           a `--gate NAME=VALUE` that names no gate or has no number
    ├── ArtifactError               an artifact directory that cannot be trusted
    │   ├── ArtifactNotFound        no model.onnx / manifest.json where one was expected
    │   ├── ManifestInvalid         manifest.json is not valid JSON or not a manifest
    │   ├── ArtifactHashMismatch    a file's sha256 differs from the manifest's
    │   ├── ArtifactRejected        the artifact failed its quality gates
    │   └── ModelLoadError          ONNX Runtime refused the model (corrupt ONNX)
    ├── ExportMismatch              the exported graph does not reproduce PyTorch's outputs
    └── GatesFailed                 one or more built variants failed their gates

This module imports only the standard library: serving reads artifacts without torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


class OptimizeError(Exception):
    """Base of every error raised by `optimize`."""


class InputError(OptimizeError):
    """A user input is wrong."""


class CheckpointError(InputError):
    """The checkpoint is missing, unreadable or of an unsupported architecture."""


class AudioDecodeError(InputError):
    """An audio file could not be decoded."""


class DatasetError(InputError):
    """A data folder or labels file is unusable."""


class GateSpecError(InputError):
    """A gate override does not name a known gate or carry a number."""


class ArtifactError(OptimizeError):
    """An artifact directory cannot be trusted."""


class ArtifactNotFound(ArtifactError):
    """An artifact file is missing."""


class ManifestInvalid(ArtifactError):
    """manifest.json is not a valid manifest."""


class ArtifactHashMismatch(ArtifactError):
    """A file's sha256 differs from the one recorded in the manifest."""


class ArtifactRejected(ArtifactError):
    """The artifact failed its quality gates when it was built."""


class ModelLoadError(ArtifactError):
    """ONNX Runtime could not load the model."""


class ExportMismatch(OptimizeError):
    """The exported ONNX graph does not reproduce the PyTorch outputs."""


class GatesFailed(OptimizeError):
    """At least one variant failed its gates; its artifact is kept, marked rejected."""

    def __init__(self, failures: Sequence[str], *, kept: Path | None = None) -> None:
        self.failures = list(failures)
        where = (
            f"The previous artifacts in {kept} are kept; the rejected ones are in "
            f"{kept.with_name(kept.name + '.rejected')}"
            if kept is not None
            else "The artifacts are written but marked rejected (serving refuses them)"
        )
        super().__init__(
            "quality gates failed: "
            + "; ".join(self.failures)
            + f". {where}; relax a gate with --gate NAME=VALUE only if the numbers are "
            "acceptable."
        )
