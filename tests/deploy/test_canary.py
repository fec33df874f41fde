"""Canary analysis: `judge` over plain numbers, and `PrometheusClient` against a real
Prometheus (Debian package `prometheus`) scraping a stand-in exporter.

The stand-in is a localhost http.server whose text exposition has the names and labels the
serving replicas export, with counters that grow with time at known rates and histograms whose
observations all fall in one known bucket per series; it stands in for Ray's metrics agent so
these tests need no Ray. tests/serving/test_metrics_prometheus.py checks the real names.
"""

from __future__ import annotations

import math
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from deploy.canary import (
    REQUEST_DURATION_BUCKET,
    REQUESTS_TOTAL,
    CanaryPolicy,
    Decision,
    MissingSeries,
    PrometheusClient,
    PrometheusUnavailable,
    VariantHealth,
    judge,
)
from tests.prometheus_server import PrometheusServer
from tests.serving.conftest import free_port

# --- judge ------------------------------------------------------------------------------


def health(
    variant: str = "stable",
    requests: float = 1000,
    p99: float | None = 0.150,
    errors: float | None = 0.005,
) -> VariantHealth:
    return VariantHealth(variant=variant, requests=requests, p99_seconds=p99, error_ratio=errors)


BASE = health()

CASES = [
    pytest.param(BASE, health("v2"), Decision.PROMOTE, [], id="equal"),
    pytest.param(
        health(p99=0.1503),
        health("v2", p99=0.412),
        Decision.ROLLBACK,
        ["canary P99 412.0 ms vs baseline 150.3 ms: 2.74x > 1.25x and +261.7 ms > 20 ms tolerance"],
        id="slower-beyond-ratio-and-tolerance",
    ),
    pytest.param(
        health(p99=0.008),
        health("v2", p99=0.020),
        Decision.PROMOTE,
        [],
        id="slower-by-ratio-within-tolerance",
    ),
    pytest.param(
        health(p99=0.200),
        health("v2", p99=0.240),
        Decision.PROMOTE,
        [],
        id="slower-beyond-tolerance-within-ratio",
    ),
    pytest.param(
        BASE,
        health("v2", errors=0.03),
        Decision.ROLLBACK,
        ["canary error ratio 3.00% vs baseline 0.50%: +2.50 pp > 1 pp allowed"],
        id="more-errors",
    ),
    pytest.param(
        BASE,
        health("v2", requests=12),
        Decision.NO_DATA,
        ["canary 'v2': 12 requests in the window < 30 needed to judge"],
        id="too-few-canary-requests",
    ),
    pytest.param(
        health(p99=None),
        health("v2"),
        Decision.NO_DATA,
        ["baseline 'stable': no successful request, so no P99"],
        id="no-baseline-p99",
    ),
    pytest.param(
        health(requests=0, p99=None, errors=None),
        health("v2", requests=5),
        Decision.NO_DATA,
        [
            "baseline 'stable': 0 requests in the window < 30 needed to judge",
            "baseline 'stable': no successful request, so no P99",
            "baseline 'stable': no error ratio (no requests)",
            "canary 'v2': 5 requests in the window < 30 needed to judge",
        ],
        id="no-data-lists-every-gap",
    ),
    pytest.param(
        BASE,
        health("v2", p99=0.400, errors=0.05),
        Decision.ROLLBACK,
        [
            "canary P99 400.0 ms vs baseline 150.0 ms: 2.67x > 1.25x and +250.0 ms > 20 ms "
            "tolerance",
            "canary error ratio 5.00% vs baseline 0.50%: +4.50 pp > 1 pp allowed",
        ],
        id="both-failures-listed",
    ),
]


@pytest.mark.parametrize(("baseline", "canary", "decision", "failures"), CASES)
def test_judge(
    baseline: VariantHealth, canary: VariantHealth, decision: Decision, failures: list[str]
) -> None:
    verdict = judge(baseline, canary)
    assert verdict.decision is decision
    assert list(verdict.failures) == failures
    assert set(verdict.failures) <= set(verdict.reasons)
    assert (verdict.baseline, verdict.canary) == (baseline, canary)


def test_a_promote_still_says_the_numbers_behind_it() -> None:
    verdict = judge(health(p99=0.008), health("v2", p99=0.020, errors=0.004))
    assert verdict.decision is Decision.PROMOTE
    assert verdict.reasons == (
        "requests in the window: baseline 1000, canary 1000 (>= 30 needed)",
        "canary P99 20.0 ms vs baseline 8.0 ms: 2.50x > 1.25x but +12.0 ms <= 20 ms tolerance",
        "canary error ratio 0.40% vs baseline 0.50%: -0.10 pp <= 1 pp allowed",
    )


def test_policy_changes_the_limits() -> None:
    strict = CanaryPolicy(max_p99_ratio=1.1, p99_tolerance_seconds=0.0, min_requests=2000)
    assert judge(BASE, health("v2")).decision is Decision.PROMOTE
    assert judge(BASE, health("v2"), strict).decision is Decision.NO_DATA
    verdict = judge(health(requests=5000), health("v2", 5000, p99=0.170), strict)
    assert verdict.decision is Decision.ROLLBACK
    assert verdict.failures == (
        "canary P99 170.0 ms vs baseline 150.0 ms: 1.13x > 1.1x and +20.0 ms > 0 ms tolerance",
    )


def test_summary_is_one_line_with_the_decision_and_what_decided_it() -> None:
    rollback = judge(BASE, health("v2", p99=0.400, errors=0.05)).summary()
    assert rollback.startswith("rollback: canary 'v2' vs baseline 'stable': canary P99 400.0 ms")
    assert "; canary error ratio 5.00%" in rollback
    promote = judge(BASE, health("v2")).summary()
    assert promote.startswith("promote: canary 'v2' vs baseline 'stable': requests in the window")
    assert "\n" not in rollback + promote


def test_decision_values() -> None:
    assert [d.value for d in Decision] == ["promote", "rollback", "no-data"]
    assert Decision("no-data") is Decision.NO_DATA
    assert str(Decision.ROLLBACK) == "rollback"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_p99_ratio", 0.0),
        ("p99_tolerance_seconds", -0.001),
        ("max_error_ratio_increase", 1.5),
        ("max_p99_ratio", math.nan),
        ("min_requests", 0),
    ],
)
def test_policy_rejects_impossible_limits_naming_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=rf"CanaryPolicy\.{field} must be .*, got {value!r}"):
        CanaryPolicy(**{field: value})  # type: ignore[arg-type]


def test_metric_names_are_what_the_replicas_export() -> None:
    from serving.metrics import REQUEST_DURATION, REQUESTS, exported_name

    assert exported_name(REQUEST_DURATION, "_bucket") == REQUEST_DURATION_BUCKET
    assert exported_name(REQUESTS, "_total") == REQUESTS_TOTAL


# --- PrometheusClient without a Prometheus ----------------------------------------------


def test_nothing_listening_names_the_url_and_how_to_reach_prometheus() -> None:
    port = free_port()
    with (
        PrometheusClient(f"http://admin:s3cret@127.0.0.1:{port}") as client,
        pytest.raises(PrometheusUnavailable) as caught,
    ):
        client.query("up")
    message = str(caught.value)
    assert f"http://127.0.0.1:{port}/ cannot be reached (ConnectError" in message
    assert "--prometheus" in message
    assert "kubectl -n monitoring port-forward svc/prometheus-operated 9090" in message
    assert "s3cret" not in message


def test_a_server_that_never_answers_times_out() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()  # accepts connections into the backlog, never reads or answers
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with (
            PrometheusClient(url, timeout_seconds=0.3) as client,
            pytest.raises(PrometheusUnavailable, match=r"did not answer within 0\.3 s"),
        ):
            client.query("up")


def test_bad_window_is_rejected_before_any_query() -> None:
    with PrometheusClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(ValueError, match="window_seconds must be >= 1, got 0"):
            client.variant_health("tiny", "stable", 0)
        with pytest.raises(ValueError, match="window_seconds must be >= 1, got -5"):
            client.pool_p99("tiny", -5)


# --- against a real Prometheus ----------------------------------------------------------

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, math.inf)
MODEL = "tiny"
WEIRD_MODEL = 'we"ird\\model'  # a quote and a backslash: label values must be escaped
WINDOW_S = 10


@dataclass(frozen=True)
class FakeSeries:
    """One (model, variant, pool, code, reason) series: requests per second and, for a
    success, the upper bound of the one bucket all its observations fall in."""

    model: str
    variant: str
    pool: str
    code: str
    per_second: float
    bucket: float | None = None
    reason: str = "ok"


SERIES = (
    FakeSeries(MODEL, "stable", "gpu", "200", 10, bucket=0.05),  # (0, 50 ms]
    FakeSeries(MODEL, "stable", "cpu", "200", 10, bucket=0.1),  # (50, 100 ms]
    FakeSeries(MODEL, "canary", "gpu", "200", 10, bucket=0.5),  # (250, 500 ms]
    FakeSeries(MODEL, "canary", "none", "500", 1, reason="internal"),  # an error
    FakeSeries(MODEL, "canary", "none", "503", 2, reason="shed"),  # answered, not an error
    FakeSeries(MODEL, "canary", "none", "503", 1, reason="unavailable"),  # an outage: error
    FakeSeries(WEIRD_MODEL, "stable", "gpu", "200", 10, bucket=0.05),
)


def _labels(series: FakeSeries, **extra: str) -> str:
    pairs = {
        "model": series.model,
        "variant": series.variant,
        "pool": series.pool,
        "code": series.code,
        "reason": series.reason,
        **extra,
    }
    escaped = {k: v.replace("\\", "\\\\").replace('"', '\\"') for k, v in pairs.items()}
    return "{" + ",".join(f'{k}="{v}"' for k, v in escaped.items()) + "}"


def exposition(elapsed_s: float) -> str:
    """The text a scrape ``elapsed_s`` seconds after the start shows."""
    lines = [f"# TYPE {REQUESTS_TOTAL} counter"]
    lines += [f"{REQUESTS_TOTAL}{_labels(s)} {int(s.per_second * elapsed_s)}" for s in SERIES]
    histogram = REQUEST_DURATION_BUCKET.removesuffix("_bucket")
    lines.append(f"# TYPE {histogram} histogram")
    for s in SERIES:
        if s.bucket is None:
            continue
        count = int(s.per_second * elapsed_s)
        for le in BUCKETS:
            shown = "+Inf" if math.isinf(le) else repr(le)
            value = count if le >= s.bucket else 0
            lines.append(f"{histogram}_bucket{_labels(s, le=shown)} {value}")
        lines.append(f"{histogram}_sum{_labels(s)} {count * s.bucket * 0.9}")
        lines.append(f"{histogram}_count{_labels(s)} {count}")
    return "\n".join(lines) + "\n"


class _Exporter(BaseHTTPRequestHandler):
    started = time.monotonic()

    def do_GET(self) -> None:
        if self.path != "/metrics":
            self.send_error(404)
            return
        body = exposition(time.monotonic() - self.started).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    """The stand-in metrics endpoint's host:port."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Exporter)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture(scope="module")
def prometheus(exporter: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real Prometheus that has scraped the exporter long enough for every variant to have
    more than the default policy's minimum requests in the window."""
    server = PrometheusServer(tmp_path_factory.mktemp("prometheus"), free_port(), [exporter])
    try:
        server.wait_for(
            f'sum by (variant) (increase({REQUESTS_TOTAL}{{model="{MODEL}"}}[{WINDOW_S}s]))',
            lambda result: len(result) == 2 and all(float(r["value"][1]) > 50 for r in result),
            deadline_s=40,
        )
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def client(prometheus: str) -> Iterator[PrometheusClient]:
    with PrometheusClient(prometheus, timeout_seconds=5) as client:
        yield client


@pytest.mark.slow
@pytest.mark.integration
def test_variant_health_reads_p99_requests_and_errors(client: PrometheusClient) -> None:
    stable = client.variant_health(MODEL, "stable", WINDOW_S)
    canary = client.variant_health(MODEL, "canary", WINDOW_S)
    assert stable.variant == "stable"
    assert stable.requests > 50
    assert stable.p99_seconds is not None
    assert 0.05 < stable.p99_seconds <= 0.1  # half the observations are in (50, 100 ms]
    assert stable.error_ratio == 0
    assert canary.requests > 30
    assert canary.p99_seconds is not None
    assert 0.25 < canary.p99_seconds <= 0.5
    # 2 errors a second (a 500, an outage's 503) out of 14 answered; sheds are not errors.
    assert canary.error_ratio is not None
    assert 0.10 < canary.error_ratio < 0.19

    verdict = judge(stable, canary)
    assert verdict.decision is Decision.ROLLBACK
    assert len(verdict.failures) == 2


@pytest.mark.slow
@pytest.mark.integration
def test_a_variant_without_traffic_is_no_data(client: PrometheusClient) -> None:
    idle = client.variant_health(MODEL, "never-served", WINDOW_S)
    assert idle == VariantHealth("never-served", requests=0.0, p99_seconds=None, error_ratio=None)
    stable = client.variant_health(MODEL, "stable", WINDOW_S)
    assert judge(stable, idle).decision is Decision.NO_DATA


@pytest.mark.slow
@pytest.mark.integration
def test_label_values_are_escaped(client: PrometheusClient) -> None:
    weird = client.variant_health(WEIRD_MODEL, "stable", WINDOW_S)
    assert weird.requests > 0
    assert weird.p99_seconds is not None
    assert weird.p99_seconds <= 0.05


@pytest.mark.slow
@pytest.mark.integration
def test_pool_p99_per_variant_and_pool(client: PrometheusClient) -> None:
    p99 = client.pool_p99(MODEL, WINDOW_S)
    assert set(p99) == {("stable", "gpu"), ("stable", "cpu"), ("canary", "gpu")}
    assert 0 < p99["stable", "gpu"] <= 0.05
    assert 0.05 < p99["stable", "cpu"] <= 0.1
    assert 0.25 < p99["canary", "gpu"] <= 0.5
    assert client.pool_p99("absent", WINDOW_S) == {}


@pytest.mark.slow
@pytest.mark.integration
def test_a_model_prometheus_has_never_seen_raises_missing_series(
    client: PrometheusClient,
) -> None:
    with pytest.raises(MissingSeries, match=r"no Sluiceway series for model 'absent'.*PodMonitor"):
        client.variant_health("absent", "stable", WINDOW_S)


@pytest.mark.slow
@pytest.mark.integration
def test_a_query_prometheus_rejects_is_reported_with_its_error(
    client: PrometheusClient, prometheus: str
) -> None:
    with pytest.raises(PrometheusUnavailable) as caught:
        client.query("sum(")
    message = str(caught.value)
    assert f"Prometheus at {prometheus}/ answered HTTP 400 (bad_data: " in message
    assert "'sum('" in message


@pytest.mark.slow
@pytest.mark.integration
def test_scalar_and_vector_results(client: PrometheusClient) -> None:
    assert [s.value for s in client.query("scalar(vector(2))")] == [2.0]
    samples = client.query(f'{REQUESTS_TOTAL}{{model="{MODEL}",variant="canary"}}')
    assert sorted(s.labels["code"] for s in samples) == ["200", "500", "503", "503"]


def test_an_address_that_is_not_prometheus(exporter: str) -> None:
    with (
        PrometheusClient(f"http://{exporter}") as client,
        pytest.raises(PrometheusUnavailable, match=r"answered HTTP 404 without a JSON body"),
    ):
        client.query("up")
