"""Every metric Sluiceway exports, in one place (names, units, labels).

Metrics go through Ray's metrics API, so each node's metrics agent exports them on the
node's metrics port (one PodMonitor endpoint per pod); Ray prefixes each name with
``ray_``. Objects are built by the deployments that record them (no import-time
singletons), so a test can build fresh ones.

| exported name (after Ray's prefix)              | type      | labels                           |
| ----------------------------------------------- | --------- | -------------------------------- |
| ray_sluiceway_request_duration_seconds          | histogram | model, variant, pool, code       |
| ray_sluiceway_requests_total                    | counter   | model, variant, pool, code, reason |
| ray_sluiceway_requests_rejected_total           | counter   | model, reason                    |
| ray_sluiceway_spillovers_total                  | counter   | model, from_pool, to_pool, reason|
| ray_sluiceway_request_retries_total             | counter   | model, pool, reason              |
| ray_sluiceway_replica_stalls_total              | counter   | model, pool                      |
| ray_sluiceway_pool_inflight_requests            | gauge     | model, pool                      |
| ray_sluiceway_replica_requests_dropped_total    | counter   | model, pool, reason              |
| ray_sluiceway_replica_memory_bytes              | gauge     | model, variant, pool             |
| ray_sluiceway_replica_memory_limit_bytes        | gauge     | model, variant, pool             |
| ray_sluiceway_replica_gpu_memory_bytes          | gauge     | model, variant, pool             |
| ray_sluiceway_artifact_load_seconds             | gauge     | model, variant, pool             |
| ray_sluiceway_variant_loaded                    | gauge     | model, variant, pool             |
| ray_sluiceway_batch_size                        | histogram | model, pool                      |
| ray_sluiceway_build_info                        | gauge (1) | version                          |
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ray.util.metrics import Counter, Gauge, Histogram

logger = logging.getLogger(__name__)

PREFIX = "sluiceway_"
# Gauges are re-recorded on this period, traffic or not: Ray's exporter drops a gauge that
# was not recorded lately, and Prometheus then marks the series stale.
GAUGE_REFRESH_S = 2.0
RAY_PREFIX = "ray_"

# Fine enough for P99 in milliseconds from 2 ms to 30 s: 1 ms steps at the low end.
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.002,
    0.004,
    0.006,
    0.008,
    0.010,
    0.0125,
    0.015,
    0.0175,
    0.020,
    0.025,
    0.030,
    0.035,
    0.040,
    0.045,
    0.050,
    0.060,
    0.070,
    0.080,
    0.090,
    0.100,
    0.120,
    0.140,
    0.160,
    0.180,
    0.200,
    0.225,
    0.250,
    0.275,
    0.300,
    0.350,
    0.400,
    0.450,
    0.500,
    0.600,
    0.700,
    0.800,
    0.900,
    1.0,
    1.25,
    1.5,
    1.75,
    2.0,
    2.5,
    3.0,
    4.0,
    5.0,
    7.5,
    10.0,
    15.0,
    20.0,
    30.0,
)
BATCH_BUCKETS: tuple[float, ...] = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)

REQUEST_DURATION = PREFIX + "request_duration_seconds"
REQUESTS = PREFIX + "requests"  # Ray's exporter adds _total to counters
REJECTED = PREFIX + "requests_rejected"
VARIANT_LOADED = PREFIX + "variant_loaded"
SPILLOVERS = PREFIX + "spillovers"
RETRIES = PREFIX + "request_retries"
STALLS = PREFIX + "replica_stalls"
DROPPED = PREFIX + "replica_requests_dropped"
INFLIGHT = PREFIX + "pool_inflight_requests"
REPLICA_MEMORY = PREFIX + "replica_memory_bytes"
REPLICA_MEMORY_LIMIT = PREFIX + "replica_memory_limit_bytes"
REPLICA_GPU_MEMORY = PREFIX + "replica_gpu_memory_bytes"
ARTIFACT_LOAD = PREFIX + "artifact_load_seconds"
BATCH_SIZE = PREFIX + "batch_size"
BUILD_INFO = PREFIX + "build_info"


def exported_name(name: str, suffix: str = "") -> str:
    """The name a Prometheus scrape shows for one of our metrics."""
    return RAY_PREFIX + name + suffix


@dataclass(frozen=True)
class IngressMetrics:
    """What the router records per request."""

    request_duration: Histogram
    requests: Counter
    rejected: Counter
    spillovers: Counter
    retries: Counter
    stalls: Counter
    inflight: Gauge
    build_info: Gauge

    @classmethod
    def create(cls) -> IngressMetrics:
        request_labels = ("model", "variant", "pool", "code")
        return cls(
            request_duration=Histogram(
                REQUEST_DURATION,
                description="Request latency at the ingress, in seconds.",
                boundaries=list(LATENCY_BUCKETS_S),
                tag_keys=request_labels,
            ),
            requests=Counter(
                REQUESTS,
                description="Requests answered, whatever ended them (reason: ok, shed, "
                "unavailable, deadline, bad_request, ..., internal).",
                tag_keys=(*request_labels, "reason"),
            ),
            rejected=Counter(
                REJECTED,
                description="Requests shed (saturated) or timed out (deadline).",
                tag_keys=("model", "reason"),
            ),
            spillovers=Counter(
                SPILLOVERS,
                description="Requests sent to a pool other than the preferred one.",
                tag_keys=("model", "from_pool", "to_pool", "reason"),
            ),
            retries=Counter(
                RETRIES,
                description="Requests sent again after a replica was lost, stalled or full.",
                tag_keys=("model", "pool", "reason"),
            ),
            stalls=Counter(
                STALLS,
                description="Replicas taken out for holding requests with no answer.",
                tag_keys=("model", "pool"),
            ),
            inflight=Gauge(
                INFLIGHT,
                description="Requests the pool holds (all ingresses), as this ingress sees it.",
                tag_keys=("model", "pool"),
            ),
            build_info=Gauge(
                BUILD_INFO, description="Always 1; labels say the build.", tag_keys=("version",)
            ),
        )


@dataclass(frozen=True)
class ReplicaMetrics:
    """What a model replica records."""

    memory: Gauge
    memory_limit: Gauge
    gpu_memory: Gauge
    load_seconds: Gauge
    loaded: Gauge
    batch_size: Histogram
    dropped: Counter

    @classmethod
    def create(cls) -> ReplicaMetrics:
        labels = ("model", "variant", "pool")
        return cls(
            memory=Gauge(
                REPLICA_MEMORY,
                description="Resident memory of the replica process, bytes.",
                tag_keys=labels,
            ),
            memory_limit=Gauge(
                REPLICA_MEMORY_LIMIT,
                description="Memory the replica may use: its container's cgroup limit, "
                "or the machine's memory where none is set, bytes.",
                tag_keys=labels,
            ),
            gpu_memory=Gauge(
                REPLICA_GPU_MEMORY,
                description="GPU memory used by the replica process, bytes (0 on CPU pools).",
                tag_keys=labels,
            ),
            load_seconds=Gauge(
                ARTIFACT_LOAD,
                description="Seconds to verify and load the artifact.",
                tag_keys=labels,
            ),
            loaded=Gauge(
                VARIANT_LOADED,
                description="1 when the replica serves the variant, 0 when its artifact "
                "failed to load (the replica serves the other variants).",
                tag_keys=labels,
            ),
            batch_size=Histogram(
                BATCH_SIZE,
                description="Requests per model call.",
                boundaries=list(BATCH_BUCKETS),
                tag_keys=("model", "pool"),
            ),
            dropped=Counter(
                DROPPED,
                description="Requests a replica dropped unrun: deadline passed, or caller gone.",
                tag_keys=("model", "pool", "reason"),
            ),
        )


def refresh_forever(
    record: Callable[[], None], name: str, *, every_s: float = GAUGE_REFRESH_S
) -> None:
    """Call ``record`` every ``every_s`` from a daemon thread, for the process's life."""

    def loop() -> None:
        while True:
            time.sleep(every_s)
            try:
                record()
            except Exception:  # one failed round must not end the loop; it is logged
                logger.exception("%s: failed", name)

    threading.Thread(target=loop, name=name, daemon=True).start()
