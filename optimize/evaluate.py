"""Fidelity to the source and task metrics: pure functions over logits."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from optimize.manifest import Fidelity, TaskMetrics


def _cosine(a: NDArray[np.float32], b: NDArray[np.float32]) -> NDArray[np.float64]:
    num = (a.astype(np.float64) * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.asarray(num / np.maximum(den, 1e-12))


def fidelity(
    source: NDArray[np.float32], candidate: NDArray[np.float32], labels: Sequence[str]
) -> Fidelity:
    """How closely ``candidate`` logits follow ``source`` logits, clip by clip."""
    if source.shape != candidate.shape:
        raise ValueError(f"logit shapes differ: source {source.shape}, candidate {candidate.shape}")
    source_top = source.argmax(axis=1)
    counts = np.bincount(source_top, minlength=len(labels))
    finite = np.isfinite(candidate)
    nonfinite = int((~finite).sum())
    errors = np.abs(source - np.where(finite, candidate, source))  # NaN/inf: their own gate
    return Fidelity(
        clips=int(source.shape[0]),
        top1_agreement=float((source_top == candidate.argmax(axis=1)).mean()),
        logit_cosine=float(_cosine(source, candidate).mean()) if not nonfinite else -1.0,
        max_abs_error=float(errors.max()),
        nonfinite_logits=nonfinite,
        source_class_share={
            label: float(count / source.shape[0])
            for label, count in zip(labels, counts, strict=True)
        },
    )


def task_metrics(
    logits: NDArray[np.float32], truth: NDArray[np.int64], classes: int
) -> TaskMetrics:
    """Accuracy and macro precision/recall/F1 of ``logits`` against ``truth``."""
    predicted = logits.argmax(axis=1)
    precisions, recalls, f1s = [], [], []
    for c in range(classes):
        tp = float(((predicted == c) & (truth == c)).sum())
        fp = float(((predicted == c) & (truth != c)).sum())
        fn = float(((predicted != c) & (truth == c)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        precisions.append(p)
        recalls.append(r)
        f1s.append(2 * p * r / (p + r) if p + r else 0.0)
    return TaskMetrics(
        clips=int(truth.shape[0]),
        accuracy=float((predicted == truth).mean()),
        precision=float(np.mean(precisions)),
        recall=float(np.mean(recalls)),
        f1=float(np.mean(f1s)),
    )
