"""A first run, as `make serve` does it: from no artifacts, build only what this machine's
pools need, serve, then bring the distilled student in without a failed request."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from optimize.manifest import read_manifest
from tests.conftest import free_port
from tests.serving.test_routing_load import PCM
from tests.sluiceway.serve_process import serving

pytestmark = [pytest.mark.slow, pytest.mark.integration]

# Small, quick builds of the tiny preset. The student's gates are relaxed: a tiny student
# of 20 steps does not reach the default agreement, and the hand-over is under test here,
# not the student's quality (test_distill covers its gates).
QUICK = (
    "--seconds 1 --eval-clips 48 --calibration-clips 8 --latency-runs 5 "
    "--int8-recipes dynamic-matmul-s8 --distill-steps 20 --student-layer-stride 2 "
    "--student-conv-keep 0.5 --gate min_top1_agreement=0.5 --gate min_logit_cosine=0 "
    "--gate max_abs_error=1000"
)


class Client(threading.Thread):
    """One request at a time until stopped: (status, artifact) each, and the ingress
    replicas that answered."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[int, str]] = []
        self.ingresses: set[str] = set()
        self.stopped = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self.stopped.is_set():
                response = client.post(
                    self.url, content=PCM, headers={"content-type": "audio/l16;rate=16000"}
                )
                self.answers.append(
                    (response.status_code, response.headers.get("x-sluiceway-artifact", ""))
                )
                self.ingresses.add(response.headers.get("x-sluiceway-ingress", ""))


def test_make_serve_builds_what_the_cpu_pool_needs_then_hands_over_to_the_student(
    tmp_path: Path,
) -> None:
    artifacts = tmp_path / "tiny"  # nothing built yet
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--artifacts", str(artifacts), "--build-from", "wav2vec2-tiny"]
    args += ["--optimize-args", QUICK, "--port", str(port), "--num-cpus", "2"]
    with serving(args, tmp_path) as server:
        server.wait_for(f"Sluiceway is serving on {base}", deadline_s=300)
        # only what a CPU-only machine's pool needs came first: int8, no fp32, no fp16
        assert "building int8 of wav2vec2-tiny" in server.stderr()
        assert read_manifest(artifacts / "int8").accepted
        assert not (artifacts / "fp16").exists() and not (artifacts / "fp32").exists()

        clients = [Client(f"{base}/v1/models/tiny:classify") for _ in range(2)]
        for client in clients:
            client.start()
        server.wait_for("the cpu pool now serves student-int8", 300, stream="stderr")
        handed_over = sum(len(c.answers) for c in clients)
        end = time.monotonic() + 30
        while time.monotonic() < end and sum(len(c.answers) for c in clients) < handed_over + 10:
            time.sleep(0.2)
        for client in clients:
            client.stopped.set()
            client.join(timeout=60)
        answers = [a for c in clients for a in c.answers]
        after = [a for c in clients for a in c.answers[-5:]]

        assert "student-int8 passed its gates: rolling it onto the cpu pool" in server.stderr()
        assert read_manifest(artifacts / "student-int8").accepted
        codes = Counter(code for code, _ in answers)
        assert codes == {200: len(answers)}, (codes, server.stderr()[-3000:])
        served_by = Counter(artifact for _, artifact in answers)
        assert served_by["int8"] > 0 and served_by["student-int8"] > 0, served_by
        assert {artifact for _, artifact in after} == {"student-int8"}, after
        # the hand-over reconfigured the running replicas: the two ingress replicas of the
        # start (serving.defaults) answered every request, none replaced
        assert len(set.union(*(c.ingresses for c in clients))) <= 2
        assert server.interrupt() == 0, server.stderr()[-3000:]
        print("left running after Ctrl-C:", server.left_running)  # a finding, not yet a rule
