"""Latency, throughput, load time and process peak RSS.

Latencies of several runners are taken interleaved (each round runs every runner once, in
a rotating order) so that a noisy shared machine slows them all alike.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from optimize.errors import OptimizeError
from optimize.manifest import LatencyStats, Throughput
from optimize.progress import ProgressFn, no_progress

Runner = Callable[[NDArray[np.float32]], object]
T = TypeVar("T")
X = TypeVar("X")  # what a runner takes: a batch of clips, a feed dict


SPREAD_SLICES = 5


def spread(samples: list[float]) -> float | None:
    """Largest over smallest median of ``SPREAD_SLICES`` consecutive slices of the runs
    (None with too few runs to say)."""
    if len(samples) < 2 * SPREAD_SLICES:
        return None
    medians = [float(np.median(part)) for part in np.array_split(samples, SPREAD_SLICES)]
    return max(medians) / max(min(medians), 1e-12)


def latency_stats(
    samples: list[float], *, batch: int, clip_seconds: float | None, threads: int
) -> LatencyStats:
    """Percentiles of ``samples`` (seconds), and how far apart their slices were."""
    values = np.asarray(samples)
    return LatencyStats(
        spread=spread(samples),
        p50_s=float(np.percentile(values, 50)),
        p95_s=float(np.percentile(values, 95)),
        p99_s=float(np.percentile(values, 99)),
        mean_s=float(values.mean()),
        runs=len(samples),
        batch=batch,
        clip_seconds=clip_seconds,
        threads=threads,
    )


def interleaved_calls(
    runners: Mapping[str, Callable[[X], object]],
    inputs: Sequence[X],
    *,
    runs: int,
    warmup: int = 2,
    progress: ProgressFn = no_progress,
) -> dict[str, list[float]]:
    """Seconds per call of each runner on ``inputs`` in turn (a clip, a feed dict), ``runs``
    rounds after ``warmup`` calls each, rotating the runners' order round by round."""
    names = list(runners)
    for name in names:
        for i in range(warmup):
            runners[name](inputs[i % len(inputs)])
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(runs):
        item = inputs[r % len(inputs)]
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            runners[name](item)
            samples[name].append(time.perf_counter() - start)
        progress("latency", r + 1, runs)
    return samples


def interleaved_latencies(
    runners: Mapping[str, Runner],
    clips: NDArray[np.float32],
    *,
    runs: int,
    warmup: int = 2,
    progress: ProgressFn = no_progress,
) -> dict[str, list[float]]:
    """Seconds per call of each runner at batch 1 (one clip), ``runs`` rounds, interleaved."""
    batches = [clip[None, :] for clip in clips]
    return interleaved_calls(runners, batches, runs=runs, warmup=warmup, progress=progress)


def fastest_call(run: Callable[[X], object], block: X, *, rounds: int = 3) -> float:
    """Seconds of the fastest of ``rounds`` calls on ``block``, after one warm-up call."""
    run(block)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run(block)
        best = min(best, time.perf_counter() - start)
    return best


def throughput(
    runner: Runner, clips: NDArray[np.float32], *, batch: int, rounds: int = 3
) -> Throughput:
    """Clips per second at ``batch``, best of ``rounds`` after one warm-up call."""
    block = np.stack([clips[i % len(clips)] for i in range(batch)])
    return Throughput(batch=batch, clips_per_s=batch / fastest_call(runner, block, rounds=rounds))


def timed(action: Callable[[], T]) -> tuple[T, float]:
    """``action()`` and the seconds it took."""
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def peak_rss(
    kind: str, path: Path, *, threads: int, seconds: float, low_memory: bool = False
) -> int:
    """Peak RSS (bytes) of a fresh process that loads ``path`` and runs three inferences.

    ``kind`` is ``onnx`` (a model file) or ``torch`` (a checkpoint directory).
    """
    command = [kind, str(path), "--threads", str(threads), "--seconds", str(seconds)]
    if low_memory:
        command.append("--low-memory")
    return _probe(command, path)


def peak_rss_of_inputs(path: Path, inputs: Path, *, threads: int) -> int:
    """Peak RSS (bytes) of a fresh process that loads the ONNX model ``path`` and runs it
    three times on the arrays of ``inputs`` (an .npz)."""
    return _probe(["onnx", str(path), "--threads", str(threads), "--inputs", str(inputs)], path)


def _probe(arguments: list[str], path: Path) -> int:
    command = [sys.executable, "-m", "optimize.rss_probe", *arguments]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=900)
    if done.returncode != 0:
        raise OptimizeError(
            f"the memory probe for {path} failed (exit {done.returncode}): "
            f"{done.stderr.strip()[-500:]}"
        )
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_bytes"])
