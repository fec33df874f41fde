"""`sluiceway bench`: artifacts beside their PyTorch eager source, interleaved in one run.

Latencies are taken round-robin (every runner once per round, rotating order), so the
ratios between runners hold even on a noisy shared machine; peak RSS is measured in one
fresh process per runner.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from optimize.audio import synthetic_set
from optimize.checkpoint import SourceModel, load_checkpoint
from optimize.errors import ArtifactNotFound, ArtifactRejected, InputError
from optimize.evaluate import fidelity, task_metrics
from optimize.manifest import MODEL_FILE, Device, Manifest, read_manifest, verify_artifact
from optimize.measure import Runner, interleaved_latencies, latency_stats, peak_rss, throughput
from optimize.pipeline import SOURCE_DIR
from optimize.progress import ProgressFn, no_progress
from optimize.runtime import open_session, provider_of, run_logits

logger = logging.getLogger(__name__)

EAGER = "pytorch-eager"
EVAL_SEED = 909  # not any seed optimize uses: bench clips are unseen by the build


class BenchConfig(BaseModel):
    """Options of one bench run."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    artifacts: Path
    threads: int = Field(2, ge=1)
    seconds: float = Field(3.0, gt=0, le=60)
    runs: int = Field(100, ge=5)
    eval_clips: int = Field(200, ge=2)
    sample_percent: float = Field(100.0, gt=0, le=100)
    throughput_batch: int = Field(8, ge=1)
    low_memory: bool = False
    device: Device = Device.CPU
    variants: tuple[str, ...] | None = None


class BenchRow(BaseModel):
    """One runner's numbers (seconds, bytes, 0-1 ratios)."""

    model_config = ConfigDict(frozen=True)

    name: str
    provider: str
    size_bytes: int
    p50_s: float
    p95_s: float
    p99_s: float
    throughput_clips_per_s: float
    peak_rss_bytes: int
    top1_agreement: float
    accuracy: float | None
    f1: float | None
    accepted: bool


class TargetCheck(BaseModel):
    """One ratio from the run against its goal."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: float
    limit: float
    met: bool


class BenchReport(BaseModel):
    """Everything one bench run measured."""

    model_config = ConfigDict(frozen=True)

    artifacts: str
    source: str
    threads: int
    clip_seconds: float
    runs: int
    eval_clips: int
    device: str
    rows: list[BenchRow]
    latencies_s: dict[str, list[float]]
    targets: list[TargetCheck]


# (name, numerator, denominator, metric, limit): goals from the optimize issue.
TARGETS: tuple[tuple[str, str, str, str, float], ...] = (
    ("int8 size / fp32 size", "int8", "fp32", "size_bytes", 0.30),
    ("int8 p99 / PyTorch eager p99", "int8", EAGER, "p99_s", 0.55),
    ("int8 p99 / ONNX Runtime fp32 p99", "int8", "fp32", "p99_s", 0.75),
    ("int8 peak RSS / PyTorch eager peak RSS", "int8", EAGER, "peak_rss_bytes", 0.40),
)
MIN_INT8_AGREEMENT = 0.99
# The distillation issue: the student meets P99 < 100 ms at >= 98 % agreement, on clips
# where the teacher's decisions are balanced (no class above 95 %).
STUDENT = "student-int8"
STUDENT_MAX_P99_S = 0.100
STUDENT_MIN_AGREEMENT = 0.98
MAX_TEACHER_SHARE = 0.95


def _variants(config: BenchConfig) -> dict[str, tuple[Path, Manifest]]:
    root = config.artifacts
    if not root.is_dir():
        raise ArtifactNotFound(f"{root} is not a directory; build it with `sluiceway optimize`")
    found: dict[str, tuple[Path, Manifest]] = {}
    for directory in sorted(p for p in root.iterdir() if (p / MODEL_FILE).is_file()):
        try:
            manifest = verify_artifact(directory)
        except ArtifactRejected:
            manifest = read_manifest(directory)
            logger.warning("%s failed its gates when built; benched anyway", directory)
        found[manifest.variant] = (directory, manifest)
    if not found:
        raise ArtifactNotFound(f"{root} holds no artifact (no */{MODEL_FILE})")
    if config.variants is not None:
        missing = [v for v in config.variants if v not in found]
        if missing:
            raise InputError(f"--variants {missing} not in {root}; it has {sorted(found)}")
        found = {v: found[v] for v in config.variants}
    return found


def onnx_runner(session: ort.InferenceSession) -> Runner:
    """A batch-1 runner over an ONNX Runtime session's first input."""
    name = session.get_inputs()[0].name

    def run(x: NDArray[np.float32]) -> object:
        return session.run(None, {name: x})

    return run


def _source(root: Path, manifest: Manifest) -> SourceModel:
    local = root / SOURCE_DIR
    return load_checkpoint(local if local.is_dir() else Path(manifest.source.model))


def run_bench(config: BenchConfig, progress: ProgressFn = no_progress) -> BenchReport:
    """Measure every variant and the eager source; pure measurement, no files written."""
    variants = _variants(config)
    any_manifest = next(iter(variants.values()))[1]
    source = _source(config.artifacts, any_manifest)
    torch.set_num_threads(config.threads)
    count = max(2, round(config.eval_clips * config.sample_percent / 100))
    data = synthetic_set(
        count, seconds=config.seconds, sample_rate=source.sample_rate, seed=EVAL_SEED
    )
    sessions = {
        name: open_session(
            d / MODEL_FILE,
            threads=config.threads,
            device=config.device,
            low_memory=config.low_memory,
        )
        for name, (d, _) in variants.items()
    }

    @torch.inference_mode()
    def eager(x: NDArray[np.float32]) -> object:
        return source.model(torch.from_numpy(x)).logits

    runners: dict[str, Runner] = {EAGER: eager}
    runners |= {name: onnx_runner(session) for name, session in sessions.items()}
    samples = interleaved_latencies(runners, data.clips, runs=config.runs, progress=progress)

    progress("accuracy on the eval set", 0, len(runners))
    with torch.inference_mode():
        reference = np.concatenate(
            [
                source.model(torch.from_numpy(data.clips[i : i + 8])).logits.numpy()
                for i in range(0, count, 8)
            ]
        ).astype(np.float32)
    logits = {EAGER: reference} | {n: run_logits(s, data.clips) for n, s in sessions.items()}

    rows = []
    for done, name in enumerate(runners, start=1):
        progress("throughput and peak memory", done, len(runners))
        stats = latency_stats(
            samples[name], batch=1, clip_seconds=config.seconds, threads=config.threads
        )
        if name == EAGER:
            size = sum(p.stat().st_size for p in source.directory.glob("*.safetensors"))
            rss = peak_rss(
                "torch", source.directory, threads=config.threads, seconds=config.seconds
            )
            provider, accepted = "torch-cpu", True
        else:
            directory, manifest = variants[name]
            size = (directory / MODEL_FILE).stat().st_size
            rss = peak_rss(
                "onnx",
                directory / MODEL_FILE,
                threads=config.threads,
                seconds=config.seconds,
                low_memory=config.low_memory,
            )
            provider, accepted = provider_of(sessions[name]), manifest.accepted
        fid = fidelity(reference, logits[name], source.labels)
        task = (
            task_metrics(logits[name], data.labels, len(source.labels))
            if data.labels is not None
            else None
        )
        rows.append(
            BenchRow(
                name=name,
                provider=provider,
                size_bytes=size,
                p50_s=stats.p50_s,
                p95_s=stats.p95_s,
                p99_s=stats.p99_s,
                throughput_clips_per_s=throughput(
                    runners[name], data.clips, batch=config.throughput_batch
                ).clips_per_s,
                peak_rss_bytes=rss,
                top1_agreement=fid.top1_agreement,
                accuracy=task.accuracy if task else None,
                f1=task.f1 if task else None,
                accepted=accepted,
            )
        )
    return BenchReport(
        artifacts=str(config.artifacts),
        source=any_manifest.source.model,
        threads=config.threads,
        clip_seconds=config.seconds,
        runs=config.runs,
        eval_clips=count,
        device=config.device.value,
        rows=rows,
        latencies_s=samples,
        targets=check_targets(rows, teacher_share=_largest_decision_share(reference)),
    )


def _largest_decision_share(logits: NDArray[np.float32]) -> float:
    """Share of clips the teacher gives its most frequent label (1.0: one class only)."""
    counts = np.bincount(logits.argmax(axis=1), minlength=logits.shape[1])
    return float(counts.max() / counts.sum())


def check_targets(rows: list[BenchRow], teacher_share: float | None = None) -> list[TargetCheck]:
    """Ratios of the issue's goals that this run can compute (both runners present)."""
    by_name = {r.name: r for r in rows}
    checks = []
    for name, top, bottom, metric, limit in TARGETS:
        if top in by_name and bottom in by_name:
            denominator = float(getattr(by_name[bottom], metric))
            value = (
                float(getattr(by_name[top], metric)) / denominator if denominator else float("inf")
            )
            checks.append(TargetCheck(name=name, value=value, limit=limit, met=value <= limit))
    if "int8" in by_name:
        agreement = by_name["int8"].top1_agreement
        checks.append(
            TargetCheck(
                name="int8 top-1 agreement (at least)",
                value=agreement,
                limit=MIN_INT8_AGREEMENT,
                met=agreement >= MIN_INT8_AGREEMENT,
            )
        )
    if STUDENT in by_name:
        student = by_name[STUDENT]
        checks += [
            TargetCheck(
                name="student-int8 p99 (s, at most)",
                value=student.p99_s,
                limit=STUDENT_MAX_P99_S,
                met=student.p99_s < STUDENT_MAX_P99_S,
            ),
            TargetCheck(
                name="student-int8 top-1 agreement (at least)",
                value=student.top1_agreement,
                limit=STUDENT_MIN_AGREEMENT,
                met=student.top1_agreement >= STUDENT_MIN_AGREEMENT,
            ),
        ]
        if teacher_share is not None:
            checks.append(
                TargetCheck(
                    name="teacher's largest decision share (at most: balanced)",
                    value=teacher_share,
                    limit=MAX_TEACHER_SHARE,
                    met=teacher_share <= MAX_TEACHER_SHARE,
                )
            )
    return checks


def _fmt(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def render_markdown(report: BenchReport) -> str:
    """The metric x variant table, then the goals, as Markdown."""
    names = [r.name for r in report.rows]
    metrics: list[tuple[str, list[str]]] = [
        ("provider", [r.provider for r in report.rows]),
        ("size (MB)", [_fmt(r.size_bytes, 1e-6) for r in report.rows]),
        ("p50 (ms)", [_fmt(r.p50_s, 1e3) for r in report.rows]),
        ("p95 (ms)", [_fmt(r.p95_s, 1e3) for r in report.rows]),
        ("p99 (ms)", [_fmt(r.p99_s, 1e3) for r in report.rows]),
        (
            f"throughput (clips/s, batch {8})",
            [_fmt(r.throughput_clips_per_s, 1, 2) for r in report.rows],
        ),
        ("peak RSS (MiB)", [_fmt(r.peak_rss_bytes, 1 / 2**20, 0) for r in report.rows]),
        ("top-1 agreement vs eager", [_fmt(r.top1_agreement, 1, 4) for r in report.rows]),
        ("accuracy", [_fmt(r.accuracy, 1, 4) for r in report.rows]),
        ("F1 (macro)", [_fmt(r.f1, 1, 4) for r in report.rows]),
        (
            "gates",
            [
                "-" if r.name == EAGER else ("passed" if r.accepted else "FAILED")
                for r in report.rows
            ],
        ),
    ]
    lines = [
        f"# Bench: {report.source}",
        "",
        f"{report.clip_seconds:g} s clips, batch 1, {report.threads} thread(s), "
        f"device {report.device}, "
        f"{report.runs} interleaved rounds, {report.eval_clips} eval clips.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        *(f"| {label} | " + " | ".join(values) + " |" for label, values in metrics),
    ]
    if report.targets:
        lines += ["", "| goal | value | limit | met |", "|---|---|---|---|"]
        lines += [
            f"| {t.name} | {t.value:.3f} | {t.limit:g} | {'yes' if t.met else 'NO'} |"
            for t in report.targets
        ]
    return "\n".join(lines) + "\n"


def plot_latencies(report: BenchReport, path: Path) -> None:
    """Latency distribution per runner as a PNG (box plot over the interleaved rounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report.latencies_s)
    data = [np.asarray(report.latencies_s[n]) * 1e3 for n in names]
    figure, axis = plt.subplots(figsize=(1.8 * len(names) + 2, 4.5))
    axis.boxplot(data, tick_labels=names, showfliers=True, whis=(1, 99))
    axis.set_ylabel("latency (ms), batch 1")
    axis.set_title(f"{report.source}: {report.clip_seconds:g} s clips, {report.threads} thread(s)")
    axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_outputs(report: BenchReport, directory: Path) -> list[Path]:
    """bench.md, bench.json and latency.png in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    markdown = directory / "bench.md"
    markdown.write_text(render_markdown(report), encoding="utf-8")
    data = directory / "bench.json"
    data.write_text(json.dumps(report.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    plot = directory / "latency.png"
    plot_latencies(report, plot)
    return [markdown, data, plot]
