"""Every Grafana dashboard panel's query, run against a real Prometheus that scraped a real
local Sluiceway under load, returns data: no panel is left empty by a wrong metric name,
label or unit. The chart ships the same JSON file (charts/sluiceway/dashboards)."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.prometheus_server import PrometheusServer
from tests.serving.conftest import deploy, serving_config
from tests.serving.test_routing_load import fire, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.integration]
DASHBOARD = Path(__file__).resolve().parents[2] / "charts/sluiceway/dashboards/sluiceway.json"
LOAD_ROUNDS = 6
MODEL = "tiny-dash"  # no other test serves it: the panels show this test's requests


def panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def as_grafana_would(expr: str) -> str:
    """The query Grafana sends with model = this test's model, every pool, a 1 m interval."""
    return expr.replace("$__rate_interval", "1m").replace("$model", MODEL).replace("$pool", ".*")


@pytest.fixture(scope="module")
def scraped_under_load(
    ray_serve: dict[str, int],
    tiny_artifacts: Path,
    token_file: Path,
    prometheus: PrometheusServer,
) -> PrometheusServer:
    deploy(
        serving_config(
            tiny_artifacts,
            token_file,
            ports=ray_serve,
            model=MODEL,
            fast={"max_ongoing_requests": 1, "max_queued_requests": 0},
            slow={"max_ongoing_requests": 1, "max_queued_requests": 1},
        )
    )
    base = f"http://127.0.0.1:{ray_serve['http']}"
    wait_ready(base, model=MODEL)
    prometheus.load_started = time.time()  # type: ignore[attr-defined]
    # Load spread over longer than Ray's metrics export interval (a few seconds): a counter
    # first scraped after all the load would show no rate at all.
    responses = []
    for _ in range(LOAD_ROUNDS):
        responses += asyncio.run(fire(base, count=24, concurrency=10, model=MODEL))
        time.sleep(3)
    pools = Counter(r.headers.get("x-sluiceway-pool") for r in responses if r.status_code == 200)
    codes = Counter(r.status_code for r in responses)
    # the load is what makes the panels meaningful: both pools served, some were shed
    assert set(pools) == {"fast", "slow"} and codes[503] > 0, (pools, codes)
    httpx.post(f"{base}/v1/models/{MODEL}:classify", content=b"RIFFjunk")  # a 401: errors
    return prometheus


def drawn_points(prometheus: PrometheusServer, promql: str) -> list[float]:
    """The numbers a time-series panel would draw since the load began (NaN is a gap)."""
    start = prometheus.load_started  # type: ignore[attr-defined]
    series = prometheus.query_range(promql, start - 5, time.time())
    points = [float(v) for s in series for _, v in s["values"]]
    return [p for p in points if not math.isnan(p)]


@pytest.mark.parametrize(("title", "expr"), panel_queries())
def test_panel_query_returns_data(
    scraped_under_load: PrometheusServer, title: str, expr: str
) -> None:
    query = as_grafana_would(expr)
    deadline = time.monotonic() + 60  # Ray's agents export every few seconds
    while not (points := drawn_points(scraped_under_load, query)):
        assert time.monotonic() < deadline, f"panel {title!r} draws nothing: {query}"
        time.sleep(2)
    assert all(math.isfinite(p) and p >= 0 for p in points), (title, points[:10])


def test_variables_list_the_served_model_and_its_pools(
    scraped_under_load: PrometheusServer,
) -> None:
    """The dashboard's `model` and `pool` variables (label_values queries) find values."""

    def label_values(label: str, match: str) -> list[str]:
        response = httpx.get(
            f"{scraped_under_load.url}/api/v1/label/{label}/values",
            params={"match[]": match},
            timeout=10,
        )
        response.raise_for_status()
        return list(response.json()["data"])

    assert MODEL in label_values("model", "ray_sluiceway_requests_total")
    pools = label_values("pool", f'ray_sluiceway_requests_total{{model=~"{MODEL}"}}')
    assert {"fast", "slow"} <= set(pools)
    variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
    queries = {v["name"]: v.get("definition") for v in variables}
    assert queries["model"] == "label_values(ray_sluiceway_requests_total, model)"
    assert queries["pool"] == 'label_values(ray_sluiceway_requests_total{model=~"$model"}, pool)'
