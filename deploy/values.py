"""Chart values from built artifacts: URIs and sha256 from the manifests, pods sized from
what the manifests measured.

``chart_values`` writes the values of a first release, ``add_variant`` adds a canary
variant to existing values (for a rollout), ``write_values`` checks values with the serving
config and the real ``helm template`` before writing them. Values are plain dicts shaped
like ``charts/sluiceway/values.yaml``: that is what helm reads and writes back.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from deploy.errors import HelmFailed, InvalidValues
from deploy.helm import DEFAULT_CHART, Helm
from optimize.errors import ArtifactError
from optimize.manifest import (
    POOL_OF_DEVICE,
    WIDE_SPREAD,
    Device,
    Manifest,
    artifact_digest,
    read_manifest,
    verify_artifact,
)
from serving.config import (
    BatchingConfig,
    ServingConfig,
    config_from_application,
    parse_config,
)
from serving.errors import ConfigError

logger = logging.getLogger(__name__)

Values = dict[str, Any]

MIB = 2**20
# What a Ray worker process holds before it loads a model (raylet, core worker, Serve).
RAY_WORKER_BASELINE_BYTES = 2**30
DEFAULT_VARIANT = "stable"
DEFAULT_HEADROOM = 0.5
# Worker groups that charts/sluiceway/values.yaml defines by default: a pool list without
# them sets them to null, which removes them (else a default group would run idle pods).
CHART_DEFAULT_WORKER_GROUPS = ("cpu",)
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
HEADER = (
    "# Values for charts/sluiceway, written by sluiceway (deploy/values.py) from artifact\n"
    "# manifests and checked with the serving config and `helm template`. Regenerate them\n"
    "# rather than editing; add cluster specifics (node selectors) in a second -f file.\n"
)
_QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$")
_UNITS: dict[str | None, int] = {
    None: 1,
    **{s: 1024**i for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"), 1)},
    **{s: 1000**i for i, s in enumerate(("k", "M", "G", "T", "P", "E"), 1)},
}


class PoolArtifact(BaseModel):
    """Which artifact serves a pool, on which device, with how many threads and pods."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    artifact: Path = Field(description="artifact directory: model.onnx + manifest.json")
    device: Device = Field(description="cuda: a GPU pool (one GPU per pod); cpu: CPUs only")
    threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="ONNX Runtime intra-op threads, also the pod's CPUs; None: the thread "
        "count the manifest's latency was measured with",
    )
    min_replicas: int = Field(
        1,
        ge=0,
        description="worker pods at least; 0 also lets the pool's Serve deployment start "
        "with no replica, so that the application runs while the pool has no node",
    )
    max_replicas: int = Field(4, ge=1, description="worker pods at most (one replica each)")

    @model_validator(mode="after")
    def _ordered(self) -> PoolArtifact:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas ({self.min_replicas}) must not exceed "
                f"max_replicas ({self.max_replicas})"
            )
        return self


def worker_memory_mib(peak_rss_bytes: int, headroom: float) -> int:
    """Memory of a worker pod in MiB: ceil((1 GiB + peak RSS) x (1 + headroom)) / 1 MiB."""
    needed = Fraction(RAY_WORKER_BASELINE_BYTES + peak_rss_bytes)
    return math.ceil(needed * (1 + Fraction(repr(headroom))) / MIB)


def slo_origin(pools: Mapping[str, PoolArtifact], slo_p99_seconds: float | None) -> str:
    """Where the SLO ``chart_values`` uses comes from, in a sentence for the user (and for
    the values file): the figure, and how far to trust it."""
    if slo_p99_seconds is not None:
        return f"SLO {slo_p99_seconds:g} s: given (--slo-p99-seconds)"
    pool = sorted(pools, key=lambda name: pools[name].device is not Device.CUDA)[0]
    spec = pools[pool]
    manifest = read_manifest(spec.artifact)
    latency = manifest.measurements.latency
    provider = manifest.measurements.provider
    if latency.clip_seconds is not None:
        inputs = f"{latency.clip_seconds:g} s clips"
    elif latency.tokens is not None:
        inputs = f"{latency.tokens} tokens"
    else:
        inputs = f"inputs of {getattr(manifest.input, 'example_shapes', {})}"
    sentence = (
        f"SLO {default_slo_seconds(latency.p99_s):g} s: 2x the P99 of pool {pool}'s artifact "
        f"{manifest.variant} ({latency.p99_s * 1e3:.0f} ms over {latency.runs} runs of "
        f"{inputs}, batch {latency.batch}, {latency.threads} threads, {provider}"
    )
    sentence += f", slices {latency.spread:.2f}x apart)" if latency.spread else ")"
    warnings = []
    if spec.device is Device.CUDA and not provider.startswith(("CUDA", "Tensorrt")):
        warnings.append(f"measured on {provider}, not the GPU this pool runs on")
    if latency.spread is not None and latency.spread > WIDE_SPREAD:
        warnings.append("measured on a busy machine (its slices disagree)")
    if warnings:
        sentence += "; " + " and ".join(warnings) + ": pass --slo-p99-seconds"
    return sentence


def default_slo_seconds(p99_s: float) -> float:
    """Twice a measured P99, rounded up to the next 10 ms."""
    return math.ceil(Fraction(repr(p99_s)) * 2 * 100) / 100


def chart_values(
    model: str,
    pools: Mapping[str, PoolArtifact],
    *,
    uri_prefix: str | None,
    headroom: float = DEFAULT_HEADROOM,
    variant: str = DEFAULT_VARIANT,
    slo_p99_seconds: float | None = None,
) -> Values:
    """Values serving ``model`` from one artifact per pool, as variant ``variant`` (weight 100).

    Every artifact is verified first (files match their manifest, gates passed). Each pool
    gets ``serving.models.<model>.variants.<variant>.artifacts.<pool>`` (``uri`` is
    ``uri_prefix/<artifact directory name>`` when a prefix is given, e.g. a bucket URL or a
    PVC mount path such as ``/artifacts/w2v``, else the artifact's absolute local path;
    ``sha256`` is the manifest's model.onnx digest), ``serving.pools.<pool>`` (device,
    CPUs (``num_cpus``; one thread per model call and as many calls at once on cpu, two
    batched calls on cuda), one GPU on cuda, resources
    ``{pool-<pool>: 1}``, replicas between min_replicas and max_replicas) and a
    worker group ``workerGroups.<pool>`` whose pods each hold one replica:

    - cpu = threads (requests = limits), ``gpus`` 1 on cuda (plus a toleration of the usual
      ``nvidia.com/gpu`` taint);
    - memory request = limit = ceil((1 GiB + peak RSS) x (1 + headroom)) in Mi, where 1 GiB
      is a Ray worker's own baseline and peak RSS is ``measurements.peak_rss_bytes``, the
      measured peak of a process loading and running the artifact. The default headroom,
      0.5, covers longer clips and bigger batches than were measured and, during a rollout,
      a canary variant loaded into the same replica (``add_variant`` checks that it fits).

    Pools are routed GPU (cuda) pools first, then CPU pools, each in the order given.
    ``slo_p99_seconds`` defaults to twice the P99 the preferred (first routed) pool's
    artifact measured, rounded up to 10 ms; that P99 was measured where the artifact was
    built (``measurements.provider``, clip length and threads in the manifest), so pass the
    SLO you mean when that was not the serving hardware.
    """
    if not pools:
        raise InvalidValues(f"model {model!r}: no pools given; give at least one pool artifact")
    _check_headroom(headroom)
    manifests = {pool: _verified(pool, spec) for pool, spec in pools.items()}
    order = sorted(pools, key=lambda pool: pools[pool].device is not Device.CUDA)
    if slo_p99_seconds is None:
        slo_p99_seconds = default_slo_seconds(manifests[order[0]].measurements.latency.p99_s)
    worker_groups: dict[str, Any] = {}
    serving_pools: dict[str, Any] = {}
    for pool in order:
        spec, manifest = pools[pool], manifests[pool]
        threads = spec.threads or manifest.measurements.latency.threads
        worker_groups[pool] = _worker_group(spec, manifest, threads, headroom)
        serving_pools[pool] = _serving_pool(pool, spec, threads)
    for default_group in CHART_DEFAULT_WORKER_GROUPS:
        worker_groups.setdefault(default_group, None)
    values: Values = {
        "workerGroups": worker_groups,
        "serving": {
            "models": {
                model: {
                    "variants": {
                        variant: {
                            "weight": 100,
                            "artifacts": _artifact_refs(
                                {pool: pools[pool] for pool in order}, manifests, uri_prefix
                            ),
                        }
                    },
                    "routing": {"pools": order, "slo_p99_seconds": slo_p99_seconds},
                }
            },
            "pools": serving_pools,
        },
    }
    validate_serving(values)
    logger.info("values for %s: pools %s, SLO %s s", model, order, slo_p99_seconds)
    return values


def add_variant(
    values: Mapping[str, Any],
    model: str,
    variant: str,
    pools: Mapping[str, PoolArtifact],
    weight: int,
    *,
    uri_prefix: str | None = None,
    headroom: float = DEFAULT_HEADROOM,
) -> Values:
    """A copy of ``values`` where ``model`` also serves ``variant`` at ``weight`` percent.

    The other variants' weights are scaled to share the remaining ``100 - weight`` in
    their current proportions (largest remainder, so the total is exactly 100). A variant
    of that name already there is replaced, so calling again with a larger weight steps a
    rollout. Only ``artifact`` and ``device`` of each PoolArtifact are used: the pools and
    worker groups stay as they are, so KubeRay updates Serve in place. Because one replica
    holds every variant of its model, the new artifact must fit beside the current ones:
    the worker's memory limit less its ``headroom`` (what ``chart_values`` sized it for, the
    first variant) plus the new artifact's measured peak RSS must not exceed the limit.
    That estimate assumes the values came from ``chart_values`` with this ``headroom`` and
    does not count other variants added since (their peak RSS is not in the values).
    """
    result: Values = copy.deepcopy(dict(values))
    models = result.get("serving", {}).get("models", {})
    if model not in models:
        raise InvalidValues(
            f"model {model!r} is not in the values (models: {sorted(models)}); "
            "make its values with chart_values first"
        )
    _check_headroom(headroom)
    served_pools = result["serving"].get("pools", {})
    manifests: dict[str, Manifest] = {}
    for pool, spec in pools.items():
        if pool not in served_pools:
            raise InvalidValues(
                f"pool {pool!r} is not in serving.pools (pools: {sorted(served_pools)}); "
                "a rollout adds artifacts to existing pools only"
            )
        device = served_pools[pool].get("device", "cpu")
        if spec.device != device:
            raise InvalidValues(
                f"pool {pool!r} is a {device} pool but its new artifact was given for "
                f"{spec.device}; give the pool's own device"
            )
        manifests[pool] = _verified(pool, spec)
        _check_fits(result, pool, variant, manifests[pool], headroom)
    variants = models[model]["variants"]
    current = {name: int(v.get("weight", 100)) for name, v in variants.items()}
    weights = rebalance_weights(current, variant, weight)
    refs = _artifact_refs(pools, manifests, uri_prefix)
    variants[variant] = {"weight": weight, "artifacts": refs}
    for name, share in weights.items():
        variants[name]["weight"] = share
    validate_serving(result)
    return result


def add_model(values: Mapping[str, Any], other: Mapping[str, Any]) -> Values:
    """``values`` serving the models of ``other`` too (both as ``chart_values`` makes them).

    A pool both use must be configured alike in both (device, threads, batching: one pool,
    one setting); its worker pods then hold a replica of every model routed to it, so their
    CPUs and memory are the sums of what each model's values asked for, and the pod counts
    the larger of the two. Other pools and worker groups are taken as they are.
    """
    result: Values = copy.deepcopy(dict(values))
    serving = result.setdefault("serving", {})
    models, pools = serving.setdefault("models", {}), serving.setdefault("pools", {})
    groups = result.setdefault("workerGroups", {})
    for name, model in (other.get("serving", {}).get("models") or {}).items():
        if name in models:
            raise InvalidValues(
                f"model {name!r} is already in the values; give the new one another name "
                "(--model) or roll out a variant of it (sluiceway deploy rollout)"
            )
        models[name] = copy.deepcopy(model)
    for name, pool in (other.get("serving", {}).get("pools") or {}).items():
        if name not in pools:
            pools[name] = copy.deepcopy(pool)
            continue
        ours = {k: v for k, v in pools[name].items() if k != "replicas"}
        theirs = {k: v for k, v in pool.items() if k != "replicas"}
        if ours != theirs:
            differ = sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))
            raise InvalidValues(
                f"pool {name!r} is set differently for the new model ({', '.join(differ)}): "
                f"{ {k: ours.get(k) for k in differ} } vs { {k: theirs.get(k) for k in differ} }; "
                "serve it on a pool of its own (--pool NAME=SUBDIR:DEVICE)"
            )
        replicas = pools[name].setdefault("replicas", {})
        for key in ("min", "max"):
            replicas[key] = max(
                int(replicas.get(key, 1)), int(pool.get("replicas", {}).get(key, 1))
            )
    for name, group in (other.get("workerGroups") or {}).items():
        if group is None:
            groups.setdefault(name, None)
        elif groups.get(name) is None:
            groups[name] = copy.deepcopy(group)
        else:
            groups[name] = _summed_group(name, groups[name], group)
    validate_serving(result)
    return result


def _summed_group(name: str, ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> dict[str, Any]:
    """One worker group holding a replica of each side's models: CPUs, memory and GPUs add."""
    group = copy.deepcopy(dict(ours))
    for key in ("minReplicas", "maxReplicas"):
        group[key] = max(int(ours.get(key, 0)), int(theirs.get(key, 0)))
    if int(ours.get("gpus", 0)) != int(theirs.get("gpus", 0)):
        raise InvalidValues(
            f"workerGroups.{name}: gpus {ours.get('gpus')} vs {theirs.get('gpus')}; one pool, "
            "one kind of node: serve the new model on a pool of its own"
        )
    for part in ("requests", "limits"):
        mine = group.setdefault("resources", {}).setdefault(part, {})
        other = (theirs.get("resources") or {}).get(part) or {}
        for resource in ("cpu", "memory"):
            if resource in mine and resource in other:
                mine[resource] = _sum_quantities(resource, mine[resource], other[resource])
    return group


def _sum_quantities(resource: str, first: str | int | float, second: str | int | float) -> str:
    if resource == "memory":
        return f"{math.ceil((parse_memory_bytes(first) + parse_memory_bytes(second)) / MIB)}Mi"
    total = _millicores(first) + _millicores(second)
    return str(total // 1000) if total % 1000 == 0 else f"{total}m"


def _millicores(cpu: str | int | float) -> int:
    text = str(cpu)
    return int(text[:-1]) if text.endswith("m") else math.ceil(Fraction(text) * 1000)


def rebalance_weights(current: Mapping[str, int], variant: str, weight: int) -> dict[str, int]:
    """Weights with ``variant`` at ``weight`` and the others scaled to sum to 100 with it."""
    if not 0 <= weight <= 100:
        raise InvalidValues(f"variant {variant!r}: weight {weight} is not a percentage (0-100)")
    others = {name: w for name, w in current.items() if name != variant}
    remaining = 100 - weight
    total = sum(others.values())
    if remaining and total <= 0:
        raise InvalidValues(
            f"variant {variant!r} at weight {weight}: the other variants "
            f"({others or 'none'}) have no weight to scale to the remaining {remaining}, so "
            "the weights cannot sum to 100; give it weight 100 or add it beside a served variant"
        )
    if not others:
        return {variant: weight}
    shares = {name: divmod(w * remaining, total) for name, w in others.items()}
    scaled = {name: quotient for name, (quotient, _) in shares.items()}
    left = remaining - sum(scaled.values())
    by_remainder = sorted(others, key=lambda name: -shares[name][1])  # stable: given order
    for name in by_remainder[:left]:
        scaled[name] += 1
    return {**scaled, variant: weight}


def validate_serving(values: Mapping[str, Any]) -> ServingConfig:
    """The ``serving`` subtree parsed by the serving config, or InvalidValues naming the
    field path, the problem and the value."""
    try:
        return parse_config(values.get("serving"), "values: serving")
    except ConfigError as exc:
        raise InvalidValues(f"{exc}; fix the inputs the values were made from") from exc


def write_values(
    values: Mapping[str, Any],
    path: Path,
    helm: Helm,
    *,
    chart: Path = DEFAULT_CHART,
    release: str = "sluiceway",
    namespace: str = "default",
    note: str | None = None,
) -> Path:
    """Write ``values`` as YAML to ``path`` once the serving config accepts them and the
    real ``helm template`` renders them (and the serving config accepts the
    ``serveConfigV2`` args it renders). Written to a temporary file beside ``path`` and
    renamed over it: ``path`` is either the old file or the new one, never half of one."""
    validate_serving(values)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    staged = Path(name)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            header = HEADER + (f"# {note}\n" if note else "")
            out.write(header + yaml.safe_dump(dict(values), sort_keys=False))
        try:
            rendered = helm.template(release, chart, [staged], namespace)
        except HelmFailed as exc:
            raise InvalidValues(
                f"`helm template` of {chart} refuses the values for {path}: {exc.stderr}; "
                "fix the value it names"
            ) from exc
        _check_rendered(rendered, chart)
        staged.chmod(0o644)
        staged.replace(path)
    finally:
        staged.unlink(missing_ok=True)
    logger.info("wrote values to %s", path)
    return path


def parse_memory_bytes(quantity: str | int | float) -> int:
    """Bytes of a Kubernetes memory quantity such as ``1536Mi``, ``2Gi``, ``4G`` or ``1e9``."""
    text = str(quantity).strip()
    match = _QUANTITY.match(text)
    if match is None:
        try:
            return math.ceil(float(text))
        except ValueError:
            raise InvalidValues(
                f"memory {quantity!r} is not a Kubernetes quantity; write it like 1536Mi or 2Gi"
            ) from None
    number: str = match.group(1)
    unit: str | None = match.group(2)
    return math.ceil(Fraction(number) * _UNITS[unit])


def _check_headroom(headroom: float) -> None:
    if not (math.isfinite(headroom) and headroom >= 0):
        raise InvalidValues(
            f"headroom {headroom!r} is not a share of the measured memory to add: give 0 or "
            "more, e.g. 0.5 for 50 %"
        )


def _verified(pool: str, spec: PoolArtifact) -> Manifest:
    try:
        manifest = verify_artifact(spec.artifact)
    except ArtifactError as exc:
        raise InvalidValues(f"pool {pool!r}: {exc}") from exc
    if POOL_OF_DEVICE[spec.device] != manifest.pool:
        logger.warning(
            "pool %r runs %s on %s, but it was built for the %s pool",
            pool,
            spec.artifact,
            spec.device,
            manifest.pool,
        )
    return manifest


def _artifact_refs(
    pools: Mapping[str, PoolArtifact], manifests: Mapping[str, Manifest], uri_prefix: str | None
) -> dict[str, dict[str, str]]:
    refs = {}
    for pool, spec in pools.items():
        if uri_prefix:
            uri = f"{uri_prefix.rstrip('/')}/{spec.artifact.resolve().name}"
        else:
            uri = str(spec.artifact.resolve())
        refs[pool] = {"uri": uri, "sha256": artifact_digest(spec.artifact)}
    return refs


def _worker_group(
    spec: PoolArtifact, manifest: Manifest, threads: int, headroom: float
) -> dict[str, Any]:
    memory = f"{worker_memory_mib(manifest.measurements.peak_rss_bytes, headroom)}Mi"
    sized = {"cpu": str(threads), "memory": memory}
    group: dict[str, Any] = {
        "minReplicas": spec.min_replicas,
        "maxReplicas": spec.max_replicas,
        "gpus": 1 if spec.device is Device.CUDA else 0,
        "resources": {"requests": dict(sized), "limits": dict(sized)},
    }
    if spec.device is Device.CUDA:
        group["tolerations"] = [dict(GPU_TOLERATION)]
    return group


# Rows a replica may hold waiting; the SLO decides how much of it is used before shedding.
QUEUE_ROWS = 64


def _serving_pool(pool: str, spec: PoolArtifact, threads: int) -> dict[str, Any]:
    """A pod's CPUs go to model calls: on a CPU pool one thread per call and as many calls
    at once as CPUs (the least CPU per request, no call waiting for a core another holds);
    on a GPU pool two batched calls at once, each with the CPUs for ONNX Runtime's own
    threads."""
    config: dict[str, Any] = {
        "device": spec.device.value,
        "replicas": {"min": spec.min_replicas, "max": spec.max_replicas},
        "num_cpus": threads,
        "resources": {f"pool-{pool}": 1},
        "max_queued_requests": QUEUE_ROWS,
    }
    if spec.device is Device.CUDA:
        config |= {
            "num_gpus": 1,
            "threads": threads,
            "max_ongoing_requests": 2,
            "batching": BatchingConfig(max_batch_size=16).model_dump(),
        }
    else:
        config |= {"threads": 1, "max_ongoing_requests": threads}
    return config


def _check_fits(
    values: Mapping[str, Any], pool: str, variant: str, manifest: Manifest, headroom: float
) -> None:
    group = (values.get("workerGroups") or {}).get(pool) or {}
    limit_value = group.get("resources", {}).get("limits", {}).get("memory")
    if limit_value is None:
        logger.debug("workerGroups.%s has no memory limit: not checking that it fits", pool)
        return
    limit = parse_memory_bytes(limit_value)
    held = Fraction(limit) / (1 + Fraction(repr(headroom)))
    adds = manifest.measurements.peak_rss_bytes
    if held + adds > limit:
        raise InvalidValues(
            f"pool {pool!r}: variant {variant!r} does not fit beside the current variants: a "
            f"replica holds every variant, about {float(held) / MIB:.0f} Mi for the current "
            f"ones (the {limit_value} limit of workerGroups.{pool} less its "
            f"{headroom:.0%} headroom) plus {adds / MIB:.0f} Mi measured for the new artifact; "
            "regenerate the values with more headroom (the worker pods restart) or roll out "
            "a smaller artifact"
        )


def _check_rendered(rendered: str, chart: Path) -> None:
    docs = [doc for doc in yaml.safe_load_all(rendered) if doc]
    services = [doc for doc in docs if doc.get("kind") == "RayService"]
    if len(services) != 1:
        raise InvalidValues(f"{chart} rendered {len(services)} RayService objects, not 1")
    serve_config = yaml.safe_load(services[0]["spec"]["serveConfigV2"])
    try:
        config_from_application(serve_config["applications"][0], "rendered serveConfigV2")
    except ConfigError as exc:
        raise InvalidValues(f"{exc}; the chart's defaults and these values disagree") from exc
