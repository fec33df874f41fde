"""The `sluiceway` command as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import psutil
import pytest

from optimize.manifest import read_manifest
from tests.conftest import TOKEN, free_port
from tests.serving.conftest import serving_config
from tests.sluiceway.serve_process import serving


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
        (
            ["optimize", "--model", "wav2vec2-tiny", "--output", "{tmp}/o", "--task", "translate"],
            "Invalid value for '--task'",
        ),
        (
            ["optimize", "--model", "wav2vec2-tiny", "--output", "{tmp}/o", "--task", "embed"],
            "'wav2vec2-tiny' is an audio classifier",
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


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--dim", "x"], "--dim 'x': use NAME=N with N >= 1"),
        (["--dim", "nosuch=3"], "Error: --dim ['nosuch']: no such free dimension; the model has"),
        (
            ["--gate", "min_top1_agreement=0.9"],  # a classifier's gate: imports judge tensors
            "Error: --gate 'min_top1_agreement=0.9': unknown gate 'min_top1_agreement'",
        ),
    ],
)
def test_import_mistakes_get_one_error_line(args: list[str], message: str, tmp_path: Path) -> None:
    from tests.import_models import silero_vad

    done = sluiceway("import", str(silero_vad()), "--output", str(tmp_path / "o"), *args)
    assert done.returncode != 0
    assert message in done.stderr
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

    def build(*extra: str, quiet: bool = True) -> subprocess.CompletedProcess[str]:
        return sluiceway(
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
            *(["--quiet"] if quiet else []),
            *extra,
        )

    done = build("--gate", "fp16.max_abs_error=1e-9")
    assert done.returncode == 1, done.stderr
    assert "Error: quality gates failed: fp16: max_abs_error" in done.stderr
    manifest = read_manifest(output / "fp16")
    assert not manifest.accepted
    assert [g.name for g in manifest.failed_gates] == ["max_abs_error"]
    assert "FAILED: max_abs_error" in done.stdout

    # a good build replaces the rejected one; a failed rebuild then leaves it in place
    # stderr is a pipe here, as in a CI log: plain progress lines stand in for the bars
    done = build("--overwrite", quiet=False)
    assert done.returncode == 0, done.stderr
    assert "source model on the eval set" in done.stderr and "fp16: eval set" in done.stderr
    assert "━" not in done.stderr  # no bar drawn into the log
    good = (output / "fp16" / "manifest.json").read_bytes()
    done = build("--overwrite", "--gate", "fp16.max_abs_error=1e-9")
    assert done.returncode == 1, done.stderr
    assert f"The previous artifacts in {output} are kept" in " ".join(done.stderr.split())
    assert (output / "fp16" / "manifest.json").read_bytes() == good
    assert read_manifest(output / "fp16").accepted
    assert not read_manifest(tmp_path / "strict.rejected" / "fp16").accepted


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


@pytest.mark.slow
@pytest.mark.integration
def test_serve_answers_until_ctrl_c_then_leaves_nothing_running(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    """`sluiceway serve` as the README runs it: HTTP through HAProxy, Ctrl-C stops it all."""
    token = tmp_path / "token"
    token.write_text(TOKEN)
    ports = {"http": free_port(), "metrics": free_port()}
    config = tmp_path / "serving.yaml"
    config.write_text(json.dumps(serving_config(tiny_artifacts, token, ports=ports)))
    base = f"http://127.0.0.1:{ports['http']}"
    with serving(["-c", str(config), "--num-cpus", "2"], tmp_path) as server:
        server.wait_for(f"Sluiceway is serving on {base}", deadline_s=300)
        assert f"POST {base}/v2/models/tiny/infer" in server.stdout()
        assert httpx.get(f"{base}/v2/health/ready", timeout=10).status_code == 200
        listing = httpx.get(
            f"{base}/v1/models", headers={"authorization": f"Bearer {TOKEN}"}, timeout=10
        )
        assert listing.json()["models"][0]["name"] == "tiny"
        started = server.children()
        # The HTTP front is HAProxy (RAY_ENV), a child of this cluster's processes.
        assert any(p.name() == "haproxy" for p in started)

        assert server.interrupt() == 0, server.stderr()[-3000:]
        assert "shutting down" in server.stderr()
        _, alive = psutil.wait_procs(started, timeout=30)
        assert alive == [], f"left running after Ctrl-C: {[p.name() for p in alive]}"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", ports["http"])) != 0, "the HTTP port still answers"
