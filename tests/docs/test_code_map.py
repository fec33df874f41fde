"""docs/code-map.md stays true: every module of the packages is named there, and every
path it names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAP = ROOT / "docs" / "code-map.md"
PACKAGES = ["cli_output", "optimize", "serving", "deploy", "simulate", "tools", "sluiceway"]


def modules() -> set[str]:
    """Every module that holds code: package __init__ files and the CLI's own
    ``sluiceway/__main__.py`` aside (the bench's ``__main__`` is the bench)."""
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "__init__.py" or path == ROOT / "sluiceway" / "__main__.py":
                continue
            found.add(str(path.relative_to(ROOT)))
    return found


def test_every_module_is_on_the_map() -> None:
    text = MAP.read_text()
    missing = sorted(m for m in modules() if f"`{m}`" not in text)
    assert missing == [], f"docs/code-map.md does not say what these own: {missing}"


def test_every_path_on_the_map_exists() -> None:
    named = re.findall(r"`((?:[a-z_]+/)+[a-z_]*\.py)`", MAP.read_text())
    assert named
    gone = sorted(n for n in named if not (ROOT / n).is_file())
    assert gone == [], f"docs/code-map.md names modules that do not exist: {gone}"
