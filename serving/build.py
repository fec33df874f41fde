"""Which build is running: the installed distribution's version (``sluiceway_build_info``,
the v2 server metadata)."""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version


@cache
def build_version() -> str:
    """The ``sluiceway`` distribution's version; 0.0.0 from a tree never installed."""
    try:
        return version("sluiceway")
    except PackageNotFoundError:
        return "0.0.0"
