"""A model replica: verified artifacts on ONNX Runtime, one deployment per (model, pool).

A replica verifies every artifact it is given (sha256 against the config, gates passed),
opens it on its pool's device, warms it up, and only then reports healthy. It holds its own
queue (``serving.batch_queue``): it runs ``max_ongoing_requests`` model calls at once,
batches what waits (same variant and shapes, up to ``batching.max_batch_size`` rows),
drops a job whose deadline passed before it ran, and refuses at once what it cannot hold.
Every answer says how much it holds, which is how each ingress sees the whole pool's load.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from pydantic import ValidationError
from ray import serve

from optimize.errors import OptimizeError
from optimize.manifest import (
    MODEL_FILE,
    PROVIDERS,
    Device,
    Manifest,
    verify_artifact,
)
from serving.batch_queue import BatchQueue, Entry
from serving.calls import Job, Outcome, Reply, Status, Tensors
from serving.config import ArtifactRef, PoolConfig
from serving.errors import BadRequest, ConfigError, ServingError, UnknownModel
from serving.fetch import resolve_artifact
from serving.metrics import ReplicaMetrics, refresh_forever
from serving.protocols.v2 import (
    BYTES,
    ONNX_TO_V2,
    TEXT_INPUT,
    TensorSpec,
    check_inputs,
)
from serving.replica_memory import gpu_memory_bytes, memory_limit_bytes, rss_bytes
from serving.tasks import task_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedVariant:
    """One artifact open on ONNX Runtime."""

    manifest: Manifest
    directory: Path
    session: ort.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    provider: str
    tokenizer: Any = None  # text models: the artifact's tokenizer (``tokenizers``)

    def feeds(self, inputs: Tensors) -> Tensors:
        """What the session takes: text tokenized (padded to the longest), else as given."""
        if self.tokenizer is None:
            return inputs
        encoded = self.tokenizer.encode_batch([str(t) for t in inputs[TEXT_INPUT].tolist()])
        return {
            "input_ids": np.asarray([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.asarray([e.attention_mask for e in encoded], dtype=np.int64),
        }

    @property
    def batchable(self) -> bool:
        """Requests can share a call: every input has a free first (batch) axis."""
        return all(spec.shape and spec.shape[0] < 0 for spec in self.inputs)


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
    if not pool.spin_threads:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(
        str(directory / MODEL_FILE), options, providers=PROVIDERS[pool.device]
    )
    provider = session.get_providers()[0]
    if pool.device is Device.CUDA and provider != "CUDAExecutionProvider":
        raise ConfigError(
            f"pool device is cuda but ONNX Runtime runs {directory} on {provider}: "
            "CUDA is not usable on this node"
        )
    tokenizer = task_of(manifest.input).load_tokenizer(directory)
    if tokenizer is not None:  # text in: tokenized here
        return LoadedVariant(
            manifest=manifest,
            directory=directory,
            session=session,
            inputs=(TensorSpec(TEXT_INPUT, BYTES, (-1,)),),
            outputs=_specs(session.get_outputs()),
            provider=provider,
            tokenizer=tokenizer,
        )
    return LoadedVariant(
        manifest=manifest,
        directory=directory,
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


# What a model call can raise on inputs that passed the signature check: ONNX Runtime's
# own errors (they derive from Exception only), and numpy's while stacking or splitting.
MODEL_FAILURES: tuple[type[Exception], ...] = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.RuntimeException,
    ort_errors.EPFail,
    ort_errors.NotImplemented,
    ort_errors.EngineError,
    RuntimeError,
    ValueError,
    MemoryError,
)
# What loading one variant may raise: a bad artifact (hash, gates, fetch), a model ONNX
# Runtime cannot open, a device that is not there.
LOAD_FAILURES: tuple[type[Exception], ...] = (ServingError, OptimizeError, *MODEL_FAILURES)
RELOAD_S = 5.0  # how often a replica tries again to load a variant that failed
# A variant a new config drops serves this much longer: the ingresses, reconfigured at the
# same time, may still send it requests until they have taken the same config in.
UNLOAD_GRACE_S = 30.0


@dataclass(frozen=True)
class _Waiting:
    job: Job
    done: asyncio.Future[Outcome]


def batch_key(job: Job) -> Hashable:
    """Jobs with equal keys can share a model call: same variant, dtypes and row shapes."""
    return (
        job.variant,
        tuple((n, a.dtype.str, a.shape[1:]) for n, a in sorted(job.inputs.items())),
    )


def _split(outputs: Tensors, rows: list[int]) -> list[Tensors] | None:
    """Each job's rows of a batched call's outputs; None when an output is not by row."""
    total = sum(rows)
    if any(o.ndim == 0 or o.shape[0] != total for o in outputs.values()):
        return None
    parts, offset = [], 0
    for count in rows:
        parts.append({n: o[offset : offset + count] for n, o in outputs.items()})
        offset += count
    return parts


class ReplicaRunner:
    """Jobs through a ``BatchQueue`` into model calls on the inference threads."""

    def __init__(
        self,
        queue: BatchQueue[_Waiting],
        model: Callable[[str, Tensors], Tensors],
        executor: Executor,
        *,
        clock: Callable[[], float] = time.time,
        on_dropped: Callable[[str, int], None] = lambda reason, count: None,
        on_call: Callable[[int], None] = lambda rows: None,
        batchable: Callable[[str], bool] = lambda variant: True,
    ) -> None:
        self.queue = queue
        self._batchable = batchable  # a variant whose inputs all have a free first axis
        self._model = model
        self._executor = executor
        self._clock = clock
        self._on_dropped = on_dropped  # jobs never run: reason ("deadline", "cancelled"), count
        self._on_call = on_call  # a model call started, with this many rows

    async def submit(self, job: Job) -> Outcome:
        """Run ``job`` in a model call (alone or batched), or refuse it when full."""
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        key = batch_key(job) if self._batchable(job.variant) else object()  # alone: unique
        entry = Entry(key, job.rows, job.deadline, _Waiting(job, done))
        if not self.queue.admit(entry):
            return Outcome(Status.FULL, detail="the replica holds all it may")
        self._start_calls()
        try:
            return await done
        except asyncio.CancelledError:  # the caller gave up (its deadline): never run it
            if self.queue.cancel(entry):
                self._on_dropped("cancelled", 1)
            raise

    def _start_calls(self) -> None:
        while True:
            batch, expired = self.queue.take(self._clock())
            for entry in expired:
                if not entry.token.done.done():
                    entry.token.done.set_result(
                        Outcome(Status.EXPIRED, detail="its deadline passed before it ran")
                    )
            if expired:
                self._on_dropped("deadline", len(expired))
            if not batch:
                return
            asyncio.get_running_loop().create_task(self._call(batch))

    async def _call(self, batch: list[Entry[_Waiting]]) -> None:
        loop = asyncio.get_running_loop()
        jobs = [e.token.job for e in batch]
        rows = [e.rows for e in batch]
        self._on_call(sum(rows))
        try:
            outcomes = await loop.run_in_executor(self._executor, self._run, jobs, rows)
        finally:
            self.queue.done(batch)
        for entry, outcome in zip(batch, outcomes, strict=True):
            if not entry.token.done.done():
                entry.token.done.set_result(outcome)
        self._start_calls()

    def _run(self, jobs: list[Job], rows: list[int]) -> list[Outcome]:
        """One model call for ``jobs`` (inference thread); a job alone if outputs are not
        by row."""
        start = time.perf_counter()
        variant = jobs[0].variant
        try:
            if len(jobs) == 1:
                outputs = self._model(variant, jobs[0].inputs)
                parts: list[Tensors] | None = [outputs]
            else:
                names = jobs[0].inputs.keys()
                stacked = {n: np.concatenate([j.inputs[n] for j in jobs]) for n in names}
                parts = _split(self._model(variant, stacked), rows)
        except MODEL_FAILURES as exc:
            if len(jobs) > 1:  # one request's inputs may have failed the call: only it fails
                return [self._run([job], [n])[0] for job, n in zip(jobs, rows, strict=True)]
            if isinstance(exc, ort_errors.InvalidArgument):  # inputs the graph cannot take
                detail = f"the model cannot take these inputs: {exc}"
                return [Outcome(Status.BAD_REQUEST, detail=detail)]
            detail = f"the model failed: {type(exc).__name__}: {exc}"
            return [Outcome(Status.MODEL_ERROR, detail=detail)]
        if parts is None:
            return [self._run([job], [count])[0] for job, count in zip(jobs, rows, strict=True)]
        seconds = time.perf_counter() - start
        return [
            Outcome(Status.OK, outputs=part, run_s=seconds, batch_rows=sum(rows)) for part in parts
        ]


def _warmup(variant: LoadedVariant) -> None:
    """One call before the replica reports healthy, on what its task says: the inputs an
    imported model was measured on, one second of silence, a sentence."""
    task = task_of(variant.manifest.input)
    feeds = task.warmup_feeds(variant.directory, list(variant.inputs))
    if feeds is None:  # text: the replica's own tokenizer makes them
        feeds = variant.feeds({TEXT_INPUT: np.array(["a sentence to warm up"], dtype=object)})
    variant.session.run(None, feeds)


class ModelReplica:
    """The Serve deployment class behind every (model, pool)."""

    def __init__(
        self,
        model: str,
        pool: str,
        pool_config: PoolConfig | dict[str, Any],
    ) -> None:
        """The variants come with ``reconfigure`` (Serve calls it before the first request,
        and again whenever they change)."""
        self._model, self._pool = model, pool
        self._config = PoolConfig.model_validate(pool_config)  # parsed already: kept as is
        self._metrics = ReplicaMetrics.create()
        self._variants: dict[str, LoadedVariant] = {}
        self._load_seconds: dict[str, float] = {}
        # Sessions open in the inference threads so that ONNX Runtime's own threads share
        # their priority.
        self._executor = inference_executor(pool, self._config)
        self._not_loaded: dict[str, str] = {}  # variant -> why its artifact did not load
        self._artifacts: dict[str, dict[str, str]] = {}
        self._retiring: dict[str, float] = {}  # variant dropped -> when it is unloaded
        self._retired_artifacts: dict[str, dict[str, str]] = {}
        self._load_lock = threading.Lock()
        self._id: str = serve.get_replica_context().replica_id.unique_id
        self._tags = {"model": model, "pool": pool}
        batching = self._config.batching
        self._runner = ReplicaRunner(
            BatchQueue(
                slots=self._config.max_ongoing_requests,
                max_batch=batching.max_batch_size if batching is not None else 1,
                queue_limit=self._config.max_queued_requests,
            ),
            self._run,
            self._executor,
            on_dropped=self._count_dropped,
            on_call=self._count_call,
            batchable=lambda variant: (
                variant in self._variants and self._variants[variant].batchable
            ),
        )
        self._report_gauges()
        refresh_forever(self._report_gauges, f"{model}-{pool} gauges")
        refresh_forever(self._load_again, f"{model}-{pool} variant loads", every_s=RELOAD_S)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        """Serve the variants ``user_config["artifacts"]`` names (variant -> artifact): load
        the new and changed ones beside those serving, then swap; drop the ones gone. A
        changed artifact that fails to load leaves the old one serving."""
        try:
            wanted = {
                name: ArtifactRef.model_validate(raw).model_dump(mode="json")
                for name, raw in user_config["artifacts"].items()
            }
        except (KeyError, TypeError, AttributeError, ValidationError) as exc:
            raise ConfigError(
                f"{self._model} on pool {self._pool}: user_config must be "
                f"{{'artifacts': {{variant: {{uri, sha256}}}}}}, got {user_config!r} ({exc})"
            ) from exc
        await asyncio.to_thread(self._apply, wanted)
        if not self._variants:
            raise ConfigError(
                f"{self._model} on pool {self._pool}: no variant could be loaded: "
                + "; ".join(f"{n}: {why}" for n, why in self._not_loaded.items())
            )

    def _apply(self, wanted: dict[str, dict[str, str]]) -> None:
        with self._load_lock:
            previous = self._artifacts | self._retired_artifacts
            changed = [n for n, raw in wanted.items() if previous.get(n) != raw]
            for name in wanted:  # back before it was unloaded
                self._retiring.pop(name, None)
                self._retired_artifacts.pop(name, None)
            for name in set(self._artifacts) - set(wanted):
                self._retiring[name] = time.monotonic() + UNLOAD_GRACE_S
                self._retired_artifacts[name] = self._artifacts[name]
                self._not_loaded.pop(name, None)
            self._artifacts = dict(wanted)
            for name in changed:
                if not self._load(name) and name in self._variants:
                    # the old artifact keeps serving; the next deploy brings it back in line
                    self._artifacts[name] = previous[name]
                    self._not_loaded.pop(name, None)

    def _unload_retired(self) -> None:
        """Drop the variants whose grace after a config dropped them has passed."""
        now = time.monotonic()
        for name, when in list(self._retiring.items()):
            if when <= now and name not in self._artifacts:
                del self._retiring[name]
                self._retired_artifacts.pop(name, None)
                self._variants.pop(name, None)
                self._load_seconds.pop(name, None)
                tags = {"model": self._model, "variant": name, "pool": self._pool}
                self._metrics.loaded.set(0, tags=tags)
                logger.info("%s/%s on %s: unloaded", self._model, name, self._pool)

    def loaded(self, replica: str | None = None) -> tuple[str, list[str]]:
        """This replica's id and the variants it serves now (``replica``: the ingress's
        pin); the ingress waits for a new variant here before it sends it any request."""
        return self._id, sorted(self._variants)

    def _load(self, name: str) -> bool:
        """Verify, load and warm up one variant; on failure, record why and go on (one bad
        variant, a canary's corrupt upload, must not stop the others)."""
        start = time.perf_counter()
        raw = self._artifacts[name]
        try:
            variant = self._executor.submit(
                load_variant, ArtifactRef.model_validate(raw), self._config
            ).result()
            self._executor.submit(_warmup, variant).result()
        except LOAD_FAILURES as exc:
            why = str(getattr(exc, "detail", exc))
            if self._not_loaded.get(name) != why:
                logger.error(
                    "%s/%s on %s: NOT loaded (the others serve): %s",
                    self._model,
                    name,
                    self._pool,
                    why,
                )
            self._not_loaded[name] = why
            return False
        self._variants[name] = variant
        self._load_seconds[name] = time.perf_counter() - start
        self._not_loaded.pop(name, None)
        logger.info(
            "%s/%s on %s: loaded %s (%s)",
            self._model,
            name,
            self._pool,
            raw["uri"],
            variant.provider,
        )
        return True

    def _load_again(self) -> None:
        """Try the variants that failed to load again (the artifact may have been fixed);
        unload those dropped a grace period ago."""
        with self._load_lock:
            for name in list(self._not_loaded):
                self._load(name)
            self._unload_retired()

    def _report_gauges(self) -> None:
        """Load time, RSS, its limit and GPU memory of every variant."""
        rss, limit = float(rss_bytes()), float(memory_limit_bytes())
        gpu = float(gpu_memory_bytes()) if self._config.device is Device.CUDA else 0.0
        for name in list(self._not_loaded):  # copies: a reconfigure may change them meanwhile
            tags = {"model": self._model, "variant": name, "pool": self._pool}
            self._metrics.loaded.set(0, tags=tags)
        for name in list(self._variants):
            tags = {"model": self._model, "variant": name, "pool": self._pool}
            self._metrics.loaded.set(1, tags=tags)
            self._metrics.load_seconds.set(self._load_seconds.get(name, 0.0), tags=tags)
            self._metrics.memory.set(rss, tags=tags)
            self._metrics.memory_limit.set(limit, tags=tags)
            self._metrics.gpu_memory.set(gpu, tags=tags)

    def _count_dropped(self, reason: str, count: int) -> None:
        self._metrics.dropped.inc(count, tags=self._tags | {"reason": reason})

    def _count_call(self, rows: int) -> None:
        self._metrics.batch_size.observe(rows, tags=self._tags)

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

    def check_health(self) -> None:
        """Serve's health check: a replica that was given no variants serves nothing."""
        if not self._artifacts:
            raise ConfigError(
                f"{self._model} on pool {self._pool}: no variants given; they come as this "
                "deployment's user_config (serveConfigV2 'deployments', as the chart renders "
                "them, or serving.server.application_config)"
            )

    def health(self, replica: str | None = None) -> str:
        """This replica's id: the router's recovery probe checks who answered."""
        return self._id

    def _variant(self, name: str) -> LoadedVariant:
        if name not in self._variants:
            raise UnknownModel(f"variant {name!r} is not loaded on pool {self._pool!r}")
        return self._variants[name]

    def _run(self, variant: str, inputs: Tensors) -> Tensors:
        """One model call (in an inference thread)."""
        loaded = self._variants[variant]
        results = loaded.session.run(None, loaded.feeds(inputs))
        return {spec.name: np.asarray(r) for spec, r in zip(loaded.outputs, results, strict=True)}

    def _checked(self, job: Job) -> Outcome | None:
        """The job's outcome when it cannot run (unknown variant, inputs that do not fit)."""
        if job.variant in self._not_loaded and job.variant not in self._variants:
            why = self._not_loaded[job.variant]
            detail = f"variant {job.variant!r} is not loaded on pool {self._pool!r}: {why}"
            return Outcome(Status.NOT_LOADED, detail=detail)
        try:
            check_inputs(job.inputs, self._variant(job.variant).inputs)
        except UnknownModel as exc:
            return Outcome(Status.UNKNOWN_VARIANT, detail=exc.detail)
        except BadRequest as exc:
            return Outcome(Status.BAD_REQUEST, detail=exc.detail)
        return None

    async def infer(self, jobs: list[Job], replica: str | None = None) -> Reply:
        """Run ``jobs`` (``replica`` is the ingress's routing pin, read by Serve's router).

        The reply says, per job, its outputs or why it did not run, and how many rows this
        replica holds now (from every caller).
        """
        start = time.perf_counter()
        refused = [self._checked(job) for job in jobs]
        if len(jobs) == 1:
            outcomes = [refused[0] or await self._runner.submit(jobs[0])]
        else:
            outcomes = await asyncio.gather(
                *(
                    self._runner.submit(job) if early is None else _ready(early)
                    for job, early in zip(jobs, refused, strict=True)
                )
            )
        return Reply(
            outcomes=list(outcomes),
            replica=self._id,
            held=self._runner.queue.held,
            replica_s=time.perf_counter() - start,
            artifacts={
                job.variant: self._variants[job.variant].manifest.variant
                for job in jobs
                if job.variant in self._variants
            },
        )


async def _ready(outcome: Outcome) -> Outcome:
    return outcome
