from __future__ import annotations

import random

import pytest

from serving.errors import UnknownModel
from serving.routing.variants import VariantSplitter


def test_weights_split_traffic_and_a_header_pins_a_variant() -> None:
    splitter = VariantSplitter({"stable": 90, "canary": 10, "off": 0}, rng=random.Random(1))
    picks = [splitter.choose() for _ in range(2000)]
    assert 0.07 < picks.count("canary") / len(picks) < 0.13
    assert "off" not in picks
    assert splitter.choose("off") == "off"  # pinned even at weight 0
    with pytest.raises(UnknownModel, match="variant 'nope'"):
        splitter.choose("nope")
