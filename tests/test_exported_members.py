"""Each package's __all__ is sorted and every name in it resolves."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["optimize", "serving", "deploy", "sluiceway"])
def test_all_is_sorted_and_resolves(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names == sorted(names)
    for name in names:
        assert getattr(module, name) is not None
