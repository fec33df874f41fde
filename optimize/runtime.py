"""ONNX Runtime sessions with stated threads and provider, and what they really run on."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray

from optimize.errors import InputError, ModelLoadError
from optimize.manifest import PROVIDERS, Device

logger = logging.getLogger(__name__)


def open_session(
    path: Path, *, threads: int, device: Device = Device.CPU, low_memory: bool = False
) -> ort.InferenceSession:
    """An inference session on ``device``; raises when CUDA is asked for but not there.

    onnxruntime-gpu silently falls back to the CPU provider when CUDA cannot load, so the
    provider actually in use is checked, not assumed.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if low_memory:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    try:
        session = ort.InferenceSession(str(path), options, providers=PROVIDERS[device])
    except (
        ort.capi.onnxruntime_pybind11_state.Fail,
        ort.capi.onnxruntime_pybind11_state.InvalidGraph,
        ort.capi.onnxruntime_pybind11_state.InvalidProtobuf,
        ort.capi.onnxruntime_pybind11_state.NoSuchFile,
        ort.capi.onnxruntime_pybind11_state.NotImplemented,
    ) as exc:
        raise ModelLoadError(
            f"ONNX Runtime cannot load {path}: {str(exc).strip()[:300]}; the file is corrupt "
            "or not an ONNX model: rebuild it with `sluiceway optimize`"
        ) from exc
    if device is Device.CUDA and session.get_providers()[0] != "CUDAExecutionProvider":
        raise InputError(
            "--device cuda was asked for but ONNX Runtime's CUDA provider is not usable here "
            f"(providers in use: {session.get_providers()}); use --device cpu"
        )
    return session


def provider_of(session: ort.InferenceSession) -> str:
    """The first provider the session actually runs on."""
    return str(session.get_providers()[0])


def run_logits(
    session: ort.InferenceSession, clips: NDArray[np.float32], *, batch: int = 8
) -> NDArray[np.float32]:
    """Logits for ``clips`` ([n, samples]) in batches."""
    name = session.get_inputs()[0].name
    parts = [
        np.asarray(session.run(None, {name: clips[i : i + batch]})[0], dtype=np.float32)
        for i in range(0, len(clips), batch)
    ]
    return np.concatenate(parts)
