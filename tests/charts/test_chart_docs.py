"""scripts/chart_docs.py on small values files written to tmp_path (never the real chart's)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "chart_docs.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("chart_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


chart_docs = _load()

VALUES = """\
# -- Override the chart name.
nameOverride: ""

image:
  # -- Serving image repository.
  repository: ghcr.io/example/serving
  # -- Pull policy,
  # continued on a second line.
  pullPolicy: IfNotPresent

# -- One group per pool.
workerGroups:
  cpu:
    # -- Worker pods at least.
    minReplicas: 1
    resources:
      requests: {cpu: "2"}

head:
  # -- Head pod resources.
  resources:
    requests: {cpu: "1", memory: 2Gi}
  # -- Tolerations.
  tolerations: []
  # -- Ratio (0-1).
  ratio: 0.5
  # -- On or off.
  enabled: true
"""


def write(tmp_path: Path, values: str, readme: str | None = None) -> tuple[Path, Path]:
    values_path = tmp_path / "values.yaml"
    values_path.write_text(textwrap.dedent(values), encoding="utf-8")
    readme_path = tmp_path / "README.md"
    if readme is not None:
        readme_path.write_text(readme, encoding="utf-8")
    return values_path, readme_path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def rows_by_key(values: Path) -> dict[str, tuple[str, str, str]]:
    return {r.key: (r.type, r.default, r.description) for r in chart_docs.read_values(values).rows}


def test_documented_keys_become_rows_with_dotted_key_type_and_default(tmp_path: Path) -> None:
    values, _ = write(tmp_path, VALUES)
    rows = rows_by_key(values)

    assert rows["nameOverride"] == ("string", '""', "Override the chart name.")
    assert rows["image.repository"] == (
        "string",
        '"ghcr.io/example/serving"',
        "Serving image repository.",
    )
    assert rows["image.pullPolicy"][2] == "Pull policy, continued on a second line."
    assert rows["workerGroups.cpu.minReplicas"] == ("int", "1", "Worker pods at least.")
    assert rows["head.resources"] == (
        "object",
        '{"requests":{"cpu":"1","memory":"2Gi"}}',
        "Head pod resources.",
    )
    assert rows["head.tolerations"][:2] == ("list", "[]")
    assert rows["head.ratio"][:2] == ("float", "0.5")
    assert rows["head.enabled"][:2] == ("bool", "true")
    # A documented mapping is one row with its whole default; undocumented mappings are paths.
    assert rows["workerGroups"][:2] == (
        "object",
        '{"cpu":{"minReplicas":1,"resources":{"requests":{"cpu":"2"}}}}',
    )
    assert "image" not in rows and "workerGroups.cpu" not in rows and "head" not in rows
    assert "head.resources.requests" not in rows  # flow keys share the parent's line
    order = ["nameOverride", "image.repository", "image.pullPolicy", "workerGroups"]
    assert list(rows)[:4] == order  # file order


def test_children_of_a_documented_mapping_are_covered(tmp_path: Path) -> None:
    values, _ = write(tmp_path, VALUES)
    assert chart_docs.read_values(values).undocumented == ()


def test_undocumented_leaves_are_reported_by_dotted_path(tmp_path: Path) -> None:
    values, _ = write(
        tmp_path,
        """\
        image:
          # -- Documented.
          repository: x
          tag: ""
        # A plain comment is not documentation.
        extraEnv: {}
        # -- A blank line breaks the comment off its key.

        port: 8000
        # --
        empty: 1
        """,
    )
    doc = chart_docs.read_values(values)
    assert doc.undocumented == ("image.tag", "extraEnv", "port", "empty")
    assert [row.key for row in doc.rows] == ["image.repository"]


def test_render_escapes_pipes_and_replaces_only_between_markers(tmp_path: Path) -> None:
    values, _ = write(tmp_path, '# -- Either `a|b`.\nmode: "a|b"\n')
    table = chart_docs.render_table(chart_docs.read_values(values).rows)
    assert table.splitlines()[0] == "## Values"
    assert '| mode | string | `"a\\|b"` | Either `a\\|b`. |' in table

    start, end = chart_docs.START, chart_docs.END
    readme = f"# Chart\n\nIntro.\n\n{start}\nold table\n{end}\n\nOutro.\n"
    updated = chart_docs.replace_between_markers(readme, table)
    assert updated == f"# Chart\n\nIntro.\n\n{start}\n{table}\n{end}\n\nOutro.\n"
    with pytest.raises(chart_docs.ChartDocsError, match="values:start"):
        chart_docs.replace_between_markers("# no markers\n", table)


def test_check_passes_after_writing_and_fails_when_stale(tmp_path: Path) -> None:
    readme_text = f"# Chart\n\n{chart_docs.START}\n{chart_docs.END}\n"
    values, readme = write(tmp_path, VALUES, readme_text)
    paths = ("--values", str(values), "--readme", str(readme))

    stale = run("--check", *paths)
    assert stale.returncode == 1
    assert "out of date" in stale.stderr and "python scripts/chart_docs.py" in stale.stderr
    assert readme.read_text(encoding="utf-8") == readme_text  # --check changes nothing

    written = run(*paths)
    assert written.returncode == 0, written.stderr
    assert "| workerGroups.cpu.minReplicas | int | `1` |" in readme.read_text(encoding="utf-8")
    assert run("--check", *paths).returncode == 0

    values.write_text(VALUES.replace("minReplicas: 1", "minReplicas: 2"), encoding="utf-8")
    changed = run("--check", *paths)
    assert changed.returncode == 1
    assert "out of date" in changed.stderr


def test_check_fails_on_an_undocumented_leaf_even_when_the_readme_is_current(
    tmp_path: Path,
) -> None:
    values, readme = write(
        tmp_path,
        "# -- Documented.\na: 1\ngroup:\n  b: 2\n",
        f"{chart_docs.START}\n{chart_docs.END}\n",
    )
    chart_docs.write(values, readme)
    result = run("--check", "--values", str(values), "--readme", str(readme))
    assert result.returncode == 1
    assert "out of date" not in result.stderr
    assert "group.b" in result.stderr


def test_missing_markers_are_an_error_not_a_rewrite(tmp_path: Path) -> None:
    values, readme = write(tmp_path, VALUES, "# Chart without markers\n")
    result = run("--values", str(values), "--readme", str(readme))
    assert result.returncode == 1
    assert result.stderr.startswith("Error:") and "values:start" in result.stderr
    assert readme.read_text(encoding="utf-8") == "# Chart without markers\n"
