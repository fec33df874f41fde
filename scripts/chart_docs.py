"""Write the chart README's values table from the `# --` comments in values.yaml.

    python scripts/chart_docs.py          # rewrite the table in charts/sluiceway/README.md
    python scripts/chart_docs.py --check  # exit 1 if the table is stale or a value is undocumented

helm-docs style: a `# -- description` comment on the line(s) directly above a key documents
it, and the `#` lines after it (up to the key) continue the description. Nested keys are
dotted paths (`workerGroups.cpu.minReplicas`). A documented mapping is one row whose default
is the whole mapping as compact JSON; the walk still goes into it for children that carry
their own `# --`, and its undocumented children count as covered by it. An undocumented
mapping is only a path to its children. Every leaf (a non-mapping value or an empty mapping)
must be documented, itself or through a documented ancestor.

The table, headed `## Values`, replaces whatever lies between the markers
`<!-- values:start -->` and `<!-- values:end -->` in the README. Stdlib and PyYAML only.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
VALUES = ROOT / "charts" / "sluiceway" / "values.yaml"
README = ROOT / "charts" / "sluiceway" / "README.md"
START = "<!-- values:start -->"
END = "<!-- values:end -->"
COMMAND = "python scripts/chart_docs.py"


class ChartDocsError(Exception):
    """values.yaml or the README cannot be used as they are; the message says what to fix."""


@dataclass(frozen=True)
class Row:
    """One documented key of values.yaml: a row of the table."""

    key: str
    type: str
    default: str
    description: str


@dataclass(frozen=True)
class ValuesDoc:
    """Rows in file order, and the dotted paths of leaves that nothing documents."""

    rows: tuple[Row, ...]
    undocumented: tuple[str, ...]


def read_values(path: Path) -> ValuesDoc:
    """Parse values.yaml at `path` with its `# --` comments."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return ValuesDoc((), ())
        if not isinstance(root, yaml.MappingNode):
            raise ChartDocsError(f"{path}: the top level is not a mapping")
        rows: list[Row] = []
        undocumented: list[str] = []
        for key in _walk(loader, lines, root, (), covered=False):
            dotted = _dotted(key.path)
            if key.description is not None:
                rows.append(Row(dotted, _type_name(key.value), _json(key.value), key.description))
            elif key.leaf and not key.covered:
                undocumented.append(dotted)
    except yaml.YAMLError as exc:
        raise ChartDocsError(f"{path}: not valid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return ValuesDoc(tuple(rows), tuple(undocumented))


@dataclass(frozen=True)
class _Key:
    path: tuple[str, ...]
    value: object
    description: str | None
    leaf: bool  # a non-mapping value or an empty mapping
    covered: bool  # an ancestor is documented


def _walk(
    loader: yaml.SafeLoader,
    lines: list[str],
    node: yaml.MappingNode,
    prefix: tuple[str, ...],
    *,
    covered: bool,
) -> Iterator[_Key]:
    """Every key under `node` in file order; sequences are values, never descended into."""
    for key_node, value_node in node.value:
        path = (*prefix, str(loader.construct_object(key_node, deep=True)))
        description = _description(lines, key_node)
        is_mapping = isinstance(value_node, yaml.MappingNode)
        yield _Key(
            path,
            loader.construct_object(value_node, deep=True),
            description,
            leaf=not (is_mapping and value_node.value),
            covered=covered,
        )
        if is_mapping and value_node.value:
            yield from _walk(
                loader, lines, value_node, path, covered=covered or description is not None
            )


def _description(lines: list[str], key_node: yaml.Node) -> str | None:
    """The `# --` text above a key that starts its line, continuation lines joined; else None.

    Keys inside a flow mapping (`{cpu: "1"}`) share their line with the parent key and are
    never documented on their own. An empty `# --` documents nothing.
    """
    line_no, column = key_node.start_mark.line, key_node.start_mark.column
    if lines[line_no][:column].strip():
        return None
    block: list[str] = []
    for line in reversed(lines[:line_no]):
        stripped = line.strip()
        if not stripped.startswith("#"):
            break
        block.insert(0, stripped)
    starts = [i for i, line in enumerate(block) if line == "# --" or line.startswith("# -- ")]
    if not starts:
        return None
    first, *rest = block[starts[-1] :]
    parts = [first.removeprefix("# --").strip(), *(line.lstrip("#").strip() for line in rest)]
    text = " ".join(part for part in parts if part)
    return text or None


def _dotted(path: tuple[str, ...]) -> str:
    return ".".join(f'"{part}"' if "." in part or " " in part else part for part in path)


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def render_table(rows: Sequence[Row]) -> str:
    """The `## Values` section: a Markdown table, one row per documented key."""
    out = ["## Values", "", "| Key | Type | Default | Description |", "| --- | --- | --- | --- |"]
    for row in rows:
        cells = (row.key, row.type, f"`{row.default}`", row.description)
        out.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(out)


def replace_between_markers(readme: str, table: str, *, name: str = "README") -> str:
    """`readme` with what lies between the values markers replaced by `table`."""
    start, end = readme.find(START), readme.find(END)
    if start < 0 or end < 0 or end < start:
        raise ChartDocsError(f"{name}: needs {START} and, after it, {END} around the table")
    return readme[: start + len(START)] + "\n" + table + "\n" + readme[end:]


def problems(values: Path, readme: Path) -> list[str]:
    """What `--check` fails on: a stale README, undocumented leaves. Empty when all is well."""
    doc = read_values(values)
    found = []
    if not readme.is_file():
        raise ChartDocsError(f"{readme}: no such file; write it with {START} and {END} in it")
    current = readme.read_text(encoding="utf-8")
    if replace_between_markers(current, render_table(doc.rows), name=str(readme)) != current:
        found.append(f"{readme} is out of date: run `{COMMAND}`")
    if doc.undocumented:
        found.append(
            f"{values}: {len(doc.undocumented)} value(s) without a `# --` comment: "
            + ", ".join(doc.undocumented)
        )
    return found


def write(values: Path, readme: Path) -> ValuesDoc:
    """Rewrite the table in `readme` from `values`; returns what was read."""
    doc = read_values(values)
    if not readme.is_file():
        raise ChartDocsError(f"{readme}: no such file; write it with {START} and {END} in it")
    current = readme.read_text(encoding="utf-8")
    updated = replace_between_markers(current, render_table(doc.rows), name=str(readme))
    if updated != current:
        readme.write_text(updated, encoding="utf-8")
    return doc


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    parser.add_argument("--values", type=Path, default=VALUES, help=f"default: {VALUES}")
    parser.add_argument("--readme", type=Path, default=README, help=f"default: {README}")
    args = parser.parse_args(argv)
    try:
        if args.check:
            found = problems(args.values, args.readme)
            for problem in found:
                print(f"Error: {problem}", file=sys.stderr)
            return 1 if found else 0
        doc = write(args.values, args.readme)
    except (ChartDocsError, OSError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    print(f"{args.readme}: {len(doc.rows)} values")
    if doc.undocumented:
        print(
            f"Warning: {len(doc.undocumented)} value(s) without a `# --` comment: "
            + ", ".join(doc.undocumented),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
