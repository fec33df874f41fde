"""A simulation scenario: pools and their service times, ingresses, arrivals, failures.

One pydantic model, loaded from YAML; a bad scenario is refused with the dotted path of
every field that is wrong (``ScenarioError``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from serving.config import LimitsConfig, RoutingSettings, describe_validation_error, read_yaml
from serving.errors import ScenarioError

Name = Annotated[str, Field(pattern=r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServiceTime(_Frozen):
    """Seconds one model call takes: ``base + per_row x rows``, for inputs of
    ``reference_input_seconds``, scaled in proportion to the input's length; then drawn
    around that mean: lognormal with coefficient of variation ``jitter_cv``, or exponential
    (queueing theory's M/M/c)."""

    base_seconds: float = Field(ge=0)
    per_row_seconds: float = Field(gt=0)
    reference_input_seconds: float = Field(3.0, gt=0)
    distribution: Literal["lognormal", "exponential"] = "lognormal"
    jitter_cv: float = Field(0.1, ge=0, le=2)
    source: str = Field(
        min_length=1,
        description="where these figures come from (a manifest, a bench run, an assumption)",
    )

    def seconds(self, rows: int, input_seconds: float) -> float:
        scale = input_seconds / self.reference_input_seconds
        return (self.base_seconds + self.per_row_seconds * rows) * scale


class Autoscaling(_Frozen):
    """Serve's autoscaler: replicas = ceil(requests in the pool / target), between bounds,
    each new one running ``startup_seconds`` after it was asked for."""

    min_replicas: int = Field(ge=1)
    max_replicas: int = Field(ge=1)
    target_ongoing_requests: float = Field(gt=0)
    period_seconds: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed max_replicas "
                f"({self.max_replicas})"
            )
        return self


class Pool(_Frozen):
    """A hardware pool: how many replicas, how each runs, what a call costs."""

    replicas: int = Field(ge=1, description="replicas at the start")
    max_ongoing_requests: int = Field(1, ge=1, description="model calls a replica runs at once")
    max_batch_size: int = Field(1, ge=1, le=256)
    max_queued_requests: int = Field(8, ge=0)
    service: ServiceTime
    startup_seconds: float = Field(30.0, ge=0, description="a replacement replica starts this late")
    autoscaling: Autoscaling | None = None

    def capacity_per_s(self, input_seconds: float) -> float:
        """Rows per second the pool's replicas serve at full batches."""
        call = self.service.seconds(self.max_batch_size, input_seconds)
        return self.replicas * self.max_ongoing_requests * self.max_batch_size / call


class Inputs(_Frozen):
    """Input lengths (seconds of audio): a weighted choice (equal lengths can batch)."""

    seconds: dict[float, float] = Field(
        min_length=1, description="length -> weight, e.g. {10: 0.3, 20: 0.4, 30: 0.3}"
    )

    @model_validator(mode="after")
    def _positive(self) -> Inputs:
        bad = {k: v for k, v in self.seconds.items() if k <= 0 or v <= 0}
        if bad:
            raise ValueError(f"lengths and weights must be positive, got {bad}")
        return self

    def mean(self) -> float:
        total = sum(self.seconds.values())
        return sum(k * w for k, w in self.seconds.items()) / total


class Phase(_Frozen):
    """Arrivals (Poisson) for ``seconds``: a constant ``load``, a ramp from ``load`` to
    ``to_load``, or with ``period_seconds`` a daily-like curve between the two (``load`` at
    the start of each period, ``to_load`` half way through), reported as ``steps`` load
    steps. Loads are multiples of the preferred pool's capacity; ``rate`` (requests per
    second) instead gives it absolutely."""

    name: str = Field(min_length=1)
    seconds: float = Field(gt=0)
    load: float | None = Field(None, ge=0)
    to_load: float | None = Field(None, ge=0)
    period_seconds: float | None = Field(None, gt=0)
    rate: float | None = Field(None, ge=0)
    steps: int = Field(1, ge=1, le=100)

    @model_validator(mode="after")
    def _one_rate(self) -> Phase:
        if (self.load is None) == (self.rate is None):
            raise ValueError("give exactly one of load (x the preferred pool's capacity) or rate")
        if self.to_load is not None and self.load is None:
            raise ValueError("to_load ramps from load: give load too")
        if self.period_seconds is not None and self.to_load is None:
            raise ValueError("period_seconds cycles between load and to_load: give to_load too")
        return self

    def load_at(self, elapsed_s: float) -> float:
        """Offered load ``elapsed_s`` into the phase (a multiple of the preferred pool's
        capacity; only for phases given by ``load``)."""
        assert self.load is not None
        to = self.to_load if self.to_load is not None else self.load
        if self.period_seconds is not None:
            share = (1 - math.cos(2 * math.pi * elapsed_s / self.period_seconds)) / 2
        else:
            share = elapsed_s / self.seconds
        return self.load + (to - self.load) * share


class Failure(_Frozen):
    """Something that goes wrong at ``at_seconds``."""

    at_seconds: float = Field(ge=0)
    kind: Literal["replica_lost", "node_lost", "pool_lost", "replica_stalled", "ingress_lost"]
    pool: str | None = None
    count: int = Field(1, ge=1, description="replicas (replica_lost, node_lost)")
    seconds: float = Field(
        60.0, gt=0, description="how long a pool stays lost or a replica stalled"
    )
    index: int = Field(0, ge=0, description="which ingress (ingress_lost)")

    @model_validator(mode="after")
    def _pool_named(self) -> Failure:
        if self.kind != "ingress_lost" and self.pool is None:
            raise ValueError(f"a {self.kind} failure names its pool")
        return self


class Scenario(_Frozen):
    """A whole simulation."""

    name: str = Field(min_length=1)
    seed: int = 0
    pools: dict[Name, Pool] = Field(min_length=1, description="in order of preference")
    ingresses: int = Field(1, ge=1, le=1000)
    spread: Literal["round_robin", "random"] = "random"
    network_seconds: float = Field(0.0005, ge=0, description="one way, ingress <-> replica")
    poll_seconds: float = Field(1.0, gt=0, description="how often ingresses learn replicas")
    routing: RoutingSettings = Field(
        RoutingSettings(),
        description="the serving config's routing settings, as the router reads them",
    )
    limits: LimitsConfig = Field(
        LimitsConfig(), description="the serving config's limits (the deadline)"
    )
    inputs: Inputs = Inputs(seconds={3.0: 1.0})
    arrivals: list[Phase] = Field(min_length=1)
    failures: list[Failure] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        for index, failure in enumerate(self.failures):
            if failure.pool is not None and failure.pool not in self.pools:
                raise ValueError(
                    f"failures[{index}].pool {failure.pool!r} is not a pool; pools: "
                    f"{sorted(self.pools)}"
                )
            if failure.kind == "ingress_lost" and failure.index >= self.ingresses:
                raise ValueError(
                    f"failures[{index}].index {failure.index} but there are "
                    f"{self.ingresses} ingresses"
                )
        return self

    @property
    def duration_s(self) -> float:
        return sum(p.seconds for p in self.arrivals)

    @property
    def preferred(self) -> str:
        return next(iter(self.pools))

    def capacity_per_s(self, pool: str | None = None) -> float:
        """Rows per second ``pool`` (default the preferred one) serves at full batches, for
        the mean input length."""
        return self.pools[pool or self.preferred].capacity_per_s(self.inputs.mean())


def parse_scenario(data: Any, origin: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(describe_validation_error(exc, origin)) from exc


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario YAML file."""
    return parse_scenario(read_yaml(path, "scenario", ScenarioError), str(path))
