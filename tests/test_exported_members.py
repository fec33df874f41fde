"""Each package's __all__ is sorted and matches its public members both ways: every name in
__all__ resolves, and every public name the package defines or re-exports from itself is in
__all__ (as httpx checks its own)."""

from __future__ import annotations

import importlib
import inspect

import pytest

PACKAGES = ["cli_output", "optimize", "serving", "deploy", "sluiceway"]


@pytest.mark.parametrize("package", PACKAGES)
def test_all_is_sorted_and_resolves(package: str) -> None:
    module = importlib.import_module(package)
    names = list(module.__all__)
    assert names
    assert names == sorted(names)
    for name in names:
        assert getattr(module, name) is not None


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_member_is_in_all(package: str) -> None:
    module = importlib.import_module(package)
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_")
        and not inspect.ismodule(value)
        and getattr(value, "__module__", "").split(".")[0] == package
    }
    assert public <= set(module.__all__), sorted(public - set(module.__all__))
