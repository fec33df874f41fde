"""`sluiceway optimize` and `sluiceway bench`.

Examples::

    sluiceway optimize --model wav2vec2-base --output artifacts/wav2vec2-base
    sluiceway optimize --model ./my-checkpoint --output artifacts/mine \\
        --eval-data ./clips --eval-labels ./clips/labels.csv --gate int8.min_top1_agreement=0.98
    sluiceway bench --artifacts artifacts/wav2vec2-base --threads 2 --seconds 3

Heavy modules (torch, onnxruntime) are imported inside the commands, so that the CLI root
stays importable where only serving is installed.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer
from rich.table import Table

from cli_output import ProgressBar, stderr, stdout
from optimize.manifest import Precision


def _split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


STUDENT = "student-int8"


class Task(StrEnum):
    """What a text model's artifacts do (audio models are classifiers whatever it says)."""

    EMBED = "embed"
    CLASSIFY = "classify"


def _precisions(value: str) -> tuple[Precision, ...]:
    try:
        return tuple(Precision(v) for v in _split(value) if v != STUDENT)
    except ValueError as exc:
        raise typer.BadParameter(
            f"{value!r}: variants are a comma-separated list of "
            f"{', '.join(p.value for p in Precision)}, {STUDENT}"
        ) from exc


def optimize(
    model: str = typer.Option(
        ..., "--model", "-m", help="Preset (wav2vec2-base, wav2vec2-tiny) or checkpoint directory."
    ),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Artifact directory to create, e.g. artifacts/<name>."
    ),
    variants: str = typer.Option(
        "fp32,fp16,int8",
        help="Comma-separated variants: fp32, fp16, int8, student-int8 (a distilled student).",
    ),
    seconds: float = typer.Option(3.0, help="Clip length (s) for evaluation and latency."),
    threads: int = typer.Option(2, help="ONNX Runtime / PyTorch threads for measurements."),
    calibration_data: Path | None = typer.Option(
        None, help="Folder of WAV files for int8 calibration (default: synthetic)."
    ),
    eval_data: Path | None = typer.Option(
        None, help="Folder of WAV files for fidelity (default: synthetic)."
    ),
    eval_labels: Path | None = typer.Option(
        None, help="CSV 'file,label' for --eval-data: adds accuracy/F1."
    ),
    eval_clips: int = typer.Option(200, help="Synthetic eval clips when no --eval-data."),
    calibration_clips: int = typer.Option(
        32, help="Synthetic calibration clips when no --calibration-data."
    ),
    latency_runs: int = typer.Option(
        50, help="Batch-1 runs per variant for the latency percentiles."
    ),
    int8_recipes: str | None = typer.Option(
        None, help="Comma-separated int8 candidates to try (default: all)."
    ),
    gate: list[str] = typer.Option(
        [], "--gate", help="Override a gate: NAME=VALUE or PRECISION.NAME=VALUE (repeatable)."
    ),
    seed: int = typer.Option(
        0, help="Seed for presets, synthetic data and a text classifier's fitted head."
    ),
    distill_steps: int = typer.Option(400, help="student-int8: training steps at most."),
    distill_minutes: float = typer.Option(20.0, help="student-int8: training time budget."),
    student_layer_stride: int = typer.Option(
        6, help="student-int8: keep every k-th teacher layer."
    ),
    student_conv_keep: float = typer.Option(
        0.25, help="student-int8: share of conv front-end channels kept."
    ),
    task: Task | None = typer.Option(
        None,
        help="Text models: embed, or classify (a sequence classifier's own head; on an "
        "embedding model, a head fitted on the built-in labelled sentences).",
    ),
    overwrite: bool = typer.Option(False, help="Replace --output if it exists."),
    add: bool = typer.Option(
        False, help="Keep the variants --output holds; build only the missing ones."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
    progress_lines: bool = typer.Option(
        False,
        help="Progress as a plain line per stage and every 30 s (logs, background); the "
        "default when stderr is not a terminal.",
    ),
) -> None:
    """Build verified, measured ONNX artifacts (fp32, fp16, int8) from a checkpoint."""
    from transformers.utils import logging as transformers_logging

    from optimize.distill import StudentRecipe
    from optimize.errors import GatesFailed
    from optimize.gates import parse_gate_overrides
    from optimize.pipeline import OptimizeConfig, build_artifacts
    from optimize.quantize import RECIPES_BY_NAME
    from optimize.text import is_text_model

    transformers_logging.disable_progress_bar()  # ours show the stages; its own add noise
    if is_text_model(model):
        _optimize_text(
            model,
            output,
            variants,
            task.value if task else None,
            threads,
            latency_runs,
            gate,
            overwrite,
            quiet,
            progress_lines,
            seed,
        )
        return
    if task is Task.EMBED:
        raise typer.BadParameter(
            f"--task embed: {model!r} is an audio classifier; --task embed is for text encoders"
        )
    student = None
    if STUDENT in _split(variants):
        student = StudentRecipe(
            steps=distill_steps,
            max_minutes=distill_minutes,
            layer_stride=student_layer_stride,
            conv_keep=student_conv_keep,
            seed=seed,
        )

    config = OptimizeConfig(
        model=model,
        output=output,
        variants=_precisions(variants),
        seconds=seconds,
        threads=threads,
        calibration_data=calibration_data,
        eval_data=eval_data,
        eval_labels=eval_labels,
        eval_clips=eval_clips,
        calibration_clips=calibration_clips,
        latency_runs=latency_runs,
        int8_recipes=tuple(_split(int8_recipes)) if int8_recipes else tuple(RECIPES_BY_NAME),
        gate_overrides=parse_gate_overrides(gate),
        seed=seed,
        overwrite=overwrite,
        add=add,
        student=student,
    )
    try:
        with ProgressBar(quiet=quiet, lines=progress_lines) as bar:
            built = build_artifacts(config, progress=bar)
    except GatesFailed:
        _print_summary(output)
        raise
    _print_summary(output)
    if not built:
        stderr.print(f"{output} holds every requested variant: nothing to build")
        return
    names = ", ".join(b.manifest.variant for b in built)
    stderr.print(f"[green]Artifacts written to {output}[/green] ({names}: all gates passed)")


def _optimize_text(
    model: str,
    output: Path,
    variants: str,
    task: str | None,
    threads: int,
    latency_runs: int,
    gate: list[str],
    overwrite: bool,
    quiet: bool,
    lines: bool,
    seed: int,
) -> None:
    """A text encoder: embeddings with its pooling, gated on real sentences."""
    from optimize.errors import GatesFailed
    from optimize.gates import GATE_NAMES as CLASSIFIER_GATES
    from optimize.gates import parse_gate_overrides
    from optimize.text import GATE_NAMES, TextConfig, build_text_artifacts

    if STUDENT in _split(variants):
        raise typer.BadParameter("student-int8 is for audio models; text gets fp32, fp16, int8")
    config = TextConfig(
        model=model,
        output=output,
        variants=_precisions(variants),
        threads=threads,
        latency_runs=latency_runs,
        task=task,
        gate_overrides=parse_gate_overrides(gate, known=(*GATE_NAMES, *CLASSIFIER_GATES)),
        overwrite=overwrite,
        seed=seed,
    )
    try:
        with ProgressBar(quiet=quiet, lines=lines) as bar:
            built = build_text_artifacts(config, progress=bar)
    except GatesFailed:
        _print_summary(output)
        raise
    _print_summary(output)
    names = ", ".join(m.variant for m in built)
    stderr.print(f"[green]Artifacts written to {output}[/green] ({names}: all gates passed)")


def _print_summary(output: Path) -> None:
    from optimize.manifest import read_manifest

    table = Table(title=f"artifacts in {output}")
    for column in (
        "variant",
        "pool",
        "size MB",
        "p50 ms",
        "p99 ms",
        "agreement",
        "cosine",
        "gates",
    ):
        table.add_column(column)
    from optimize.manifest import Fidelity

    for directory in sorted(p for p in output.iterdir() if (p / "manifest.json").is_file()):
        m = read_manifest(directory)
        failed = ", ".join(g.name for g in m.failed_gates)
        classes = isinstance(m.fidelity, Fidelity)
        cosine = m.fidelity.logit_cosine if classes else m.fidelity.min_cosine  # type: ignore[union-attr]
        table.add_row(
            m.variant,
            m.pool,
            f"{m.measurements.size_bytes / 1e6:.1f}",
            f"{m.measurements.latency.p50_s * 1e3:.1f}",
            f"{m.measurements.latency.p99_s * 1e3:.1f}",
            f"{m.fidelity.top1_agreement:.4f}" if isinstance(m.fidelity, Fidelity) else "-",
            f"{cosine:.5f}",
            "[green]passed[/green]" if m.accepted else f"[red]FAILED: {failed}[/red]",
        )
    stdout.print(table)


def bench(
    artifacts: Path = typer.Option(
        ..., "--artifacts", "-a", help="Directory made by `sluiceway optimize`."
    ),
    output: Path = typer.Option(
        Path("bench-results"),
        "--output",
        "-o",
        help="Where to write bench.md, bench.json, latency.png.",
    ),
    threads: int = typer.Option(2, help="Threads for every runner; 1 is the single-core mode."),
    seconds: float = typer.Option(3.0, help="Clip length (s)."),
    runs: int = typer.Option(
        100, help="Interleaved batch-1 rounds (each runs every variant once)."
    ),
    eval_clips: int = typer.Option(200, help="Synthetic clips for agreement/accuracy."),
    sample_percent: float = typer.Option(
        100.0, min=1.0, max=100.0, help="Use this share of the eval clips."
    ),
    low_memory: bool = typer.Option(
        False, help="Disable ONNX Runtime's memory arena and patterns."
    ),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    variants: str | None = typer.Option(
        None, help="Comma-separated variants (default: all in --artifacts runnable on --device)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Bench artifacts beside the PyTorch eager source, interleaved in one run."""
    from optimize.bench import BenchConfig, render_markdown, run_bench, write_outputs
    from optimize.manifest import Device

    try:
        dev = Device(device)
    except ValueError:
        raise typer.BadParameter(f"--device {device!r}: use cpu or cuda") from None
    config = BenchConfig(
        artifacts=artifacts,
        threads=threads,
        seconds=seconds,
        runs=runs,
        eval_clips=eval_clips,
        sample_percent=sample_percent,
        low_memory=low_memory,
        device=dev,
        variants=tuple(_split(variants)) if variants else None,
    )
    with ProgressBar(quiet=quiet) as bar:
        report = run_bench(config, progress=bar)
    paths = write_outputs(report, output)
    stdout.print(render_markdown(report))
    stderr.print(f"wrote {', '.join(str(p) for p in paths)}")


def import_onnx(
    model: Path = typer.Argument(..., help="The .onnx file to import."),
    output: Path = typer.Option(
        ..., "--output", "-o", help="Artifact directory to create, e.g. artifacts/<name>."
    ),
    example_inputs: list[Path] = typer.Option(
        [],
        "--example-inputs",
        help=".npz with one array per model input (repeatable: one input set each).",
    ),
    dim: list[str] = typer.Option(
        [], "--dim", help="Size of a free dimension to measure at: NAME=N (repeatable)."
    ),
    variants: str = typer.Option(
        "", help="Converted copies to build beside it, gated on closeness: fp16, int8."
    ),
    samples: int = typer.Option(8, help="Seeded input sets when no --example-inputs."),
    threads: int = typer.Option(2, help="ONNX Runtime threads for measurements."),
    latency_runs: int = typer.Option(50, help="Runs for the latency percentiles."),
    gate: list[str] = typer.Option(
        [], "--gate", help="A gate: NAME=VALUE or PRECISION.NAME=VALUE (min_cosine, ...)."
    ),
    overwrite: bool = typer.Option(False, help="Replace --output if it exists."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Import any ONNX model as a measured, gated artifact (and fp16/int8 copies)."""
    from optimize.gates import parse_gate_overrides
    from optimize.onnx_import import GATE_NAMES as IMPORT_GATES
    from optimize.onnx_import import ImportConfig, import_model

    dims: dict[str, int] = {}
    for item in dim:
        name, _, size = item.partition("=")
        if not name or not size.isdigit() or int(size) < 1:
            raise typer.BadParameter(f"--dim {item!r}: use NAME=N with N >= 1")
        dims[name] = int(size)
    config = ImportConfig(
        model=model,
        output=output,
        variants=_precisions(variants),
        example_inputs=tuple(example_inputs),
        dims=dims,
        samples=samples,
        threads=threads,
        latency_runs=latency_runs,
        gate_overrides=parse_gate_overrides(gate, known=IMPORT_GATES),
        overwrite=overwrite,
    )
    with ProgressBar(quiet=quiet) as bar:
        built = import_model(config, progress=bar)
    _print_summary(output)
    first = built[0].input
    shapes = getattr(first, "example_shapes", {})
    stderr.print(
        f"[green]Imported {model} into {output}[/green] ({', '.join(m.variant for m in built)}; "
        f"measured at {shapes})"
    )


def register(app: typer.Typer) -> None:
    """Add this package's commands to the root app."""
    app.command("optimize")(optimize)
    app.command("import")(import_onnx)
    app.command("bench")(bench)
