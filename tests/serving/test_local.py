"""A first run's plan (what to build before serving) and the student's background build
when it fails its gates: the CPU pool keeps int8, nothing is redeployed."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.errors import BuildFailed
from serving.local import (
    StudentHandover,
    build_now,
    missing_for_pools,
    optimize_command,
    student_pending,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_only_what_the_pools_here_need_is_built_first(tiny_artifacts: Path, tmp_path: Path) -> None:
    artifacts = tmp_path / "tiny"
    shutil.copytree(tiny_artifacts, artifacts)
    assert missing_for_pools(artifacts, gpu=False) == []
    shutil.rmtree(artifacts / "int8")
    shutil.rmtree(artifacts / "fp16")
    assert missing_for_pools(artifacts, gpu=False) == ["int8"]
    assert missing_for_pools(artifacts, gpu=True) == ["fp16", "int8"]
    # an accepted student serves the CPU pool: int8 is not needed (any accepted manifest
    # stands in for the student's here; test_first_run builds a real one)
    shutil.copytree(tiny_artifacts / "int8", artifacts / "student-int8")
    assert missing_for_pools(artifacts, gpu=False) == []
    assert not student_pending(artifacts)
    assert missing_for_pools(tmp_path / "nothing-yet", gpu=False) == ["int8"]


def test_a_failed_build_names_its_command(tmp_path: Path) -> None:
    command = optimize_command("no-such-preset", tmp_path / "out", ["int8"])
    with pytest.raises(BuildFailed, match="building int8 failed .*no-such-preset"):
        build_now(command, ["int8"])


def test_a_student_that_fails_its_gates_is_not_rolled_out(
    tiny_artifacts: Path, tmp_path: Path
) -> None:
    artifacts = tmp_path / "tiny"
    shutil.copytree(tiny_artifacts, artifacts)
    lines: list[str] = []
    redeploys: list[int] = []
    quick = (
        "--seconds 1 --eval-clips 24 --calibration-clips 4 --latency-runs 5 "
        "--int8-recipes dynamic-matmul-s8 --distill-steps 4 --student-layer-stride 2 "
        "--student-conv-keep 0.5 --progress-lines"
    )
    handover = StudentHandover(
        optimize_command("wav2vec2-tiny", artifacts, ["student-int8"], quick),
        artifacts,
        say=lines.append,
    )
    handover.start(lambda: redeploys.append(1))
    assert handover.finished.wait(timeout=300)
    assert handover.outcome == "failed (exit status 1)"
    assert redeploys == []
    assert any("quality gates failed" in line for line in lines)
    assert lines[-1].endswith("the cpu pool keeps int8")
    assert all(line.startswith("student-int8: ") for line in lines[1:-1])
