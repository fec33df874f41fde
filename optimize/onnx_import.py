"""``sluiceway import``: any ONNX model -> artifacts with a measured, gated manifest.

The signature comes from the graph (names, element types, fixed and free dimensions). The
model is measured on example inputs (``.npz`` files, no pickle) or on seeded inputs built
from the signature, at shapes the user may choose (``--dim NAME=N`` for a free dimension).
The imported model is one artifact (named by its precision: ``fp32``, ``fp16`` or
``int8``); ``--variants fp16,int8`` adds converted copies, each gated on how close its
outputs stay to the imported model's on the same inputs.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from optimize.errors import GatesFailed, InputError, ModelLoadError
from optimize.gates import judge_table
from optimize.manifest import (
    EXAMPLES_FILE,
    MODEL_FILE,
    POOL_OF_PRECISION,
    GateResult,
    Manifest,
    Measurements,
    Precision,
    Recipe,
    SourceInfo,
    TensorFidelity,
    TensorSpec,
    TensorsSpec,
    Throughput,
    digest_files,
    sha256_file,
    utc_now,
    write_manifest,
)
from optimize.measure import (
    fastest_call,
    interleaved_calls,
    latency_stats,
    peak_rss_of_inputs,
    timed,
)
from optimize.progress import ProgressFn, no_progress
from optimize.quantize import DynamicStage, apply_dynamic, convert_fp16
from optimize.runtime import open_session, provider_of

logger = logging.getLogger(__name__)

Feeds = dict[str, NDArray[Any]]

# ONNX Runtime's type names -> v2 datatypes and numpy dtypes.
_TYPES: dict[str, tuple[str, str]] = {
    "tensor(float)": ("FP32", "<f4"),
    "tensor(float16)": ("FP16", "<f2"),
    "tensor(double)": ("FP64", "<f8"),
    "tensor(int8)": ("INT8", "i1"),
    "tensor(int16)": ("INT16", "<i2"),
    "tensor(int32)": ("INT32", "<i4"),
    "tensor(int64)": ("INT64", "<i8"),
    "tensor(uint8)": ("UINT8", "u1"),
    "tensor(uint16)": ("UINT16", "<u2"),
    "tensor(uint32)": ("UINT32", "<u4"),
    "tensor(uint64)": ("UINT64", "<u8"),
    "tensor(bool)": ("BOOL", "?"),
}
NUMPY_OF_V2 = {v2: np.dtype(code) for v2, code in _TYPES.values()}
# Gates of a converted copy against the imported model, on the same inputs.
DEFAULT_MIN_COSINE = {Precision.FP16: 0.999, Precision.INT8: 0.99}
GATE_NAMES = ("min_cosine", "max_abs_error", "max_rel_error", "max_nonfinite_outputs")


class ImportConfig(BaseModel):
    """Everything `sluiceway import` needs; every field has a default but model and output."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: Path = Field(description="an .onnx file")
    output: Path
    variants: tuple[Precision, ...] = ()
    example_inputs: tuple[Path, ...] = Field((), description=".npz files, one input set each")
    dims: dict[str, int] = Field(default_factory=dict, description="free dimension -> size")
    samples: int = Field(8, ge=1, description="seeded input sets when no example inputs")
    threads: int = Field(2, ge=1, le=256)
    latency_runs: int = Field(50, ge=5)
    throughput_batch: int = Field(8, ge=1)
    gate_overrides: dict[Precision | None, dict[str, float]] = Field(default_factory=dict)
    seed: int = 0
    overwrite: bool = False


# -- the signature ----------------------------------------------------------------------


def _spec(arg: Any) -> TensorSpec:
    if arg.type not in _TYPES:
        raise InputError(
            f"{arg.name!r} is a {arg.type}: Sluiceway serves tensors of "
            f"{', '.join(sorted(_TYPES))} (sequences, maps and strings are not supported)"
        )
    shape = [
        d if isinstance(d, int) else (d or f"{arg.name}.{axis}") for axis, d in enumerate(arg.shape)
    ]
    return TensorSpec(name=arg.name, datatype=_TYPES[arg.type][0], shape=shape)


def check_onnx_file(path: Path) -> None:
    """Refuse, with one clear error, what is not a readable ONNX model."""
    if not path.is_file():
        raise InputError(f"{path} does not exist or is not a file; give the path of an .onnx")
    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, onnx.onnx_cpp2py_export.checker.ValidationError) as e:
        raise InputError(f"{path} is not a valid ONNX model: {str(e).strip()[:300]}") from e
    except Exception as exc:  # protobuf decode errors have no public class
        raise InputError(
            f"{path} is not an ONNX model ({type(exc).__name__}: {str(exc).strip()[:200]}); "
            "export one with torch.onnx.export or optimum, or check the file is not truncated"
        ) from exc


def read_signature(session: Any) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an open ONNX Runtime session."""
    return [_spec(a) for a in session.get_inputs()], [_spec(a) for a in session.get_outputs()]


# -- inputs to measure on ---------------------------------------------------------------


def _size(spec: TensorSpec, axis: int, dim: int | str, dims: Mapping[str, int]) -> int:
    if isinstance(dim, int) and dim >= 0:
        return dim
    name = str(dim)
    if name in dims:
        return dims[name]
    return 1 if axis == 0 else 16


# what an index passes through unchanged on its way to a Gather's table
_INDEX_PRESERVING = {"Cast", "Unsqueeze", "Squeeze", "Reshape", "Identity", "Flatten", "Expand"}
SEEDED_INT_HIGH = 10  # integers below this, unless a table the graph gathers from is smaller


def index_bounds(path: Path, inputs: Sequence[TensorSpec]) -> dict[str, int]:
    """For each integer input that indexes a table in the graph (token ids, token types,
    positions), the rows of its smallest such table: ids at or above it make ONNX Runtime's
    Gather fail, or a model produce garbage."""
    graph = onnx.load(str(path), load_external_data=False).graph
    rows = {t.name: int(t.dims[0]) for t in graph.initializer if t.dims}
    bounds: dict[str, int] = {}
    for spec in inputs:
        if NUMPY_OF_V2[spec.datatype].kind not in "iu":
            continue
        carries = {spec.name}
        for node in graph.node:  # in topological order, as ONNX requires
            if node.op_type in _INDEX_PRESERVING and node.input and node.input[0] in carries:
                carries.update(node.output)
            elif node.op_type == "Gather" and len(node.input) == 2 and node.input[1] in carries:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                table = node.input[0]
                if axis == 0 and table in rows:
                    bounds[spec.name] = min(bounds.get(spec.name, rows[table]), rows[table])
    return bounds


def seeded_inputs(
    inputs: Sequence[TensorSpec],
    dims: Mapping[str, int],
    count: int,
    seed: int,
    bounds: Mapping[str, int] | None = None,
) -> list[Feeds]:
    """``count`` input sets built from the signature: free dimensions from ``dims`` (else 1
    on the first axis, 16 elsewhere); floats normal; an integer input named as a mask all
    ones (every token attended, as in an unpadded request: a mask holds 0 or 1); other
    integers in [0, 10) and below ``bounds`` (the rows of the table an input indexes,
    ``index_bounds``); booleans."""
    rng = np.random.default_rng(seed)
    sets = []
    for _ in range(count):
        feeds: Feeds = {}
        for spec in inputs:
            shape = [_size(spec, axis, d, dims) for axis, d in enumerate(spec.shape)]
            dtype = NUMPY_OF_V2[spec.datatype]
            high = min(SEEDED_INT_HIGH, (bounds or {}).get(spec.name, SEEDED_INT_HIGH))
            if dtype.kind == "f":
                feeds[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                feeds[spec.name] = rng.integers(0, 2, shape).astype(bool)
            elif spec.name.lower().endswith("mask"):
                feeds[spec.name] = np.ones(shape, dtype)
            else:
                feeds[spec.name] = rng.integers(0, max(high, 1), shape).astype(dtype)
        sets.append(feeds)
    return sets


def load_examples(paths: Sequence[Path], inputs: Sequence[TensorSpec]) -> list[Feeds]:
    """Input sets from ``.npz`` files (no pickle), each checked against the signature."""
    sets = []
    for path in paths:
        try:
            with np.load(path, allow_pickle=False) as data:
                feeds = {key: np.asarray(data[key]) for key in data.files}
        except (OSError, ValueError) as exc:
            raise InputError(f"{path} is not a readable .npz of arrays: {exc}") from exc
        check_example(path, feeds, inputs)
        sets.append(feeds)
    return sets


def check_example(where: Path, feeds: Feeds, inputs: Sequence[TensorSpec]) -> None:
    """Refuse example inputs that do not match the signature, naming the input."""
    expected = {s.name: s for s in inputs}
    missing = [n for n in expected if n not in feeds]
    if missing:
        raise InputError(
            f"{where}: no array for input(s) {missing}; the model takes {list(expected)}"
        )
    extra = [n for n in feeds if n not in expected]
    if extra:
        raise InputError(f"{where}: {extra} are not inputs of the model; it takes {list(expected)}")
    for name, array in feeds.items():
        spec = expected[name]
        dtype = NUMPY_OF_V2[spec.datatype]
        if array.dtype != dtype:
            raise InputError(
                f"{where}: input {name!r} is {array.dtype}; the model takes {spec.datatype} "
                f"({dtype})"
            )
        if array.ndim != len(spec.shape):
            raise InputError(
                f"{where}: input {name!r} has shape {list(array.shape)}; the model takes rank "
                f"{len(spec.shape)} {spec.shape}"
            )
        for axis, (size, dim) in enumerate(zip(array.shape, spec.shape, strict=True)):
            if isinstance(dim, int) and dim >= 0 and size != dim:
                raise InputError(
                    f"{where}: input {name!r} has {size} on axis {axis}; the model fixes it "
                    f"at {dim} (shape {spec.shape})"
                )


# -- measuring and comparing --------------------------------------------------------------


def _run_all(session: Any, sets: Sequence[Feeds]) -> list[list[NDArray[Any]]]:
    try:
        return [[np.asarray(o) for o in session.run(None, feeds)] for feeds in sets]
    except Exception as exc:  # ONNX Runtime's errors have no common public base
        raise InputError(
            f"the model failed on its example inputs: {str(exc).strip()[:400]}; give inputs it "
            "accepts with --example-inputs FILE.npz or sizes with --dim NAME=N"
        ) from exc


def compare(
    reference: Sequence[Sequence[NDArray[Any]]], candidate: Sequence[Sequence[NDArray[Any]]]
) -> TensorFidelity:
    """How close ``candidate``'s outputs are to ``reference``'s, over every set and output."""
    max_abs = max_rel = 0.0
    min_cos = 1.0
    nonfinite = 0
    for ref_set, cand_set in zip(reference, candidate, strict=True):
        for ref, cand in zip(ref_set, cand_set, strict=True):
            r = ref.astype(np.float64).ravel()
            c = cand.astype(np.float64).ravel()
            finite = np.isfinite(c)
            nonfinite += int((~finite).sum())
            if r.size == 0:
                continue
            both = finite & np.isfinite(r)
            diff = np.abs(r[both] - c[both])
            if diff.size:
                max_abs = max(max_abs, float(diff.max()))
                if np.issubdtype(ref.dtype, np.floating):
                    max_rel = max(max_rel, float((diff / (np.abs(r[both]) + 1e-6)).max()))
            norms = float(np.linalg.norm(r[both]) * np.linalg.norm(c[both]))
            cos = (
                float(np.dot(r[both], c[both]) / norms)
                if norms > 0
                else float(np.array_equal(r[both], c[both]))
            )
            min_cos = min(min_cos, cos)
    return TensorFidelity(
        samples=len(reference),
        max_abs_error=max_abs,
        max_rel_error=max_rel,
        min_cosine=min_cos,
        nonfinite_outputs=nonfinite,
    )


def _gates(
    fidelity: TensorFidelity, precision: Precision | None, overrides: Mapping[str, float]
) -> list[GateResult]:
    """No NaN or infinity ever; a converted copy (``precision``) stays close in cosine; any
    gate the user gave (``--gate``) on top."""
    table: dict[str, float] = {"max_nonfinite_outputs": 0.0}
    if precision is not None:
        table["min_cosine"] = DEFAULT_MIN_COSINE[precision]
    table.update(overrides)
    values = {
        "min_cosine": fidelity.min_cosine,
        "max_abs_error": fidelity.max_abs_error,
        "max_rel_error": fidelity.max_rel_error,
        "max_nonfinite_outputs": float(fidelity.nonfinite_outputs),
    }
    return judge_table(table, values)


def _batchable(inputs: Sequence[TensorSpec]) -> bool:
    """Every input has a free first axis: sets can be stacked into a batch."""
    return all(s.shape and not isinstance(s.shape[0], int) for s in inputs)


def _throughput(
    run: Callable[[Feeds], object], sets: Sequence[Feeds], inputs: Sequence[TensorSpec], batch: int
) -> Throughput:
    if not _batchable(inputs):
        batch = 1
        block = sets[0]
    else:
        block = {
            s.name: np.concatenate([sets[i % len(sets)][s.name] for i in range(batch)])
            for s in inputs
        }
        batch = next(iter(block.values())).shape[0]
    return Throughput(batch=batch, clips_per_s=batch / fastest_call(run, block))


def detect_precision(path: Path) -> Precision:
    """int8 when the graph holds 8-bit weights, fp16 when most float weights are fp16."""
    graph = onnx.load(str(path), load_external_data=False).graph
    counts: dict[int, int] = {}
    for tensor in graph.initializer:
        counts[tensor.data_type] = counts.get(tensor.data_type, 0) + 1
    if counts.get(onnx.TensorProto.INT8, 0) + counts.get(onnx.TensorProto.UINT8, 0):
        return Precision.INT8
    if counts.get(onnx.TensorProto.FLOAT16, 0) > counts.get(onnx.TensorProto.FLOAT, 0):
        return Precision.FP16
    return Precision.FP32


# -- the job ----------------------------------------------------------------------------


def import_model(config: ImportConfig, progress: ProgressFn = no_progress) -> list[Manifest]:
    """Import ``config.model`` (and build ``config.variants``) into ``config.output``."""
    if config.output.exists() and not config.overwrite:
        raise InputError(
            f"{config.output} already exists; choose another --output or pass --overwrite"
        )
    check_onnx_file(config.model)
    work = config.output.with_name(f".{config.output.name}.tmp-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        manifests = _import_into(config, work, progress)
        if config.output.exists():
            shutil.rmtree(config.output)
        work.rename(config.output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    failures = [
        f"{m.variant}: {g.name} = {g.value:.4g} (needs {g.comparison} {g.threshold:g})"
        for m in manifests
        for g in m.failed_gates
    ]
    if failures:
        raise GatesFailed(failures)
    return manifests


def _import_into(config: ImportConfig, work: Path, progress: ProgressFn) -> list[Manifest]:
    precision = detect_precision(config.model)
    original = work / precision.value
    original.mkdir()
    shutil.copyfile(config.model, original / MODEL_FILE)
    try:
        session = open_session(original / MODEL_FILE, threads=config.threads)
    except ModelLoadError as exc:
        raise InputError(f"{config.model}: {exc.args[0].split('; the file')[0]}") from exc
    inputs, outputs = read_signature(session)
    progress("reading examples", 0, 0)
    if config.example_inputs:
        if config.dims:
            raise InputError(
                f"--dim {sorted(config.dims)}: sizes are for seeded inputs; with "
                "--example-inputs the examples' own shapes are measured: drop one of the two"
            )
        sets = load_examples(config.example_inputs, inputs)
    else:
        unknown = sorted(set(config.dims) - {str(d) for s in inputs for d in s.shape})
        if unknown:
            free = sorted({str(d) for s in inputs for d in s.shape if not isinstance(d, int)})
            raise InputError(f"--dim {unknown}: no such free dimension; the model has {free}")
        bounds = index_bounds(original / MODEL_FILE, inputs)
        sets = seeded_inputs(inputs, config.dims, config.samples, config.seed, bounds)
    reference = _run_all(session, sets)
    spec = TensorsSpec(
        inputs=inputs,
        outputs=outputs,
        example_shapes={name: list(array.shape) for name, array in sets[0].items()},
    )
    examples = work / EXAMPLES_FILE
    np.savez(examples, **sets[0])  # type: ignore[arg-type]  # the probe and warm-up run it
    source = SourceInfo(
        model=str(config.model),
        architecture="onnx",
        sha256=sha256_file(config.model),
        parameters=_parameters(original / MODEL_FILE),
    )
    built = [_artifact(config, original, precision, None, spec, source, sets, reference, progress)]
    for target in config.variants:
        if target is precision:
            continue
        directory = work / target.value
        directory.mkdir()
        progress(f"{target.value}: converting", 0, 0)
        if target is Precision.FP16:
            convert_fp16(original / MODEL_FILE, directory / MODEL_FILE)
        elif target is Precision.INT8:
            apply_dynamic(
                DynamicStage(("MatMul", "Gemm")), original / MODEL_FILE, directory / MODEL_FILE
            )
        else:
            raise InputError(f"--variants {target.value}: import converts to fp16 or int8 only")
        built.append(
            _artifact(config, directory, target, target, spec, source, sets, reference, progress)
        )
    examples.unlink()
    return built


def _parameters(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer)


def _artifact(
    config: ImportConfig,
    directory: Path,
    precision: Precision,
    converted: Precision | None,
    spec: TensorsSpec,
    source: SourceInfo,
    sets: Sequence[Feeds],
    reference: Sequence[Sequence[NDArray[Any]]],
    progress: ProgressFn,
) -> Manifest:
    path = directory / MODEL_FILE
    shutil.copyfile(directory.parent / EXAMPLES_FILE, directory / EXAMPLES_FILE)
    session, load_time = timed(lambda: open_session(path, threads=config.threads))
    label = precision.value

    def run(feeds: Feeds) -> object:
        return session.run(None, feeds)

    # the imported model against a second run of itself: what it does is what it did
    fidelity = compare(reference, _run_all(session, sets))
    samples = interleaved_calls(
        {label: run},
        sets,
        runs=config.latency_runs,
        progress=lambda s, d, t: progress(f"{label}: latency", d, t),
    )[label]
    progress(f"{label}: peak memory", 0, 0)
    rss = peak_rss_of_inputs(path, directory / EXAMPLES_FILE, threads=config.threads)
    overrides = {
        **config.gate_overrides.get(None, {}),
        **config.gate_overrides.get(precision, {}),
    }
    unknown = sorted(set(overrides) - set(GATE_NAMES))
    if unknown:
        raise InputError(f"--gate {unknown}: import's gates are {', '.join(GATE_NAMES)}")
    manifest = Manifest(
        variant=label,
        precision=precision,
        pool=POOL_OF_PRECISION[precision],
        created=utc_now(),
        source=source,
        input=spec,
        files=digest_files(directory, [MODEL_FILE, EXAMPLES_FILE]),
        recipe=Recipe(
            steps=(
                [f"imported from {config.model}"]
                if converted is None
                else [f"imported from {config.model}", _CONVERSIONS[converted]]
            ),
            opset=_opset(path),
        ),
        measurements=Measurements(
            provider=provider_of(session),
            size_bytes=path.stat().st_size,
            parameters=_parameters(path),
            load_time_s=load_time,
            latency=latency_stats(samples, batch=1, clip_seconds=None, threads=config.threads),
            throughput=_throughput(run, sets, spec.inputs, config.throughput_batch),
            peak_rss_bytes=rss,
        ),
        fidelity=fidelity,
        gates=_gates(fidelity, converted, overrides),
    )
    write_manifest(directory, manifest)
    return manifest


_CONVERSIONS = {
    Precision.FP16: "fp16 weights and compute, inputs/outputs kept, normalisations kept fp32",
    Precision.INT8: "dynamic int8 MatMul/Gemm (weights int8, activations quantized per call)",
}


def _opset(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
