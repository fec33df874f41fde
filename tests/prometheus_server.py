"""A real Prometheus (Debian package `prometheus`) on a free localhost port, for tests."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx


class PrometheusServer:
    """Starts ``prometheus`` scraping ``targets`` every second; stop() ends it."""

    def __init__(
        self,
        workdir: Path,
        port: int,
        targets: list[str],
        labels: dict[str, str] | None = None,
    ) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise RuntimeError(
                "prometheus is not installed: run `make install` (installs the "
                "Debian package prometheus)"
            )
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            "  - job_name: sluiceway\n"
            f"    static_configs: [{{targets: {targets!r}, labels: {labels or {}!r}}}]\n".replace(
                "'", '"'
            )
        )
        self.url = f"http://127.0.0.1:{port}"
        self._process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "prometheus.log").open("w"),
        )
        self._wait_ready()

    def _wait_ready(self, deadline_s: float = 60) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            if self._process.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self._process.returncode}")
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise RuntimeError("prometheus did not become ready")

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        response.raise_for_status()
        return list(response.json()["data"]["result"])

    def query_range(self, promql: str, start: float, end: float) -> list[dict[str, Any]]:
        """Series of ``promql`` from ``start`` to ``end`` (unix seconds), one point a second:
        what a Grafana time-series panel draws."""
        response = httpx.get(
            f"{self.url}/api/v1/query_range",
            params={"query": promql, "start": start, "end": end, "step": 1},
            timeout=30,
        )
        response.raise_for_status()
        return list(response.json()["data"]["result"])

    def wait_for(self, promql: str, predicate: Any, deadline_s: float = 90) -> list[dict[str, Any]]:
        """Poll ``promql`` until ``predicate(result)`` holds."""
        end = time.monotonic() + deadline_s
        result: list[dict[str, Any]] = []
        while time.monotonic() < end:
            result = self.query(promql)
            if predicate(result):
                return result
            time.sleep(1.0)
        raise AssertionError(f"{promql} never satisfied the condition; last result: {result}")

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self._process.kill()
