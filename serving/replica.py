"""A model replica: verified artifacts on ONNX Runtime, one deployment per (model, pool).

A replica verifies every artifact it is given (sha256 against the config, gates passed),
opens it on its pool's device, warms it up, and only then reports healthy. Requests are
optionally batched (Serve's dynamic batching): requests of the same variant and shape are
run as one call.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from ray import serve

from optimize.manifest import MODEL_FILE, Manifest, verify_artifact
from serving.config import ArtifactRef, PoolConfig
from serving.errors import BadRequest, ConfigError, UnknownModel
from serving.fetch import resolve_artifact
from serving.metrics import ReplicaMetrics, refresh_forever
from serving.protocols.v2 import ONNX_TO_V2, TensorSpec, check_inputs
from serving.replica_memory import gpu_memory_bytes, memory_limit_bytes, rss_bytes

logger = logging.getLogger(__name__)

Tensors = dict[str, NDArray[Any]]
_PROVIDERS = {
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "cpu": ["CPUExecutionProvider"],
}


@dataclass(frozen=True)
class LoadedVariant:
    """One artifact open on ONNX Runtime."""

    manifest: Manifest
    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str


def _specs(args: list[Any]) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(
            name=a.name,
            datatype=ONNX_TO_V2.get(a.type, a.type),
            shape=tuple(d if isinstance(d, int) else -1 for d in a.shape),
        )
        for a in args
    )


def load_variant(ref: ArtifactRef, pool: PoolConfig) -> LoadedVariant:
    """Verify the artifact and open it on the pool's device."""
    directory = resolve_artifact(ref)  # an http(s) artifact: from the cache, or fetched now
    manifest = verify_artifact(directory, expected_sha256=ref.sha256)
    options = ort.SessionOptions()
    options.intra_op_num_threads = pool.threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(
        str(directory / MODEL_FILE), options, providers=_PROVIDERS[pool.device]
    )
    provider = session.get_providers()[0]
    if pool.device == "cuda" and provider != "CUDAExecutionProvider":
        raise ConfigError(
            f"pool device is cuda but ONNX Runtime runs {directory} on {provider}: "
            "CUDA is not usable on this node"
        )
    return LoadedVariant(
        manifest=manifest,
        session=session,
        inputs=_specs(session.get_inputs()),
        outputs=_specs(session.get_outputs()),
        provider=provider,
    )


def lower_thread_priority(nice: int) -> None:
    """Raise the calling thread's nice value to ``nice`` (never lowers it).

    Linux schedules threads one by one, and a thread starts with its creator's nice value:
    ONNX Runtime's intra-op threads, made when a session opens, inherit it.
    """
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    thread = threading.get_native_id()
    try:
        if os.getpriority(os.PRIO_PROCESS, thread) < nice:
            os.setpriority(os.PRIO_PROCESS, thread, nice)
    except OSError as exc:
        logger.warning("could not lower the inference threads' priority to nice %d: %s", nice, exc)


def inference_executor(pool: str, config: PoolConfig) -> ThreadPoolExecutor:
    """Threads that open sessions and run inference, at the pool's CPU priority."""
    return ThreadPoolExecutor(
        max_workers=config.max_ongoing_requests,
        thread_name_prefix=f"infer-{pool}",
        initializer=lower_thread_priority,
        initargs=(config.nice,),
    )


def _warmup(variant: LoadedVariant) -> None:
    feeds = {
        spec.name: np.zeros(
            [1 if d < 0 else d for d in spec.shape[:1]]
            + [variant.manifest.input.sample_rate if d < 0 else d for d in spec.shape[1:]],
            dtype=np.float32,
        )
        for spec in variant.inputs
    }
    variant.session.run(None, feeds)


class ModelReplica:
    """The Serve deployment class behind every (model, pool)."""

    def __init__(
        self,
        model: str,
        pool: str,
        pool_config: dict[str, Any],
        artifacts: dict[str, dict[str, str]],
    ) -> None:
        self._model, self._pool = model, pool
        self._config = PoolConfig.model_validate(pool_config)
        self._metrics = ReplicaMetrics.create()
        self._variants: dict[str, LoadedVariant] = {}
        self._load_seconds: dict[str, float] = {}
        # Sessions open in the inference threads so that ONNX Runtime's own threads share
        # their priority.
        self._executor = inference_executor(pool, self._config)
        for name, raw in artifacts.items():
            start = time.perf_counter()
            variant = self._executor.submit(
                load_variant, ArtifactRef.model_validate(raw), self._config
            ).result()
            self._executor.submit(_warmup, variant).result()
            self._variants[name] = variant
            self._load_seconds[name] = time.perf_counter() - start
            logger.info(
                "%s/%s on %s: loaded %s (%s)", model, name, pool, raw["uri"], variant.provider
            )
        batching = self._config.batching
        if batching is not None:
            self._batched.set_max_batch_size(batching.max_batch_size)
            self._batched.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)
        self._report_gauges()
        refresh_forever(self._report_gauges, f"{model}-{pool} gauges")

    def _report_gauges(self) -> None:
        """Load time, RSS, its limit and GPU memory of every variant."""
        rss, limit = float(rss_bytes()), float(memory_limit_bytes())
        gpu = float(gpu_memory_bytes()) if self._config.device == "cuda" else 0.0
        for name in self._variants:
            tags = {"model": self._model, "variant": name, "pool": self._pool}
            self._metrics.load_seconds.set(self._load_seconds[name], tags=tags)
            self._metrics.memory.set(rss, tags=tags)
            self._metrics.memory_limit.set(limit, tags=tags)
            self._metrics.gpu_memory.set(gpu, tags=tags)

    def signature(self) -> dict[str, Any]:
        """Inputs, outputs and manifest of every variant (for metadata endpoints)."""
        return {
            name: {
                "inputs": [s.to_json() for s in v.inputs],
                "outputs": [s.to_json() for s in v.outputs],
                "provider": v.provider,
                "precision": v.manifest.precision.value,
            }
            for name, v in self._variants.items()
        }

    def health(self) -> str:
        """Answers when the replica is up (the router's recovery probe)."""
        return "ok"

    def _variant(self, name: str) -> LoadedVariant:
        if name not in self._variants:
            raise UnknownModel(f"variant {name!r} is not loaded on pool {self._pool!r}")
        return self._variants[name]

    def _run(self, variant: str, inputs: Tensors) -> Tensors:
        loaded = self._variant(variant)
        checked = check_inputs(inputs, loaded.inputs)
        results = loaded.session.run(None, checked)
        return {spec.name: np.asarray(r) for spec, r in zip(loaded.outputs, results, strict=True)}

    async def _in_executor(self, variant: str, inputs: Tensors) -> Tensors:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, variant, inputs)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.005)  # type: ignore[untyped-decorator]
    async def _batched(self, items: list[tuple[str, Tensors]]) -> list[Tensors | Exception]:
        """Requests of one variant and shape run together; the rest run alone."""
        groups: dict[tuple[Any, ...], list[int]] = defaultdict(list)
        results: list[Tensors | Exception] = [BadRequest("unprocessed")] * len(items)
        for index, (variant, inputs) in enumerate(items):
            try:  # a bad request fails alone, never the batch it would have joined
                check_inputs(inputs, self._variant(variant).inputs)
            except (BadRequest, UnknownModel) as exc:
                results[index] = exc
                continue
            shapes = ((n, a.ndim, a.shape[1:], a.dtype.str) for n, a in sorted(inputs.items()))
            groups[(variant, *shapes)].append(index)
        for indices in groups.values():
            variant = items[indices[0]][0]
            names = items[indices[0]][1].keys()
            stacked = {n: np.concatenate([items[i][1][n] for i in indices]) for n in names}
            self._metrics.batch_size.observe(
                len(indices), tags={"model": self._model, "pool": self._pool}
            )
            try:
                outputs = await self._in_executor(variant, stacked)
            except (BadRequest, UnknownModel) as exc:
                for i in indices:
                    results[i] = exc
                continue
            offset = 0
            for i in indices:
                rows = next(iter(items[i][1].values())).shape[0]
                results[i] = {n: o[offset : offset + rows] for n, o in outputs.items()}
                offset += rows
        return results

    async def infer(self, variant: str, inputs: Tensors) -> tuple[Tensors, float]:
        """Run one request: the model's outputs by name, and seconds spent in the replica
        (batch wait included; the ingress reports it in ``Server-Timing``)."""
        start = time.perf_counter()
        if self._config.batching is None:
            self._metrics.batch_size.observe(1, tags={"model": self._model, "pool": self._pool})
            result = await self._in_executor(variant, inputs)
        else:
            outcome = await self._batched((variant, inputs))
            if isinstance(outcome, Exception):
                raise outcome
            result = outcome
        return result, time.perf_counter() - start
