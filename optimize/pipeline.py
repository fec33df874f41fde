"""checkpoint -> verified, measured artifacts: the `sluiceway optimize` job.

Everything is built in a temporary sibling of the output directory and moved into place
only when complete, so nothing half-written ever looks like an artifact.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from optimize.audio import AudioSet, load_folder, synthetic_set
from optimize.checkpoint import SourceModel, resolve_source
from optimize.distill import STUDENT_GATES, STUDENT_VARIANT, StudentRecipe, distill, student_source
from optimize.errors import DatasetError, GatesFailed, InputError, OptimizeError
from optimize.evaluate import fidelity, task_metrics
from optimize.export import INPUT_NAME, OPSET, OUTPUT_NAME, check_export, export_fp32
from optimize.gates import GateThresholds, judge, thresholds_for
from optimize.manifest import (
    MODEL_FILE,
    POOL_OF_PRECISION,
    WIDE_SPREAD,
    InputSpec,
    Manifest,
    Measurements,
    Precision,
    QuantizationCandidate,
    Recipe,
    SourceInfo,
    digest_files,
    read_manifest,
    utc_now,
    write_manifest,
)
from optimize.measure import (
    interleaved_latencies,
    latency_stats,
    peak_rss,
    spread,
    throughput,
    timed,
)
from optimize.progress import ProgressFn, no_progress
from optimize.quantize import (
    RECIPES_BY_NAME,
    Int8Recipe,
    convert_fp16,
    preprocess,
    quantize_int8,
)
from optimize.runtime import open_session, provider_of, run_logits

logger = logging.getLogger(__name__)

SOURCE_DIR = "source"


class OptimizeConfig(BaseModel):
    """Everything `sluiceway optimize` needs; every field has a sensible default but model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="preset name or checkpoint directory")
    output: Path
    variants: tuple[Precision, ...] = (Precision.FP32, Precision.FP16, Precision.INT8)
    seconds: float = Field(3.0, gt=0, le=60, description="clip length for eval and latency")
    max_seconds: float = Field(30.0, gt=0, description="longest clip serving accepts")
    threads: int = Field(2, ge=1, le=256)
    calibration_data: Path | None = None
    eval_data: Path | None = None
    eval_labels: Path | None = Field(None, description="CSV file,label for --eval-data")
    calibration_clips: int = Field(32, ge=1)
    eval_clips: int = Field(200, ge=2)
    latency_runs: int = Field(50, ge=5)
    candidate_runs: int = Field(20, ge=3)
    throughput_batch: int = Field(8, ge=1)
    int8_recipes: tuple[str, ...] = tuple(RECIPES_BY_NAME)
    gate_overrides: dict[Precision | None, dict[str, float]] = Field(default_factory=dict)
    seed: int = 0
    overwrite: bool = False
    add: bool = Field(
        False, description="keep the variants already in output; build only the missing ones"
    )
    student: StudentRecipe | None = Field(None, description="also build student-int8")


@dataclass(frozen=True)
class BuiltVariant:
    """One artifact directory and its manifest."""

    directory: Path
    manifest: Manifest


@dataclass
class _Context:
    config: OptimizeConfig
    work: Path
    source: SourceModel
    calibration: AudioSet
    evaluation: AudioSet
    source_logits: NDArray[np.float32]
    progress: ProgressFn


def _check_config(config: OptimizeConfig) -> None:
    if not config.variants and config.student is None:
        raise InputError("--variants is empty; choose from fp32, fp16, int8, student-int8")
    unknown = [r for r in config.int8_recipes if r not in RECIPES_BY_NAME]
    if unknown:
        raise InputError(f"unknown int8 recipe(s) {unknown}; known: {', '.join(RECIPES_BY_NAME)}")
    if config.add and config.overwrite:
        raise InputError("--add keeps what --output holds and --overwrite replaces it: pick one")
    if config.output.exists() and not (config.overwrite or config.add):
        raise InputError(
            f"{config.output} already exists; choose another --output, pass --add to build "
            "only the variants it lacks, or --overwrite to replace it"
        )


def built_variants(output: Path) -> dict[str, Manifest]:
    """The artifacts ``output`` holds (variant directory name -> manifest)."""
    if not output.is_dir():
        return {}
    return {
        p.name: read_manifest(p)
        for p in sorted(output.iterdir())
        if p.is_dir() and (p / "manifest.json").is_file()
    }


def _missing_only(config: OptimizeConfig) -> OptimizeConfig:
    """``config`` narrowed to the variants ``output`` lacks (``--add``)."""
    present = built_variants(config.output)
    student = config.student if STUDENT_VARIANT not in present else None
    variants = tuple(p for p in config.variants if p.value not in present)
    return config.model_copy(update={"variants": variants, "student": student})


def _check_same_source(output: Path, source: SourceModel) -> None:
    """``--add`` must build from the checkpoint the artifacts there came from."""
    for name, manifest in built_variants(output).items():
        if manifest.source.sha256 != source.sha256:
            raise InputError(
                f"{output / name} was built from a different checkpoint (sha256 "
                f"{manifest.source.sha256[:12]}..., this one {source.sha256[:12]}...): "
                "variants of one output must share their source; choose another --output "
                "or rebuild all with --overwrite"
            )


def _dataset(
    folder: Path | None,
    labels: Path | None,
    count: int,
    seed: int,
    config: OptimizeConfig,
    label_names: tuple[str, ...],
    rate: int,
) -> AudioSet:
    if folder is None:
        return synthetic_set(count, seconds=config.seconds, sample_rate=rate, seed=seed)
    data = load_folder(
        folder,
        sample_rate=rate,
        seconds=config.seconds,
        label_names=label_names,
        labels_csv=labels,
    )
    if len(data) < 2:
        raise DatasetError(f"{folder} holds {len(data)} clip(s); at least 2 are needed")
    return data


@torch.inference_mode()
def _torch_logits(
    source: SourceModel, clips: NDArray[np.float32], progress: ProgressFn
) -> NDArray[np.float32]:
    out = []
    total = len(clips)
    for i in range(0, total, 8):
        out.append(source.model(torch.from_numpy(clips[i : i + 8])).logits.numpy())
        progress("source model on the eval set", min(i + 8, total), total)
    return np.concatenate(out).astype(np.float32)


def _steady_latencies(
    ctx: _Context,
    label: str,
    run: Callable[[NDArray[np.float32]], object],
    clips: NDArray[np.float32],
) -> list[float]:
    """Latency runs, taken again once when their slices disagree (other work on the
    machine); the steadier set is kept, and a warning says when both were wide."""
    best: list[float] = []
    for attempt in (1, 2):
        samples = interleaved_latencies(
            {label: run},
            clips,
            runs=ctx.config.latency_runs,
            progress=lambda s, d, t: ctx.progress(f"{label}: latency", d, t),
        )[label]
        if not best or (spread(samples) or 1.0) < (spread(best) or 1.0):
            best = samples
        wide = spread(best)
        if wide is None or wide <= WIDE_SPREAD:
            return best
        if attempt == 1:
            logger.info("%s: latency slices %.2fx apart: measuring again", label, wide)
    logger.warning(
        "%s: latency varied %.2fx between slices of its runs twice: the machine was busy, so "
        "its P99 (and an SLO derived from it) reads high; rebuild on a quiet machine or give "
        "`deploy values --slo-p99-seconds`",
        label,
        wide,
    )
    return best


def _manifest(
    ctx: _Context,
    precision: Precision,
    variant_dir: Path,
    recipe: Recipe,
    logits: NDArray[np.float32],
    *,
    variant: str | None = None,
    thresholds: GateThresholds | None = None,
) -> Manifest:
    """Measure the model in ``variant_dir`` and judge it; returns its manifest."""
    config = ctx.config
    path = variant_dir / MODEL_FILE
    session, load_time = timed(lambda: open_session(path, threads=config.threads))
    name = session.get_inputs()[0].name

    def run(x: NDArray[np.float32]) -> object:
        return session.run(None, {name: x})

    clips = ctx.evaluation.clips
    samples = _steady_latencies(ctx, precision.value, run, clips)
    ctx.progress(f"{precision.value}: peak memory", 0, 0)
    rss = peak_rss("onnx", path, threads=config.threads, seconds=config.seconds)
    model = onnx.load(str(path), load_external_data=False)
    parameters = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    fid = fidelity(ctx.source_logits, logits, ctx.source.labels)
    task = None
    if ctx.evaluation.labels is not None:
        task = task_metrics(logits, ctx.evaluation.labels, len(ctx.source.labels))
    return Manifest(
        variant=variant or precision.value,
        precision=precision,
        pool=POOL_OF_PRECISION[precision],
        created=utc_now(),
        source=SourceInfo(
            model=config.model,
            architecture=ctx.source.architecture,
            sha256=ctx.source.sha256,
            parameters=ctx.source.parameters,
        ),
        input=InputSpec(
            input_name=INPUT_NAME,
            output_name=OUTPUT_NAME,
            sample_rate=ctx.source.sample_rate,
            max_seconds=config.max_seconds,
            labels=list(ctx.source.labels),
        ),
        files=digest_files(variant_dir, [MODEL_FILE]),
        recipe=recipe,
        measurements=Measurements(
            provider=provider_of(session),
            size_bytes=path.stat().st_size,
            parameters=parameters,
            load_time_s=load_time,
            latency=latency_stats(
                samples, batch=1, clip_seconds=config.seconds, threads=config.threads
            ),
            throughput=throughput(run, clips, batch=config.throughput_batch),
            peak_rss_bytes=rss,
        ),
        fidelity=fid,
        task=task,
        gates=judge(fid, thresholds or thresholds_for(precision, config.gate_overrides)),
    )


def _onnx_logits(ctx: _Context, path: Path, label: str) -> NDArray[np.float32]:
    ctx.progress(f"{label}: eval set", 0, len(ctx.evaluation))
    session = open_session(path, threads=ctx.config.threads)
    return run_logits(session, ctx.evaluation.clips)


def _build_fp32(ctx: _Context, fp32: Path) -> BuiltVariant:
    directory = fp32.parent
    logits = _onnx_logits(ctx, fp32, "fp32")
    check_export(ctx.source_logits[:4], logits[:4], fp32)
    recipe = Recipe(
        steps=["torch.onnx.export (TorchScript)", "dynamic batch and time axes"], opset=OPSET
    )
    return BuiltVariant(directory, _manifest(ctx, Precision.FP32, directory, recipe, logits))


def _build_fp16(ctx: _Context, fp32: Path) -> BuiltVariant:
    directory = ctx.work / Precision.FP16.value
    directory.mkdir()
    ctx.progress("fp16: converting", 0, 0)
    convert_fp16(fp32, directory / MODEL_FILE)
    logits = _onnx_logits(ctx, directory / MODEL_FILE, "fp16")
    recipe = Recipe(
        steps=[
            "fp32 export",
            "fp16 weights and compute, fp32 inputs/outputs",
            "normalisations (LayerNorm, GroupNorm/InstanceNorm, their reductions) kept fp32",
        ],
        opset=OPSET,
    )
    return BuiltVariant(directory, _manifest(ctx, Precision.FP16, directory, recipe, logits))


def _build_int8(
    ctx: _Context,
    fp32: Path,
    *,
    variant: str = Precision.INT8.value,
    thresholds: GateThresholds | None = None,
    first_steps: tuple[str, ...] = ("fp32 export",),
) -> BuiltVariant:
    """Quantize every candidate recipe, rank by measured p50, keep the fastest that passes."""
    config = ctx.config
    directory = ctx.work / variant
    scratch = ctx.work / f"{variant}-candidates"
    scratch.mkdir()
    pre = scratch / "preprocessed.onnx"
    ctx.progress("int8: pre-processing", 0, 0)
    preprocess(fp32, pre)
    recipes: list[Int8Recipe] = [RECIPES_BY_NAME[n] for n in config.int8_recipes]
    built: dict[str, Path] = {}
    outcomes: dict[str, str] = {}
    for i, candidate in enumerate(recipes):
        ctx.progress(f"int8: quantizing {candidate.name}", i, len(recipes))
        target = scratch / f"{candidate.name}.onnx"
        try:
            quantize_int8(
                candidate,
                pre,
                target,
                input_name=INPUT_NAME,
                calibration=ctx.calibration.clips,
                work_dir=scratch,
            )
        except (RuntimeError, ValueError, onnx.checker.ValidationError) as exc:
            outcomes[candidate.name] = f"quantization failed: {str(exc)[:200]}"
            logger.warning("int8 recipe %s failed: %s", candidate.name, exc)
            continue
        built[candidate.name] = target
    if not built:
        raise OptimizeError(f"every int8 recipe failed: {outcomes}")
    sessions = {n: open_session(p, threads=config.threads) for n, p in built.items()}
    runners = {n: (lambda x, s=s: s.run(None, {INPUT_NAME: x})) for n, s in sessions.items()}
    samples = interleaved_latencies(
        runners,
        ctx.calibration.clips,
        runs=config.candidate_runs,
        progress=lambda s, d, t: ctx.progress("int8: timing candidates", d, t),
    )
    p50 = {n: float(np.percentile(v, 50)) for n, v in samples.items()}
    p99 = {n: float(np.percentile(v, 99)) for n, v in samples.items()}
    thresholds = thresholds or thresholds_for(Precision.INT8, config.gate_overrides)
    chosen: str | None = None
    agreements: dict[str, float] = {}
    logits_of: dict[str, NDArray[np.float32]] = {}
    for name in sorted(built, key=p50.__getitem__):
        if chosen is not None:
            outcomes[name] = "slower than the chosen recipe"
            continue
        ctx.progress(f"int8: {name} on the eval set", 0, len(ctx.evaluation))
        logits_of[name] = run_logits(sessions[name], ctx.evaluation.clips)
        fid = fidelity(ctx.source_logits, logits_of[name], ctx.source.labels)
        agreements[name] = fid.top1_agreement
        failed = [g.name for g in judge(fid, thresholds) if not g.passed]
        if failed:
            outcomes[name] = f"failed gates: {', '.join(failed)}"
        else:
            outcomes[name] = "chosen: fastest that passes the gates"
            chosen = name
    fastest = min(built, key=p50.__getitem__)
    keep = chosen or fastest
    candidates = [
        QuantizationCandidate(
            name=r.name,
            description=r.description,
            p50_s=p50.get(r.name),
            p99_s=p99.get(r.name),
            size_bytes=built[r.name].stat().st_size if r.name in built else None,
            top1_agreement=agreements.get(r.name),
            outcome=outcomes[r.name],
        )
        for r in recipes
    ]
    reason = (
        f"{keep}: p50 {p50[keep] * 1e3:.1f} ms over {config.candidate_runs} interleaved runs, "
        + (
            "the fastest candidate that passes the gates"
            if chosen
            else "no candidate passed the gates; the fastest is kept, marked rejected"
        )
    )
    directory.mkdir()
    shutil.copyfile(built[keep], directory / MODEL_FILE)
    recipe = Recipe(
        steps=[*first_steps, "quant_pre_process", RECIPES_BY_NAME[keep].description],
        opset=OPSET,
        quantization=keep,
        quantization_reason=reason,
        candidates=candidates,
    )
    del sessions, runners
    result = BuiltVariant(
        directory,
        _manifest(
            ctx,
            Precision.INT8,
            directory,
            recipe,
            logits_of[keep],
            variant=variant,
            thresholds=thresholds,
        ),
    )
    shutil.rmtree(scratch)
    return result


def _build_student(ctx: _Context, recipe: StudentRecipe) -> BuiltVariant:
    """Distill a student from the source, export it, then the int8 path with its gates."""
    config = ctx.config
    checkpoint_dir = config.output.with_name(f".{config.output.name}.distill")
    student, report = distill(ctx.source, recipe, checkpoint_dir, progress=ctx.progress)
    logger.info("%s", report.describe())
    source = student_source(ctx.source, student, ctx.work / "student-source")
    fp32_dir = ctx.work / "student-fp32"
    fp32_dir.mkdir()
    ctx.progress("student: exporting", 0, 0)
    export_fp32(source, fp32_dir / MODEL_FILE, ctx.evaluation.clips[:1])
    check_export(
        _torch_logits(source, ctx.evaluation.clips[:4], no_progress),
        run_logits(
            open_session(fp32_dir / MODEL_FILE, threads=config.threads), ctx.evaluation.clips[:4]
        ),
        fp32_dir / MODEL_FILE,
    )
    overrides = {**STUDENT_GATES, **config.gate_overrides.get(None, {})}
    built = _build_int8(
        ctx,
        fp32_dir / MODEL_FILE,
        variant=STUDENT_VARIANT,
        thresholds=GateThresholds.for_precision(Precision.INT8, **overrides),
        first_steps=(
            f"knowledge distillation from the teacher (sha256 {ctx.source.sha256}): "
            + report.describe(),
            "student recipe " + recipe.model_dump_json(),
            "fp32 export of the student",
        ),
    )
    shutil.rmtree(fp32_dir)
    shutil.rmtree(source.directory)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # training done: nothing to resume
    return built


_BUILDERS: dict[Precision, Callable[[_Context, Path], BuiltVariant]] = {
    Precision.FP32: _build_fp32,
    Precision.FP16: _build_fp16,
    Precision.INT8: _build_int8,
}


def _move_into_place(work: Path, output: Path) -> None:
    if output.exists():
        trash = output.with_name(f".{output.name}.old-{os.getpid()}")
        output.rename(trash)
        try:
            work.rename(output)
        except OSError:
            trash.rename(output)  # put the previous artifacts back
            raise
        shutil.rmtree(trash, ignore_errors=True)
    else:
        work.rename(output)


def build_artifacts(
    config: OptimizeConfig, progress: ProgressFn = no_progress
) -> list[BuiltVariant]:
    """Build every requested variant of ``config.model`` into ``config.output``.

    Raises ``GatesFailed`` when a variant fails a gate, after writing the artifacts marked
    rejected: into ``output``, or beside it (``rejected_path``) when ``output`` already
    holds artifacts (``--overwrite``), which stay as they were.
    """
    _check_config(config)
    adding = config.add and config.output.exists()
    if adding:
        config = _missing_only(config)
        if not config.variants and config.student is None:
            logger.info("%s holds every requested variant: nothing to build", config.output)
            return []
    config.output.parent.mkdir(parents=True, exist_ok=True)
    work = config.output.with_name(f".{config.output.name}.tmp-{os.getpid()}")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir()
    try:
        source = resolve_source(
            config.model, work / SOURCE_DIR, seed=config.seed, progress=progress
        )
        torch.set_num_threads(config.threads)
        rate = source.sample_rate
        calibration = _dataset(
            config.calibration_data,
            None,
            config.calibration_clips,
            config.seed + 202,
            config,
            source.labels,
            rate,
        )
        evaluation = _dataset(
            config.eval_data,
            config.eval_labels,
            config.eval_clips,
            config.seed + 303,
            config,
            source.labels,
            rate,
        )
        if adding:
            _check_same_source(config.output, source)
        ctx = _Context(
            config=config,
            work=work,
            source=source,
            calibration=calibration,
            evaluation=evaluation,
            source_logits=_torch_logits(source, evaluation.clips, progress),
            progress=progress,
        )
        fp32_dir = work / Precision.FP32.value
        fp32_dir.mkdir()
        progress("fp32: exporting", 0, 0)
        export_fp32(source, fp32_dir / MODEL_FILE, evaluation.clips[:1])
        built = [
            _BUILDERS[p](ctx, fp32_dir / MODEL_FILE)
            for p in sorted(set(config.variants), key=list(Precision).index)
        ]
        if config.student is not None:
            built.append(_build_student(ctx, config.student))
        if Precision.FP32 not in config.variants:
            shutil.rmtree(fp32_dir)
        for variant in built:
            write_manifest(variant.directory, variant.manifest)
        failures = [
            f"{v.manifest.variant}: {g.name} = {g.value:.4g} (needs {g.comparison} {g.threshold:g})"
            for v in built
            for g in v.manifest.failed_gates
        ]
        # A rebuild that fails its gates must not replace artifacts that passed theirs: the
        # rejected ones go beside them, for a look. What --add builds replaces nothing: it
        # joins the others, marked rejected if it failed.
        keep_previous = bool(failures) and config.output.exists() and not adding
        if adding:
            for variant in built:
                variant.directory.rename(config.output / variant.directory.name)
            shutil.rmtree(work)
        else:
            destination = rejected_path(config.output) if keep_previous else config.output
            if keep_previous and destination.exists():
                shutil.rmtree(destination)
            _move_into_place(work, destination)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    if failures:
        raise GatesFailed(failures, kept=config.output if keep_previous else None)
    return [BuiltVariant(config.output / v.directory.name, v.manifest) for v in built]


def rejected_path(output: Path) -> Path:
    """Where a rebuild that failed its gates goes when ``output`` holds earlier artifacts."""
    return output.with_name(f"{output.name}.rejected")
