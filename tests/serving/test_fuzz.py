"""The HTTP API fuzzed from its own OpenAPI spec by schemathesis (from PyPI), against the real
ingress on real Ray Serve: no 5xx other than 503/504, and no response (status, content type,
body, headers) the spec does not describe. ``make fuzz`` runs more examples."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serving.conftest import TOKEN, deploy, serving_config
from tests.serving.test_routing_load import wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.integration]
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))


def test_the_api_answers_what_its_spec_says_to_fuzzed_requests(
    ray_serve: dict[str, int], tiny_artifacts: Path, token_file: Path, tmp_path: Path
) -> None:
    deploy(serving_config(tiny_artifacts, token_file, ports=ray_serve))
    base = f"http://127.0.0.1:{ray_serve['http']}"
    wait_ready(base)
    # path parameters that exist, so that the cases reach the handlers' own checks
    (tmp_path / "schemathesis.toml").write_text(
        '[parameters]\nmodel = "tiny"\nversion = "stable"\n'
    )
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("st")),
            "run",
            f"{base}/openapi.json",
            "--checks",
            "all",
            # 503/504 are overload and deadline by design (the hook below allows only them).
            # "Valid data accepted" cannot hold whatever the spec: it describes each model's
            # own bodies and inputs, but no JSON Schema says that a clip's bytes decode or
            # that a tensor's values number its shape's product
            "--exclude-checks",
            "not_a_server_error,positive_data_acceptance",
            "--header",
            f"Authorization: Bearer {TOKEN}",
            "--max-examples",
            str(EXAMPLES),
            "--seed",
            "1",
            "--request-timeout",
            "30",
        ],
        cwd=tmp_path,
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "PYTHONPATH": str(Path(__file__).parent),
        },
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert " passed" in done.stdout
