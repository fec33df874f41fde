"""The serving config: models -> variants (artifacts, weights) -> pools (replicas, batching).

One pydantic model validates both the local YAML file and, in the cluster, the RayService
``serveConfigV2`` application ``args`` rendered by the Helm chart, so they cannot drift.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    model_validator,
)

from optimize.manifest import Device
from serving.errors import ConfigError, ServingError

Name = Annotated[str, StringConstraints(pattern=r"^[a-z0-9]([-a-z0-9]{0,40}[a-z0-9])?$")]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArtifactRef(_Frozen):
    """Where an artifact directory is, and the digest that pins it: the sha256 of its
    manifest.json, which records every file's sha256 (``optimize.manifest.artifact_digest``)."""

    uri: str = Field(
        min_length=1,
        description="artifact directory: a path, file:// or http(s):// URL (fetched, checked)",
    )
    sha256: Sha256

    def local_path(self) -> Path:
        return Path(self.uri.removeprefix("file://"))


class VariantConfig(_Frozen):
    """One variant of a model: its share of traffic and its artifact for each pool."""

    weight: int = Field(100, ge=0, le=100, description="percent of traffic")
    artifacts: dict[Name, ArtifactRef] = Field(min_length=1, description="pool name -> artifact")


class ReplicasConfig(_Frozen):
    """Replica count of a pool's deployment (autoscaled between min and max)."""

    min: int = Field(
        1,
        ge=0,
        description=(
            "0 lets a pool be absent (a GPU pool whose nodes may not exist): Serve then "
            "starts it with no replica and the application runs without it, the ingress "
            "failing over to the next pool and probing it, which asks Serve for a replica"
        ),
    )
    max: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(2.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> ReplicasConfig:
        if self.min > self.max:
            raise ValueError(f"min ({self.min}) must not exceed max ({self.max})")
        return self


class BatchingConfig(_Frozen):
    """Batching inside a replica: requests waiting for a model call share the next one.

    No timer: a request that finds a call slot free runs at once, alone; batches form only
    from requests that had to wait anyway.
    """

    max_batch_size: int = Field(8, ge=1, le=256, description="rows per model call")


class PoolConfig(_Frozen):
    """A hardware pool: how its replicas run and how much each may hold."""

    device: Device = Field(Device.CPU, description="cuda: a GPU pool; cpu: CPUs only")
    replicas: ReplicasConfig = ReplicasConfig()
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    threads: int = Field(
        1, ge=1, le=256, description="ONNX Runtime intra-op threads per model call"
    )
    spin_threads: bool = Field(
        False,
        description=(
            "let ONNX Runtime's intra-op threads spin between runs: a little lower latency "
            "on cores nothing else needs, CPU burnt where they are shared"
        ),
    )
    nice: int = Field(
        0,
        ge=0,
        le=19,
        description=(
            "nice value of the inference threads (19 lowest priority; Ray already runs its "
            "workers, the HTTP proxy and ingress included, at 15, so only 16-19 rank "
            "inference below them): for replicas that share cores with the proxy and ingress "
            "(a one-machine cluster), so shedding and health checks stay prompt under load"
        ),
    )
    max_ongoing_requests: int = Field(
        4,
        ge=1,
        description=(
            "model calls a replica runs at once (each on `threads` threads; batched calls "
            "hold up to batching.max_batch_size rows)"
        ),
    )
    max_queued_requests: int = Field(
        8,
        ge=0,
        description=(
            "rows a replica holds waiting beyond what it runs; it refuses more at once, so "
            "a pool holds at most replicas x (running + this) whatever the number of ingresses"
        ),
    )
    batching: BatchingConfig | None = None
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources that pin replicas to the pool"
    )

    @property
    def rows_per_replica(self) -> int:
        """Rows one replica runs at once: its model calls x the rows a call may batch."""
        return self.max_ongoing_requests * (self.batching.max_batch_size if self.batching else 1)

    @model_validator(mode="after")
    def _gpu_needs_gpus(self) -> PoolConfig:
        if self.device is Device.CUDA and self.num_gpus <= 0:
            raise ValueError("a cuda pool needs num_gpus > 0 (e.g. 1, or 0.5 to share a GPU)")
        return self


class RoutingSettings(_Frozen):
    """How requests are spread over pools, whichever pools they are: what the router reads
    (and the simulator's scenarios give, ``simulate.scenario``)."""

    policy: Literal["spillover", "fallback"] = Field(
        "spillover",
        description=(
            "spillover: the preferred pool while it meets the SLO, the excess to the next, "
            "shed past the SLO (serving.routing.policy); fallback: the first pool with room "
            "whatever its latency, shed only when all are full (serving.routing.fallback)"
        ),
    )
    slo_p99_seconds: float = Field(0.5, gt=0, description="latency a request should meet")
    spill_hysteresis: float = Field(
        0.2, ge=0, lt=1, description="stop spilling once expected latency < SLO x (1 - this)"
    )
    min_spill_seconds: float = Field(2.0, ge=0, description="spill at least this long once started")
    latency_window: int = Field(64, ge=4, description="recent requests the latency estimate uses")
    retry_after_seconds: int = Field(1, ge=1, description="Retry-After sent with 503")
    health_check_seconds: float = Field(
        1.0, gt=0, description="probe interval for a failed pool or replica"
    )
    stall_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "a replica with requests outstanding and no answer this long is taken out and "
            "what waits on it is retried elsewhere (keep it above the slowest batch's time "
            "and well under the deadline)"
        ),
    )
    signal_ttl_seconds: float = Field(
        2.0,
        gt=0,
        description="replicas' load reports and latency samples older than this are stale",
    )
    retry_storm_ratio: float = Field(
        4.0,
        ge=0,
        description=(
            "refusals per answer (over the last second or two) taken as a retry storm: "
            "refused clients come straight back, so an ingress stops refusing for the SLO "
            "for a few seconds and queues up to the pools' own limits instead (0: never)"
        ),
    )
    sample_seconds: float = Field(
        0.5,
        gt=0,
        description=(
            "while spilling, one request this often still goes to the preferred pool (when it "
            "has an idle slot) so that its latency is measured afresh"
        ),
    )


class RoutingConfig(RoutingSettings):
    """How a model's requests are spread over its pools."""

    pools: list[Name] = Field(min_length=1, description="pools in order of preference")


class LimitsConfig(_Frozen):
    """Per-request limits."""

    max_body_bytes: int = Field(8 * 2**20, ge=1024)
    max_audio_seconds: float = Field(30.0, gt=0)
    deadline_seconds: float = Field(10.0, gt=0)


class ModelShape(_Frozen):
    """A served model without its variants: how its requests are routed and limited."""

    routing: RoutingConfig
    limits: LimitsConfig = LimitsConfig()

    @model_validator(mode="after")
    def _stall_within_deadline(self) -> ModelShape:
        if self.routing.stall_seconds >= self.limits.deadline_seconds:
            raise ValueError(
                f"routing.stall_seconds ({self.routing.stall_seconds:g}) must be below "
                f"limits.deadline_seconds ({self.limits.deadline_seconds:g}): a stalled "
                "replica's requests are retried elsewhere within their deadline"
            )
        return self


class ModelConfig(ModelShape):
    """A served model: its variants, routing and limits."""

    variants: dict[Name, VariantConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _consistent(self) -> ModelConfig:
        total = sum(v.weight for v in self.variants.values())
        if total != 100:
            weights = {name: v.weight for name, v in self.variants.items()}
            raise ValueError(f"variant weights must sum to 100, got {total} ({weights})")
        for name, variant in self.variants.items():
            missing = [p for p in self.routing.pools if p not in variant.artifacts]
            if missing:
                raise ValueError(f"variant {name!r} has no artifact for pool(s) {missing}")
        return self


class IngressConfig(_Frozen):
    """The HTTP ingress: any of its replicas takes any request (HAProxy spreads them)."""

    replicas: ReplicasConfig = Field(
        ReplicasConfig(min=1, max=1, target_ongoing_requests=64),
        description="ingress replicas (autoscaled between min and max on requests in flight)",
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="at most this many on one node (1 spreads them over nodes)"
    )
    num_cpus: float = Field(0.0, ge=0, description="CPUs Ray reserves per ingress replica")
    resources: dict[str, float] = Field(
        default_factory=dict, description="Ray custom resources an ingress replica needs"
    )
    max_body_bytes_in_flight: int = Field(
        256 * 2**20,
        ge=2**20,
        description="request bodies one ingress replica holds at once; beyond it, 503",
    )

    @model_validator(mode="after")
    def _at_least_one(self) -> IngressConfig:
        if self.replicas.min < 1:
            raise ValueError("replicas.min must be at least 1: with no ingress nothing answers")
        return self


class HttpConfig(_Frozen):
    """Where `sluiceway serve` opens HTTP (in the chart, its pods' ports say it)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    proxy_location: Literal["EveryNode", "HeadOnly"] = Field(
        "EveryNode",
        description=(
            "nodes that run the HTTP front: every node with a replica, or the head only "
            "(several Ray nodes on one machine share its ports)"
        ),
    )


class AuthConfig(_Frozen):
    """Optional bearer-token auth (health endpoints stay open)."""

    token_env: str | None = Field(None, description="environment variable holding the token")
    token_file: Path | None = Field(None, description="file holding the token")


class MetricsConfig(_Frozen):
    export_port: int = Field(8080, ge=1, le=65535, description="Ray metrics port on every node")


class ServingShape(_Frozen):
    """The serving application without its variants: which deployments exist and how Ray
    places them. Serve restarts every replica when this changes; a change of variants
    (weights, artifacts: a rollout step) reconfigures the running replicas in place."""

    models: dict[Name, ModelShape] = Field(min_length=1)
    pools: dict[Name, PoolConfig] = Field(min_length=1)
    ingress: IngressConfig = IngressConfig()
    http: HttpConfig = HttpConfig()
    auth: AuthConfig = AuthConfig()
    metrics: MetricsConfig = MetricsConfig()

    def with_variants(self, variants: Mapping[str, Any], origin: str) -> ServingConfig:
        """The whole config: this shape (already parsed, not parsed again) and each model's
        variants (``user_config`` JSON, parsed and checked against its routing here)."""
        try:
            models = {
                name: ModelConfig(
                    routing=model.routing,
                    limits=model.limits,
                    variants=dict(variants.get(name, {})),
                )
                for name, model in self.models.items()
            }
            return ServingConfig(
                models=models,
                pools=self.pools,
                ingress=self.ingress,
                http=self.http,
                auth=self.auth,
                metrics=self.metrics,
            )
        except ValidationError as exc:
            raise ConfigError(describe_validation_error(exc, origin)) from exc

    @model_validator(mode="after")
    def _pools_exist(self) -> ServingShape:
        for name, model in self.models.items():
            unknown = [p for p in model.routing.pools if p not in self.pools]
            if unknown:
                raise ValueError(
                    f"model {name!r} routes to undefined pool(s) {unknown}; "
                    f"defined pools: {sorted(self.pools)}"
                )
        return self


class ServingConfig(ServingShape):
    """The whole serving application."""

    models: dict[Name, ModelConfig] = Field(min_length=1)  # type: ignore[assignment]

    def as_shape(self) -> ServingShape:
        """This config without its variants, as the parsed shape (nothing parsed again)."""
        return ServingShape(
            models={
                n: ModelShape(routing=m.routing, limits=m.limits) for n, m in self.models.items()
            },
            pools=self.pools,
            ingress=self.ingress,
            http=self.http,
            auth=self.auth,
            metrics=self.metrics,
        )

    def shape(self) -> dict[str, Any]:
        """This config without its variants, as JSON (the application's ``args``)."""
        data = self.model_dump(mode="json")
        for model in data["models"].values():
            del model["variants"]
        return data

    def variants(self) -> dict[str, dict[str, Any]]:
        """Every model's variants, as JSON (the ingress's ``user_config``)."""
        return {
            name: {v: c.model_dump(mode="json") for v, c in model.variants.items()}
            for name, model in self.models.items()
        }

    def pool_artifacts(self, model: str, pool: str) -> dict[str, dict[str, str]]:
        """The artifact of each variant of ``model`` on ``pool``, as JSON (that replica
        deployment's ``user_config``)."""
        return {
            variant: config.artifacts[pool].model_dump(mode="json")
            for variant, config in self.models[model].variants.items()
        }


def with_variants(shape: dict[str, Any], variants: dict[str, Any], origin: str) -> ServingConfig:
    """The whole config from an application's ``args`` (its shape) and its variants."""
    data = dict(shape)
    data["models"] = {
        name: {**model, "variants": variants.get(name, {})}
        for name, model in dict(shape.get("models", {})).items()
    }
    return parse_config(data, origin)


INGRESS_NAME = "ingress"  # the ingress deployment's name (serving.app)


def config_from_application(app: dict[str, Any], origin: str) -> ServingConfig:
    """The serving config a Serve application (serveConfigV2's, or
    ``serving.server.application_config``'s) deploys: its ``args`` and the ingress's
    variants, once every replica deployment's ``user_config`` is checked to carry its share
    of them."""
    given = {d.get("name"): d.get("user_config") or {} for d in app.get("deployments") or []}
    if INGRESS_NAME not in given:
        raise ConfigError(f"{origin}: no user_config for the {INGRESS_NAME!r} deployment")
    config = with_variants(app.get("args") or {}, given[INGRESS_NAME].get("variants", {}), origin)
    for model, spec in config.models.items():
        for pool in spec.routing.pools:
            name = replica_deployment_name(model, pool)
            raw = given.get(name, {}).get("artifacts")
            try:
                refs = {v: ArtifactRef.model_validate(r) for v, r in dict(raw or {}).items()}
            except (ValidationError, TypeError, ValueError) as exc:
                raise ConfigError(f"{origin}: deployment {name!r}: {exc}") from exc
            if refs != {v: c.artifacts[pool] for v, c in spec.variants.items()}:
                raise ConfigError(
                    f"{origin}: deployment {name!r} is given artifacts {raw!r}, not those of "
                    f"the variants of {model!r} on pool {pool!r}"
                )
    return config


def replica_deployment_name(model: str, pool: str) -> str:
    """The Serve deployment name of a (model, pool)."""
    return f"{model}-{pool}"


def describe_validation_error(exc: ValidationError, origin: str) -> str:
    """One line per problem: dotted field path, message, offending value."""
    lines = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"]) or "(root)"
        value = repr(error.get("input"))
        value = value if len(value) <= 80 else value[:77] + "..."
        lines.append(f"{origin}: {where}: {error['msg']} (got {value})")
    return "; ".join(lines)


def parse_config(data: Any, origin: str = "config") -> ServingConfig:
    """Validate already-parsed data (YAML, or the RayService application ``args``)."""
    try:
        return ServingConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, origin)) from exc


def read_yaml(path: Path, what: str, error: type[ServingError] = ConfigError) -> Any:
    """The data in a YAML file; ``error`` naming ``what`` it is when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror}") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path} is not valid YAML: {exc}") from exc


def load_config(path: Path) -> ServingConfig:
    """Read and validate a serving YAML file."""
    return parse_config(read_yaml(path, "serving config"), str(path))
