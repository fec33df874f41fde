"""fp16 conversion and int8 quantization recipes (ONNX -> ONNX).

int8 recipes are data: a table of candidates, each a list of stages; a stage is either
dynamic (weights only, activations quantized at run time) or static (activations
calibrated on audio). The pipeline measures the candidates and keeps the fastest that
passes the gates.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
from numpy.typing import NDArray
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from optimize.export import cap_ir_version

logger = logging.getLogger(__name__)

# Normalisations overflow in fp16 (variance of large activations): they stay fp32.
FP16_KEEP_FP32 = (
    "LayerNormalization",
    "InstanceNormalization",
    "GroupNormalization",
    "ReduceMean",
    "Pow",
    "Sqrt",
)


def convert_fp16(source: Path, target: Path) -> None:
    """fp16 weights and compute, fp32 inputs/outputs, normalisations kept in fp32."""
    model = onnx.load(str(source))
    converted = convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(FP16_KEEP_FP32)
    )
    onnx.save(cap_ir_version(converted), str(target))


@dataclass(frozen=True)
class DynamicStage:
    """Weights to int8 ahead of time; activations quantized per call (MatMulInteger)."""

    op_types: tuple[str, ...]
    weight_type: Literal["s8", "u8"] = "s8"
    per_channel: bool = False
    reduce_range: bool = False


@dataclass(frozen=True)
class StaticStage:
    """Weights and activations to int8, activation ranges calibrated on audio."""

    op_types: tuple[str, ...]
    fmt: Literal["qdq", "qoperator"] = "qdq"
    weight_type: Literal["s8", "u8"] = "s8"
    per_channel: bool = True
    reduce_range: bool = True
    # The first Conv sees raw audio: 8-bit per-tensor input loses quiet passages, and the
    # GroupNorm after it amplifies the error (wav2vec2-base: max logit error > 3 with it,
    # 1.1 without, for < 1 % of the FLOPs). Leading ops of ``op_types`` kept in fp32:
    keep_first_fp32: int = 1


Stage = DynamicStage | StaticStage


@dataclass(frozen=True)
class Int8Recipe:
    """One int8 candidate: stages applied in order to the pre-processed fp32 graph."""

    name: str
    description: str
    stages: tuple[Stage, ...] = field(default_factory=tuple)

    @property
    def needs_calibration(self) -> bool:
        return any(isinstance(s, StaticStage) for s in self.stages)


_TYPES = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8}
_FORMATS = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}

# AVX2 without VNNI: u8 activations x s8 weights go through vpmaddubsw, whose 16-bit
# intermediate can saturate; reduce_range (7-bit weights) avoids it at some precision cost,
# and u8 weights avoid it too. The conv front end (long accumulations) gets reduce_range;
# for MatMul both weight types are candidates and the gates judge the result.
INT8_RECIPES: tuple[Int8Recipe, ...] = (
    Int8Recipe(
        "dynamic-matmul-s8",
        "dynamic int8 MatMul (s8 weights); conv front end left in fp32",
        (DynamicStage(("MatMul",), weight_type="s8"),),
    ),
    Int8Recipe(
        "dynamic-matmul-u8",
        "dynamic int8 MatMul (u8 weights); conv front end left in fp32",
        (DynamicStage(("MatMul",), weight_type="u8"),),
    ),
    Int8Recipe(
        "static-conv+dynamic-matmul",
        "static QLinearConv calibrated on audio (s8 per-channel weights, reduce_range) for the "
        "conv front end but its first conv (raw audio in, kept fp32), then dynamic int8 "
        "MatMul (s8 weights) for the transformer",
        (
            StaticStage(("Conv",), fmt="qoperator"),
            DynamicStage(("MatMul",), weight_type="s8"),
        ),
    ),
    Int8Recipe(
        "static-qdq-conv-matmul",
        "static QDQ calibrated on audio for Conv (but the first) and MatMul (s8 per-channel, "
        "reduce_range)",
        (StaticStage(("Conv", "MatMul"), fmt="qdq"),),
    ),
)

RECIPES_BY_NAME = {r.name: r for r in INT8_RECIPES}


class _ClipReader(CalibrationDataReader):  # type: ignore[misc]
    """Feeds calibration clips one at a time."""

    def __init__(self, input_name: str, clips: NDArray[np.float32]) -> None:
        self._items: Iterator[dict[str, NDArray[np.float32]]] = iter(
            {input_name: clip[None, :]} for clip in clips
        )

    def get_next(self) -> dict[str, NDArray[np.float32]] | None:
        return next(self._items, None)


def preprocess(source: Path, target: Path) -> None:
    """ONNX Runtime's recommended pre-quantization pass (shape inference, graph cleanup)."""
    quant_pre_process(str(source), str(target), skip_symbolic_shape=True)


def apply_dynamic(stage: DynamicStage, source: Path, target: Path) -> None:
    quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=list(stage.op_types),
        weight_type=_TYPES[stage.weight_type],
        per_channel=stage.per_channel,
        reduce_range=stage.reduce_range,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def _leading_nodes(source: Path, op_types: tuple[str, ...], count: int) -> list[str]:
    """Names of the first ``count`` nodes of ``op_types`` (ONNX graphs are topologically sorted)."""
    graph = onnx.load(str(source), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type in op_types][:count]


def _apply_static(
    stage: StaticStage,
    source: Path,
    target: Path,
    input_name: str,
    calibration: NDArray[np.float32],
) -> None:
    quantize_static(
        str(source),
        str(target),
        _ClipReader(input_name, calibration),
        quant_format=_FORMATS[stage.fmt],
        op_types_to_quantize=list(stage.op_types),
        nodes_to_exclude=_leading_nodes(source, ("Conv",), stage.keep_first_fp32),
        per_channel=stage.per_channel,
        reduce_range=stage.reduce_range,
        activation_type=QuantType.QUInt8,
        weight_type=_TYPES[stage.weight_type],
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )


def quantize_int8(
    recipe: Int8Recipe,
    preprocessed: Path,
    target: Path,
    *,
    input_name: str,
    calibration: NDArray[np.float32],
    work_dir: Path,
) -> None:
    """Apply ``recipe``'s stages to ``preprocessed``, writing ``target``."""
    current = preprocessed
    stages: Sequence[Stage] = recipe.stages
    for index, stage in enumerate(stages):
        out = target if index == len(stages) - 1 else work_dir / f"{recipe.name}.stage{index}.onnx"
        if isinstance(stage, DynamicStage):
            apply_dynamic(stage, current, out)
        else:
            _apply_static(stage, current, out, input_name, calibration)
        current = out
    model = onnx.load(str(target))
    onnx.save(cap_ir_version(model), str(target))
    logger.info("quantized with %s -> %s", recipe.name, target)
