"""The `sluiceway` command as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from optimize.manifest import read_manifest


def sluiceway(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sluiceway", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_help_lists_the_commands() -> None:
    done = sluiceway("--help")
    assert done.returncode == 0
    assert "optimize" in done.stdout and "bench" in done.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["optimize", "--model", "nope", "--output", "{tmp}/o"],
            "Error: 'nope' is neither a preset",
        ),
        (
            ["optimize", "--model", "wav2vec2-tiny", "--output", "{tmp}/o", "--variants", "int4"],
            "variants are",
        ),
        (
            ["optimize", "--model", "wav2vec2-tiny", "--output", "{tmp}/o", "--gate", "speed=1"],
            "Error: --gate 'speed=1': unknown gate",
        ),
        (
            ["optimize", "--model", "wav2vec2-tiny", "--output", "{tmp}/o", "--threads", "0"],
            "Error: invalid value for threads",
        ),
        (["bench", "--artifacts", "{tmp}/missing"], "Error: {tmp}/missing is not a directory"),
    ],
)
def test_user_mistakes_get_one_error_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = sluiceway(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode != 0
    assert message.format(tmp=tmp_path) in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()


def test_debug_variable_shows_the_traceback(tmp_path: Path) -> None:
    done = sluiceway(
        "optimize", "--model", "nope", "--output", str(tmp_path / "o"), env={"SLUICEWAY_DEBUG": "1"}
    )
    assert done.returncode == 1
    assert "Traceback" in done.stderr and "CheckpointError" in done.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_a_failed_gate_exits_non_zero_naming_it_and_marks_the_artifact(tmp_path: Path) -> None:
    output = tmp_path / "strict"
    done = sluiceway(
        "optimize",
        "--model",
        "wav2vec2-tiny",
        "--output",
        str(output),
        "--variants",
        "fp16",
        "--seconds",
        "1",
        "--eval-clips",
        "16",
        "--latency-runs",
        "5",
        "--quiet",
        "--gate",
        "fp16.max_abs_error=1e-9",
    )
    assert done.returncode == 1, done.stderr
    assert "Error: quality gates failed: fp16: max_abs_error" in done.stderr
    manifest = read_manifest(output / "fp16")
    assert not manifest.accepted
    assert [g.name for g in manifest.failed_gates] == ["max_abs_error"]
    assert "FAILED: max_abs_error" in done.stdout


@pytest.mark.slow
@pytest.mark.integration
def test_bench_writes_table_json_and_plot(tiny_artifacts: Path, tmp_path: Path) -> None:
    done = sluiceway(
        "bench",
        "--artifacts",
        str(tiny_artifacts),
        "--output",
        str(tmp_path),
        "--seconds",
        "1",
        "--runs",
        "6",
        "--eval-clips",
        "16",
        "--threads",
        "1",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    assert "| p99 (ms) |" in done.stdout and "pytorch-eager" in done.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    names = [row["name"] for row in report["rows"]]
    assert names == ["pytorch-eager", "fp16", "fp32", "int8"]
    assert all(len(report["latencies_s"][n]) == 6 for n in names)
    assert {t["name"] for t in report["targets"]} >= {"int8 p99 / PyTorch eager p99"}
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "bench.md").read_text().startswith("# Bench:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["serve", "--config", "{tmp}/missing.yaml"], "Error: cannot read serving config"),
        (["serve"], "give exactly one of --config or --artifacts"),
        (["serve", "--artifacts", "{tmp}"], "is not an artifact"),
    ],
)
def test_serve_mistakes_get_one_error_line(args: list[str], message: str, tmp_path: Path) -> None:
    done = sluiceway(*[a.format(tmp=tmp_path) for a in args])
    assert done.returncode != 0
    assert message in done.stderr
    assert "Traceback" not in done.stderr
