"""The bench's confidence interval of a median: the figure a goal is judged on comes with
how far it could be off from the rounds it was measured on."""

from __future__ import annotations

import numpy as np

from tools.bench_serve.overhead import median_interval


def test_interval_is_the_order_statistics_around_the_middle() -> None:
    samples = np.random.default_rng(0).permutation(100).astype(float)
    # n = 100: 1.96 * sqrt(100) / 2 = 9.8 ranks either side of the 50th
    assert median_interval(samples) == (40.0, 60.0)


def test_interval_narrows_with_more_rounds_and_holds_the_true_median() -> None:
    rng = np.random.default_rng(1)
    widths, covered = [], 0
    for n in (100, 400, 1600):
        low, high = median_interval(rng.normal(2.0, 1.0, size=n))
        widths.append(high - low)
        covered += low <= 2.0 <= high
    assert widths[0] > widths[1] > widths[2]
    assert covered == 3
