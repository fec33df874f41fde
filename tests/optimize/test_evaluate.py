from __future__ import annotations

import numpy as np
import pytest

from optimize.evaluate import fidelity, task_metrics


def test_fidelity_counts_agreement_cosine_and_error() -> None:
    source = np.array([[2.0, 0.0], [0.0, 2.0], [1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    candidate = source.copy()
    candidate[3] = [1.0, 0.5]  # flips one decision
    result = fidelity(source, candidate, ["a", "b"])
    assert result.top1_agreement == 0.75
    assert result.max_abs_error == pytest.approx(1.0)
    assert result.source_class_share == {"a": 0.5, "b": 0.5}
    assert 0.5 < result.logit_cosine < 1.0


def test_non_finite_outputs_fail_every_similarity() -> None:
    source = np.ones((2, 2), dtype=np.float32)
    result = fidelity(source, np.full((2, 2), np.nan, dtype=np.float32), ["a", "b"])
    assert result.nonfinite_logits == 4  # their own gate; every figure stays finite for JSON
    assert result.logit_cosine == -1.0


def test_task_metrics_are_macro_averaged() -> None:
    logits = np.array([[1, 0], [1, 0], [0, 1], [1, 0]], dtype=np.float32)
    truth = np.array([0, 0, 1, 1])
    metrics = task_metrics(logits, truth, 2)
    assert metrics.accuracy == 0.75
    # class 0: p=2/3 r=1; class 1: p=1 r=1/2
    assert metrics.precision == pytest.approx((2 / 3 + 1) / 2)
    assert metrics.recall == pytest.approx(0.75)


def test_latency_spread_is_about_one_when_quiet_and_wide_when_the_machine_was_busy() -> None:
    from optimize.manifest import WIDE_SPREAD
    from optimize.measure import latency_stats, spread

    rng = np.random.default_rng(0)
    quiet = list(0.020 * rng.lognormal(0, 0.05, 50))
    busy = quiet[:20] + [3 * x for x in quiet[20:30]] + quiet[30:]  # a slice while busy
    assert spread(quiet) is not None and spread(quiet) < 1.1  # type: ignore[operator]
    assert spread(busy) > WIDE_SPREAD  # type: ignore[operator]
    assert spread(quiet[:5]) is None  # too few runs to say
    stats = latency_stats(busy, batch=1, clip_seconds=3, threads=2)
    assert stats.spread == spread(busy)
