"""Session fixtures: real artifacts of the tiny preset, built once by the real pipeline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """fp32/fp16/int8 artifacts of wav2vec2-tiny (seeded weights, head fitted on audio)."""
    from optimize.pipeline import OptimizeConfig, build_artifacts

    output = tmp_path_factory.mktemp("artifacts") / "tiny"
    build_artifacts(
        OptimizeConfig(
            model="wav2vec2-tiny",
            output=output,
            seconds=1.0,
            eval_clips=48,
            calibration_clips=8,
            latency_runs=5,
            candidate_runs=3,
        )
    )
    return output
