"""Canary analysis for latency-gated rollouts: is the new variant as fast and as healthy as the
one it replaces?

Two halves, kept apart (IO at the edges, compute in the middle):

- ``judge(baseline, canary, policy)`` is pure: two ``VariantHealth`` snapshots in, a
  ``Verdict`` out (promote, rollback, or no-data), with the numbers behind every check.
- ``PrometheusClient`` reads those snapshots from Prometheus, using exactly the metric names
  the serving replicas export (``serving/metrics.py``; Ray adds the ``ray_`` prefix).

Its two errors live here until ``deploy/errors.py`` takes them (they already derive from its
``DeployError``, so one ``except DeployError`` covers them)::

    DeployError
    ├── PrometheusUnavailable   Prometheus could not be reached or did not answer a query
    └── MissingSeries           Prometheus holds no Sluiceway series for the model
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Self

import httpx

from deploy.errors import DeployError

__all__ = [
    "CanaryPolicy",
    "Decision",
    "MissingSeries",
    "PrometheusClient",
    "PrometheusUnavailable",
    "Sample",
    "VariantHealth",
    "Verdict",
    "judge",
]

logger = logging.getLogger(__name__)

# Exported names as a scrape shows them (serving/metrics.py: Ray prefixes `ray_`, and adds
# `_total` to counters). deploy/ must not import serving (Ray), so they are spelled out here;
# tests/deploy/test_canary.py checks them against serving.metrics.
REQUEST_DURATION_BUCKET = "ray_sluiceway_request_duration_seconds_bucket"
REQUESTS_TOTAL = "ray_sluiceway_requests_total"

# Answered 5xx that count as errors: all but shed requests (503 by design under load); a 503
# because no pool can serve (reason="unavailable") is an outage and counts.
_ERROR_CODES = 'code=~"5..",reason!="shed"'
_PORT_FORWARD = "kubectl -n monitoring port-forward svc/prometheus-operated 9090"


class PrometheusUnavailable(DeployError):
    """Prometheus could not be reached, or answered a query with an error."""


class MissingSeries(DeployError):
    """Prometheus has no Sluiceway series for a model: nothing to judge a canary on."""


# --- the verdict (pure) -----------------------------------------------------------------


@dataclass(frozen=True)
class VariantHealth:
    """What one variant of a model did over the analysis window.

    ``requests``: requests answered in the window (every code, 503 sheds included).
    ``p99_seconds``: P99 latency of successful requests; None when none succeeded.
    ``error_ratio``: share of ``requests`` answered 5xx but shed (0-1); None when
    there were no requests.
    """

    variant: str
    requests: float
    p99_seconds: float | None
    error_ratio: float | None


@dataclass(frozen=True)
class CanaryPolicy:
    """When a canary is good enough to promote.

    ``max_p99_ratio``: the canary's P99 may be at most this many times the baseline's.
    ``p99_tolerance_seconds``: a P99 increase smaller than this never fails (noise on small
    models, where 1.25x of 8 ms is one bucket).
    ``max_error_ratio_increase``: the canary's error ratio may exceed the baseline's by at
    most this much (0-1; 0.01 is one percentage point).
    ``min_requests``: each side needs at least this many requests in the window to judge.
    """

    max_p99_ratio: float = 1.25
    p99_tolerance_seconds: float = 0.020
    max_error_ratio_increase: float = 0.01
    min_requests: int = 30

    def __post_init__(self) -> None:
        limits: list[tuple[str, float, bool, str]] = [
            ("max_p99_ratio", self.max_p99_ratio, self.max_p99_ratio > 0, "> 0"),
            (
                "p99_tolerance_seconds",
                self.p99_tolerance_seconds,
                self.p99_tolerance_seconds >= 0,
                ">= 0",
            ),
            (
                "max_error_ratio_increase",
                self.max_error_ratio_increase,
                0 <= self.max_error_ratio_increase <= 1,
                "between 0 and 1",
            ),
            ("min_requests", self.min_requests, self.min_requests >= 1, ">= 1"),
        ]
        for name, value, ok, limit in limits:
            if not ok or math.isnan(value):
                raise ValueError(f"CanaryPolicy.{name} must be {limit}, got {value!r}")


class Decision(StrEnum):
    """What the rollout does with the canary."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    # Not enough evidence: never promotes; the rollout stops and rolls back.
    NO_DATA = "no-data"


@dataclass(frozen=True)
class Verdict:
    """A decision and the sentences behind it.

    ``reasons`` holds every check, passed or failed, with its numbers (so a PROMOTE can be
    explained too); ``failures`` is the subset that decided a ROLLBACK or NO_DATA (empty for
    PROMOTE).
    """

    decision: Decision
    reasons: tuple[str, ...]
    baseline: VariantHealth
    canary: VariantHealth
    failures: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: the decision, then what decided it."""
        head = f"{self.decision.value}: canary {self.canary.variant!r} vs baseline "
        head += f"{self.baseline.variant!r}"
        return f"{head}: {'; '.join(self.failures or self.reasons)}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.2f}%"


def _missing_evidence(health: VariantHealth, role: str, policy: CanaryPolicy) -> list[str]:
    missing = []
    if health.requests < policy.min_requests:
        missing.append(
            f"{role} {health.variant!r}: {health.requests:.0f} requests in the window "
            f"< {policy.min_requests} needed to judge"
        )
    if health.p99_seconds is None:
        missing.append(f"{role} {health.variant!r}: no successful request, so no P99")
    if health.error_ratio is None:
        missing.append(f"{role} {health.variant!r}: no error ratio (no requests)")
    return missing


def _latency_check(base: float, canary: float, policy: CanaryPolicy) -> tuple[bool, str]:
    """(passed, sentence) for the canary's P99 against the baseline's."""
    increase = canary - base
    ratio = canary / base if base > 0 else (math.inf if canary > 0 else 1.0)
    over_ratio = ratio > policy.max_p99_ratio
    over_tolerance = increase > policy.p99_tolerance_seconds
    head = f"canary P99 {_ms(canary)} vs baseline {_ms(base)}: {ratio:.2f}x"
    limit = f"{policy.max_p99_ratio:g}x"
    tolerance = f"{policy.p99_tolerance_seconds * 1000:g} ms tolerance"
    change = f"{increase * 1000:+.1f} ms"
    if over_ratio and over_tolerance:
        return False, f"{head} > {limit} and {change} > {tolerance}"
    if over_ratio:
        return True, f"{head} > {limit} but {change} <= {tolerance}"
    return True, f"{head} <= {limit}"


def _error_check(base: float, canary: float, policy: CanaryPolicy) -> tuple[bool, str]:
    """(passed, sentence) for the canary's error ratio against the baseline's."""
    increase = canary - base
    head = f"canary error ratio {_pct(canary)} vs baseline {_pct(base)}: "
    head += f"{increase * 100:+.2f} pp"
    allowed = f"{policy.max_error_ratio_increase * 100:g} pp allowed"
    if increase > policy.max_error_ratio_increase:
        return False, f"{head} > {allowed}"
    return True, f"{head} <= {allowed}"


DEFAULT_POLICY = CanaryPolicy()


def judge(
    baseline: VariantHealth, canary: VariantHealth, policy: CanaryPolicy = DEFAULT_POLICY
) -> Verdict:
    """Promote the canary, roll it back, or say there is not enough data to tell.

    NO_DATA when either side has fewer than ``policy.min_requests`` requests or no P99.
    ROLLBACK when the canary's P99 is over both ``max_p99_ratio`` times the baseline's and
    the baseline's plus ``p99_tolerance_seconds``, or when its error ratio is over the
    baseline's plus ``max_error_ratio_increase``; every failing check is listed. Otherwise
    PROMOTE.
    """
    missing = _missing_evidence(baseline, "baseline", policy)
    missing += _missing_evidence(canary, "canary", policy)
    traffic = (
        f"requests in the window: baseline {baseline.requests:.0f}, canary "
        f"{canary.requests:.0f} (>= {policy.min_requests} needed)"
    )
    if missing:
        return Verdict(Decision.NO_DATA, (traffic, *missing), baseline, canary, tuple(missing))
    # _missing_evidence rules out None on both sides; the asserts tell mypy.
    assert baseline.p99_seconds is not None and canary.p99_seconds is not None
    assert baseline.error_ratio is not None and canary.error_ratio is not None
    checks = [
        _latency_check(baseline.p99_seconds, canary.p99_seconds, policy),
        _error_check(baseline.error_ratio, canary.error_ratio, policy),
    ]
    failures = tuple(reason for passed, reason in checks if not passed)
    reasons = (traffic, *(reason for _, reason in checks))
    decision = Decision.ROLLBACK if failures else Decision.PROMOTE
    return Verdict(decision, reasons, baseline, canary, failures)


# --- reading Prometheus (IO) ------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One series of an instant query's result: its labels and its value (NaN as Prometheus
    gives it, e.g. a quantile over no observations)."""

    labels: dict[str, str]
    value: float


def _quote(value: str) -> str:
    """``value`` as a PromQL string literal."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _matchers(*extra: str, **labels: str) -> str:
    """``{a="x",b="y",<extra>}`` with every label value quoted."""
    parts = [f"{name}={_quote(value)}" for name, value in labels.items()]
    return "{" + ",".join([*parts, *extra]) + "}"


def _shown(url: httpx.URL) -> str:
    """``url`` without credentials, for messages."""
    return str(url.copy_with(username=None, password=None))


class PrometheusClient:
    """Instant queries against one Prometheus, and the health of a model's variants.

    ``client``: an ``httpx.Client`` to use (the caller closes it); without one, this object
    opens its own and ``close()`` (or ``with``) ends it.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_seconds: float = 10.0,
        client: httpx.Client | None = None,
    ) -> None:
        self.base_url = httpx.URL(base_url.rstrip("/") + "/")
        self._owned = client is None
        self._client = client or httpx.Client(timeout=timeout_seconds)
        self._timeout_seconds = timeout_seconds

    def close(self) -> None:
        if self._owned:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _unavailable(self, what: str) -> PrometheusUnavailable:
        return PrometheusUnavailable(
            f"Prometheus at {_shown(self.base_url)} {what}: check the --prometheus URL; "
            f"from outside the cluster, run `{_PORT_FORWARD}` and pass "
            "--prometheus http://127.0.0.1:9090"
        )

    def query(self, promql: str) -> list[Sample]:
        """The instant-vector result of ``promql`` now (a scalar result is one unlabelled
        sample)."""
        url = self.base_url.join("api/v1/query")
        try:
            response = self._client.get(
                url, params={"query": promql}, timeout=self._timeout_seconds
            )
        except httpx.TimeoutException as exc:
            raise self._unavailable(
                f"did not answer within {self._timeout_seconds:g} s ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise self._unavailable(f"cannot be reached ({type(exc).__name__}: {exc})") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise self._unavailable(
                f"answered HTTP {response.status_code} without a JSON body to {promql!r} "
                "(is that Prometheus's address?)"
            )
        if response.status_code != httpx.codes.OK or body.get("status") != "success":
            raise self._unavailable(
                f"answered HTTP {response.status_code} ({body.get('errorType', '?')}: "
                f"{body.get('error', 'no error text')}) to {promql!r}"
            )
        samples = _samples(body.get("data"))
        if samples is None:
            raise self._unavailable(
                f"answered {promql!r} with no instant vector ({str(body)[:200]})"
            )
        return samples

    def _scalar(self, promql: str) -> float | None:
        """The single value of an aggregated query; None when empty or NaN."""
        samples = self.query(promql)
        if not samples or math.isnan(samples[0].value):
            return None
        return samples[0].value

    def variant_health(self, model: str, variant: str, window_seconds: int) -> VariantHealth:
        """Requests, P99 and error ratio of one variant over the last ``window_seconds``.

        Raises ``MissingSeries`` when Prometheus holds no series at all for ``model``: a
        scrape or PodMonitor problem must not read as a healthy canary.
        """
        window = _window(window_seconds)
        if not self.query(f"count({REQUESTS_TOTAL}{_matchers(model=model)})"):
            raise MissingSeries(
                f"Prometheus at {_shown(self.base_url)} has no Sluiceway series for model "
                f"{model!r} ({REQUESTS_TOTAL}): check the model name, that it has served "
                "requests, and that the chart's PodMonitor is enabled and selected by "
                "Prometheus (or the scrape config reaches the Ray metrics port); not promoting"
            )
        selected = _matchers(model=model, variant=variant)
        p99 = self._scalar(
            "histogram_quantile(0.99, sum by (le) "
            f"(rate({REQUEST_DURATION_BUCKET}{selected}[{window}])))"
        )
        requests = self._scalar(f"sum(increase({REQUESTS_TOTAL}{selected}[{window}]))") or 0.0
        errored = _matchers(_ERROR_CODES, model=model, variant=variant)
        errors = self._scalar(f"sum(increase({REQUESTS_TOTAL}{errored}[{window}]))") or 0.0
        health = VariantHealth(
            variant=variant,
            requests=requests,
            p99_seconds=p99,
            error_ratio=errors / requests if requests > 0 else None,
        )
        logger.debug("model %r over %s: %s", model, window, health)
        return health

    def pool_p99(self, model: str, window_seconds: int) -> dict[tuple[str, str], float]:
        """P99 latency (seconds) of ``model`` per (variant, pool) over the last
        ``window_seconds``; pools with no successful request in the window are absent."""
        window = _window(window_seconds)
        samples = self.query(
            "histogram_quantile(0.99, sum by (variant, pool, le) "
            f"(rate({REQUEST_DURATION_BUCKET}{_matchers(model=model)}[{window}])))"
        )
        return {
            (s.labels.get("variant", ""), s.labels.get("pool", "")): s.value
            for s in samples
            if not math.isnan(s.value)
        }


def _window(window_seconds: int) -> str:
    if window_seconds < 1:
        raise ValueError(f"window_seconds must be >= 1, got {window_seconds!r}")
    return f"{window_seconds}s"


def _samples(data: object) -> list[Sample] | None:
    """Samples of an instant query's ``data`` object (a vector, or a scalar as one unlabelled
    sample); None for any other shape (a range vector, or not Prometheus at all)."""
    if not isinstance(data, dict):
        return None
    kind, result = data.get("resultType"), data.get("result")
    if not isinstance(result, list):
        return None
    try:
        if kind == "scalar":
            return [Sample({}, float(result[1]))]
        if kind == "vector":
            return [Sample(dict(item["metric"]), float(item["value"][1])) for item in result]
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None
