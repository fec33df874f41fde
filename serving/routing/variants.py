"""Traffic split between a model's variants by weight, with a header to pin one."""

from __future__ import annotations

import random
from collections.abc import Mapping

from serving.errors import UnknownModel

PIN_HEADER = "x-sluiceway-variant"


class VariantSplitter:
    """Weighted choice of a variant; ``rng`` is injectable for tests."""

    def __init__(self, weights: Mapping[str, int], rng: random.Random | None = None) -> None:
        self._names = [n for n, w in weights.items() if w > 0]
        self._weights = [weights[n] for n in self._names]
        self._all = set(weights)
        self._rng = rng or random.Random()

    def choose(self, pinned: str | None = None) -> str:
        if pinned is not None:
            if pinned not in self._all:
                raise UnknownModel(
                    f"variant {pinned!r} (header {PIN_HEADER}) does not exist; "
                    f"variants: {sorted(self._all)}"
                )
            return pinned
        return self._rng.choices(self._names, weights=self._weights)[0]
