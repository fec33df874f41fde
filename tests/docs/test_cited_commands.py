"""What README and docs cite as the source of a figure or a step exists today: every
``make TARGET`` is a Makefile target, every ``python scripts/X.py`` a script, every
``python -m MODULE`` a module and every ``sluiceway COMMAND`` a command of the CLI."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [
    ROOT / "README.md",
    ROOT / "charts" / "sluiceway" / "README.md",
    *(ROOT / "docs").glob("*.md"),
]


def cited(pattern: str) -> dict[str, list[str]]:
    """What ``pattern`` (one group) finds inside backticks, and which documents cite it."""
    found: dict[str, list[str]] = {}
    for doc in DOCS:
        parts = re.split(r"^```.*$", doc.read_text(), flags=re.M)
        blocks, prose = parts[1::2], "".join(parts[::2])  # fenced blocks are cited whole
        for quoted in [*blocks, *re.findall(r"`([^`]+)`", prose)]:
            for name in re.findall(pattern, quoted):
                found.setdefault(name, []).append(doc.name)
    return found


def test_every_cited_make_target_exists() -> None:
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = cited(r"(?:^|\s)make ([a-z][a-z-]*)")
    assert {"test", "serve", "bench-serve", "simulate"} <= set(named)
    missing = {t: docs for t, docs in named.items() if t not in targets}
    assert missing == {}, f"cited make targets the Makefile lacks: {missing}"


def test_every_cited_script_and_module_exists() -> None:
    scripts = cited(r"python scripts/([\w/]+\.py)")
    assert scripts
    assert [s for s in scripts if not (ROOT / "scripts" / s).is_file()] == []
    modules = cited(r"python -m ([\w.]+)")
    assert modules
    sys.path.insert(0, str(ROOT))
    try:
        assert [m for m in modules if importlib.util.find_spec(m) is None] == []
    finally:
        sys.path.remove(str(ROOT))


def test_every_cited_cli_command_exists() -> None:
    named = cited(r"(?:^|\s)sluiceway ((?:deploy )?[a-z]+)\b")
    assert {"serve", "optimize", "import", "simulate", "deploy values"} <= set(named)
    for command in named:
        done = subprocess.run(
            [sys.executable, "-m", "sluiceway", *command.split(), "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=ROOT,
        )
        assert done.returncode == 0, (command, named[command], done.stderr[-500:])
