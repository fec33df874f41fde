"""Booting the chart's render for tests: a volume of artifacts, values from `deploy values`,
the render booted by deploy.boot, and a client that calls the serve Service's endpoints.

Stand-ins, and only these: a host directory for the PersistentVolumeClaim (its artifacts are
copied there, as a team would upload them), and the kubelet/operators played by deploy.boot.
What runs is real: KubeRay's `ray start` lines under bash, the image's Python, Ray, Serve's
REST API, HTTP between network namespaces.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import yaml

from deploy.boot import Boot
from deploy.helm import DEFAULT_CHART, Helm
from deploy.image import read_dockerfile
from deploy.values import write_values
from tests.serving.test_routing_scale import PCM, pcm

CLAIM = "sluiceway-artifacts"
MOUNT = "/artifacts"
RELEASE, NAMESPACE = "demo", "ml"


def volume(root: Path, artifacts: Mapping[str, Path]) -> Path:
    """A directory standing in for the claim: ``name/<variant dir>`` for each artifact."""
    root.mkdir(parents=True, exist_ok=True)
    for name, artifact in artifacts.items():
        shutil.copytree(artifact, root / name / artifact.name, dirs_exist_ok=True)
    for path in [root, *root.rglob("*")]:  # readable by the pods' user (uid 1000)
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def render(values: dict[str, Any], folder: Path, name: str = "values.yaml") -> list[dict[str, Any]]:
    """``values`` (checked and written as `sluiceway deploy values` writes them) plus the
    claim, rendered by the real ``helm template``."""
    helm = Helm.find()
    path = write_values(values, folder / name, helm, release=RELEASE, namespace=NAMESPACE)
    claim = folder / "claim.yaml"
    claim.write_text(yaml.safe_dump({"artifacts": {"existingClaim": CLAIM, "mountPath": MOUNT}}))
    text = helm.template(RELEASE, DEFAULT_CHART, [path, claim], NAMESPACE)
    return [d for d in yaml.safe_load_all(text) if d]


@contextmanager
def booted(
    docs: list[dict[str, Any]], image_bin: Path, workdir: Path, claim: Path
) -> Iterator[Boot]:
    """The render booted, Serve's applications RUNNING and every pod ready."""
    boot = Boot(
        docs,
        image_bin=image_bin,
        image_env=read_dockerfile().env,
        workdir=workdir,
        namespace=NAMESPACE,
        claims={CLAIM: claim},
    )
    started = time.monotonic()
    try:
        boot.start(timeout_s=300)
        boot.apply_serve_config()
        boot.wait_running(timeout_s=300)
        boot.wait_ready(timeout_s=120)
        boot.timings["ready_s"] = time.monotonic() - started
        yield boot
    finally:
        boot.stop()


def poll(check: Callable[[], Any], deadline_s: float = 60.0, every_s: float = 0.5) -> Any:
    """``check()`` until it returns something truthy; its last result after the deadline."""
    end = time.monotonic() + deadline_s
    while True:
        result = check()
        if result or time.monotonic() > end:
            return result
        time.sleep(every_s)


class Load:
    """Closed-loop clients posting clips to model ``model`` through ``endpoints`` (the serve
    Service's, taken in turn) from a thread; every answer's variant and pool, every failure."""

    def __init__(self, endpoints: list[str], model: str = "tiny", clients: int = 2) -> None:
        self.endpoints = endpoints
        self.model, self.clients = model, clients
        self.answers: list[tuple[float, str, str]] = []  # when, variant, pool
        self.failed: list[tuple[float, str]] = []  # when the request was sent, what it got
        self._stop = threading.Event()
        self._body = pcm(0.5)
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=30) as client:

            async def worker(offset: int) -> None:
                turn = offset
                while not self._stop.is_set():
                    base = self.endpoints[turn % len(self.endpoints)]
                    turn += 1
                    sent = time.monotonic()
                    try:
                        r = await client.post(
                            f"{base}/v1/models/{self.model}:classify",
                            content=self._body,
                            headers=PCM,
                        )
                    except httpx.TransportError as exc:
                        self.failed.append((sent, f"{base}: {type(exc).__name__}"))
                        continue
                    if r.status_code != 200:
                        self.failed.append((sent, f"{base}: {r.status_code} {r.text[:200]}"))
                        continue
                    h = r.headers
                    self.answers.append(
                        (time.monotonic(), h["x-sluiceway-variant"], h["x-sluiceway-pool"])
                    )

            await asyncio.gather(*(worker(i) for i in range(self.clients)))

    def since(self, start: float) -> Counter[tuple[str, str]]:
        return Counter((v, p) for when, v, p in list(self.answers) if when >= start)

    def wait_for(
        self,
        predicate: Callable[[Counter[tuple[str, str]]], bool],
        start: float,
        deadline_s: float = 60,
    ) -> None:
        if not poll(lambda: predicate(self.since(start)), deadline_s, 0.2):
            raise AssertionError(
                f"not seen within {deadline_s} s: {self.since(start)}; failed {self.failed[-5:]}"
            )

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
