"""PyTorch -> ONNX (fp32), checked against PyTorch's own outputs."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray

from optimize.checkpoint import SourceModel
from optimize.errors import ExportMismatch

logger = logging.getLogger(__name__)

OPSET = 17
# onnx's helpers may stamp a newer IR version than this ONNX Runtime loads; cap it.
MAX_IR_VERSION = 10
INPUT_NAME = "input_values"
OUTPUT_NAME = "logits"
EXPORT_TOLERANCE = 1e-3


def cap_ir_version(model: onnx.ModelProto) -> onnx.ModelProto:
    """Lower the model's IR version to one ONNX Runtime accepts (no-op when already lower)."""
    model.ir_version = min(model.ir_version, MAX_IR_VERSION)
    return model


def export_fp32(source: SourceModel, path: Path, example: NDArray[np.float32]) -> None:
    """Export ``source`` to ``path`` with dynamic batch and time axes.

    The TorchScript exporter is used: the dynamo exporter pins opset 18 and its graphs
    quantize less well with ONNX Runtime's tools.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            source.model,
            (torch.from_numpy(example),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch", 1: "samples"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    model = onnx.load(str(path))
    onnx.save(cap_ir_version(model), str(path))
    logger.info("exported %s to %s (opset %d)", source.name, path, OPSET)


def check_export(
    reference: NDArray[np.float32], exported: NDArray[np.float32], path: Path
) -> float:
    """Largest |difference| between PyTorch and ONNX logits; raise when over tolerance."""
    error = float(np.abs(reference - exported).max())
    if not np.isfinite(error) or error > EXPORT_TOLERANCE:
        raise ExportMismatch(
            f"{path}: the exported graph differs from PyTorch by {error:.3g} "
            f"(tolerance {EXPORT_TOLERANCE:g}); the model uses an operator the exporter "
            "translates wrongly: report it with the model's config.json"
        )
    return error
