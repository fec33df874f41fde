"""`sluiceway deploy`: values from artifacts, latency-gated rollouts, cluster status.

sluiceway deploy values  --artifacts artifacts/wav2vec2-base --uri-prefix https://m/w2v
sluiceway deploy rollout --release sw -f new.yaml --model w2v --canary v2 --dry-run
sluiceway deploy values  --artifacts artifacts/all-minilm-l6-v2 --output values.yaml --add
sluiceway deploy status  --release sw --namespace ml --prometheus http://127.0.0.1:9090
sudo sluiceway deploy boot -f values.yaml --claim sluiceway-artifacts=./artifacts --check
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer
import yaml

from deploy.canary import CanaryPolicy, PrometheusClient
from deploy.errors import DeployError, InvalidValues
from deploy.helm import DEFAULT_CHART, Helm
from deploy.rollout import Plan, plan_lines, run, with_weights, write_temp_values
from deploy.values import (
    HEADER,
    PoolArtifact,
    add_model,
    chart_values,
    slo_origin,
    write_values,
)
from optimize.manifest import Device

app = typer.Typer(help="Values from artifacts, latency-gated rollouts, cluster status.")


def rayservice_name(release: str, values: Mapping[str, Any] | None = None) -> str:
    """The RayService's name: the chart's full name for a release with these values
    (templates/_helpers.tpl ``sluiceway.fullname``, ``nameOverride``/``fullnameOverride``
    included)."""
    values = values or {}
    if values.get("fullnameOverride"):
        return str(values["fullnameOverride"])[:63].rstrip("-")
    name = str(values.get("nameOverride") or "sluiceway")
    full = release if name in release else f"{release}-{name}"
    return full[:63].rstrip("-")


def _pools(artifacts: Path, specs: list[str]) -> dict[str, PoolArtifact]:
    """``NAME=SUBDIR:DEVICE`` pool specs; by default gpu=fp16:cuda and cpu=int8:cpu."""
    if not specs:
        defaults = {"fp16": "gpu=fp16:cuda", "int8": "cpu=int8:cpu"}
        specs = [spec for subdir, spec in defaults.items() if (artifacts / subdir).is_dir()]
        if not specs:
            raise InvalidValues(
                f"{artifacts} holds neither fp16/ nor int8/: pass --pool NAME=SUBDIR:DEVICE"
            )
    pools: dict[str, PoolArtifact] = {}
    for spec in specs:
        name, _, rest = spec.partition("=")
        subdir, _, device = rest.partition(":")
        if not name or not subdir or device not in set(Device):
            raise InvalidValues(f"--pool {spec!r}: write NAME=SUBDIR:DEVICE, e.g. gpu=fp16:cuda")
        pools[name] = PoolArtifact(artifact=artifacts / subdir, device=Device(device))
    return pools


@app.command("values")
def values_command(
    artifacts: Path = typer.Option(
        ..., "--artifacts", "-a", help="Directory `sluiceway optimize` wrote."
    ),
    output: Path = typer.Option(
        Path("values.yaml"), "--output", "-o", help="Values file to write."
    ),
    model: str | None = typer.Option(None, help="Model name (default: the directory's name)."),
    pool: list[str] = typer.Option(
        [], "--pool", help="NAME=SUBDIR:DEVICE, repeatable (default gpu=fp16:cuda, cpu=int8:cpu)."
    ),
    uri_prefix: str | None = typer.Option(
        None, help="Where pods find the artifact dirs: https://... or a PVC path."
    ),
    headroom: float = typer.Option(
        0.5, help="Memory headroom over the measured peak (0.5 = +50 %)."
    ),
    variant: str = typer.Option("stable", help="Variant name."),
    slo: float | None = typer.Option(
        None, "--slo-p99-seconds", help="P99 SLO (default: 2x measured p99)."
    ),
    add: bool = typer.Option(
        False,
        "--add",
        help="Add this model to the values already at --output (a pool both use holds a "
        "replica of each: its pods' CPUs and memory add up).",
    ),
) -> None:
    """Write chart values from artifacts: URIs + sha256, pools, memory from measured peak RSS."""
    name = model or artifacts.resolve().name
    pools = _pools(artifacts, pool)
    if add and not output.is_file():
        raise InvalidValues(f"--add: {output} does not exist; write the first model without --add")
    values = chart_values(
        name,
        pools,
        uri_prefix=uri_prefix,
        headroom=headroom,
        variant=variant,
        slo_p99_seconds=slo,
    )
    if add:
        values = add_model(_read_values(output), values)
    origin = slo_origin(pools, slo)
    notes = [f"{name}: {origin}"]
    if add:  # keep what the models already there were given
        header = {line for line in HEADER.splitlines()}
        kept = [
            line[2:]
            for line in output.read_text().splitlines()
            if line.startswith("# ") and line not in header
        ]
        notes = kept + notes
    write_values(values, output, Helm.find(), note="\n# ".join(notes))
    typer.echo(origin)
    typer.echo(f"wrote {output} (validated by ServingConfig and helm template)")


class HelmTarget:
    """A step is `helm upgrade` and a wait for the RayService; rollback is `helm rollback`."""

    def __init__(
        self, helm: Helm, release: str, namespace: str, chart: Path, timeout_s: float
    ) -> None:
        from deploy.cluster import Cluster

        self._helm, self._release, self._namespace = helm, release, namespace
        self._chart, self._timeout_s = chart, timeout_s
        self._cluster = Cluster.from_kubeconfig()
        history = helm.history(release, namespace)  # ReleaseNotFound before anything changes
        self._revision = int(history[-1]["revision"])
        self._name = rayservice_name(release, helm.get_values(release, namespace))

    def _wait(self) -> None:
        self._cluster.wait_ready(self._namespace, self._name, self._timeout_s)

    def apply(self, values: dict[str, Any], step: int) -> None:
        path = write_temp_values(values)
        try:
            self._helm.upgrade(
                self._release,
                self._chart,
                [path],
                self._namespace,
                dry_run=False,
                timeout_s=self._timeout_s,
            )
        finally:
            path.unlink(missing_ok=True)
        self._name = rayservice_name(self._release, values)
        self._wait()

    def rollback(self) -> None:
        self._helm.rollback(self._release, self._revision, self._namespace, dry_run=False)
        self._wait()


@app.command("rollout")
def rollout_command(
    release: str = typer.Option(..., help="Helm release."),
    values: Path = typer.Option(..., "--values", "-f", help="Values holding baseline and canary."),
    model: str = typer.Option(..., help="Model whose variants are stepped."),
    canary: str = typer.Option(..., help="Variant rolled out."),
    baseline: str = typer.Option("stable", help="Variant it is compared with."),
    steps: str = typer.Option("10,50,100", help="Canary weights in percent, ending at 100."),
    window: int = typer.Option(300, "--window-seconds", help="Analysis window per step."),
    namespace: str = typer.Option("default", "--namespace", "-n"),
    chart: Path = typer.Option(DEFAULT_CHART, help="Chart directory."),
    prometheus: str = typer.Option("http://127.0.0.1:9090", help="Prometheus base URL."),
    timeout: float = typer.Option(
        900, "--timeout-seconds", help="Wait for Ready at most this long."
    ),
    max_p99_ratio: float = typer.Option(1.25, help="Canary P99 may be this times the baseline's."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the plan, render every step; change nothing."
    ),
) -> None:
    """Step a canary's weight with helm upgrade; promote or roll back on Prometheus' numbers."""
    try:
        step_list = tuple(int(s) for s in steps.split(","))
    except ValueError:
        raise InvalidValues(f"--steps {steps!r}: give integers, e.g. 10,50,100") from None
    plan = Plan(
        model=model,
        canary=canary,
        baseline=baseline,
        steps=step_list,
        window_seconds=window,
        policy=CanaryPolicy(max_p99_ratio=max_p99_ratio),
    )
    loaded = _read_values(values)
    helm = Helm.find()
    for line in plan_lines(plan, release, namespace):
        typer.echo(line)
    if dry_run:
        for step in plan.steps:
            path = write_temp_values(with_weights(loaded, plan, step))
            try:
                helm.template(release, chart, [path], namespace)
            finally:
                path.unlink(missing_ok=True)
            typer.echo(f"  step {step:>3}%: values render with helm template")
        typer.echo("dry run: nothing was changed")
        return
    target = HelmTarget(helm, release, namespace, chart, timeout)
    with PrometheusClient(prometheus) as client:
        outcome = run(plan, loaded, target, client, echo=typer.echo)
    if not outcome.promoted:
        raise typer.Exit(1)


@app.command("status")
def status_command(
    release: str = typer.Option(..., help="Helm release."),
    namespace: str = typer.Option("default", "--namespace", "-n"),
    prometheus: str | None = typer.Option(None, help="Prometheus base URL for P99 per variant."),
    model: list[str] = typer.Option(
        [], "--model", help="Models to show P99 for (default: all in the release)."
    ),
    window: int = typer.Option(300, "--window-seconds"),
) -> None:
    """RayService, application and deployment health, pods per pool, weights, P99."""
    from deploy.cluster import Cluster

    cluster = Cluster.from_kubeconfig()
    helm = Helm.find()
    release_values = helm.get_values(release, namespace)
    status = cluster.rayservice(namespace, rayservice_name(release, release_values))
    typer.echo(status.describe())
    if status.cluster_name:
        for group, count in sorted(cluster.pods_per_group(namespace, status.cluster_name).items()):
            typer.echo(f"  pods running in {group}: {count}")
    serving = release_values.get("serving", {})
    models = serving.get("models", {})
    for name, spec in sorted(models.items()):
        weights = ", ".join(
            f"{v}={d.get('weight', 100)}%" for v, d in spec.get("variants", {}).items()
        )
        typer.echo(f"  model {name}: {weights}")
    if prometheus is None:
        return
    with PrometheusClient(prometheus) as client:
        for name in model or sorted(models):
            try:
                p99 = client.pool_p99(name, window)
            except DeployError as exc:
                typer.echo(f"  model {name}: P99 unavailable: {exc}")
                continue
            for (variant, pool), seconds in sorted(p99.items()):
                typer.echo(f"  model {name}/{variant} on {pool}: P99 {seconds * 1000:.1f} ms")


def _read_values(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidValues(f"cannot read {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise InvalidValues(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise InvalidValues(f"{path} holds no values mapping; give a values file")
    return loaded


def _pairs(given: list[str], option: str, example: str) -> list[tuple[str, str]]:
    pairs = []
    for item in given:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise InvalidValues(f"{option} {item!r}: write {example}")
        pairs.append((key, value))
    return pairs


@app.command("boot")
def boot_command(
    values: list[Path] = typer.Option(
        ..., "--values", "-f", help="Values files, as for helm install (repeatable)."
    ),
    release: str = typer.Option("sluiceway", help="Release name the chart is rendered as."),
    namespace: str = typer.Option("default", "--namespace", "-n"),
    chart: Path = typer.Option(DEFAULT_CHART, help="Chart directory."),
    claim: list[str] = typer.Option(
        [], help="CLAIM=DIR: a host directory standing in for a PersistentVolumeClaim."
    ),
    secret: list[str] = typer.Option(
        [], help="NAME/KEY=VALUE: a key of a Secret the pods read (auth.existingSecret)."
    ),
    check: bool = typer.Option(
        False,
        "--check",
        help="Stop once every pod is ready and Serve runs (exit 0); "
        "without it, serve until Ctrl-C.",
    ),
    timeout: float = typer.Option(900.0, "--timeout-seconds", help="For pods and Serve to be up."),
) -> None:
    """Boot the chart's render on this machine as KubeRay would run it (needs root).

    Each pod a network namespace with its own IP, its volumes, its template's environment
    and KubeRay's `ray start` line, on the image's Python made by the Dockerfile's pip
    line; serveConfigV2 PUT to the Serve REST API; probes run as declared. Prints the
    serve Service's endpoints. What cannot run here (the API server, the autoscaler, GPUs)
    is checked statically and printed first.
    """
    import os
    import sys
    import tempfile
    import time

    from deploy.boot import Boot
    from deploy.image import build_image_python, read_dockerfile
    from deploy.kuberay import static_findings

    secrets: dict[str, dict[str, str]] = {}
    for key, value in _pairs(secret, "--secret", "NAME/KEY=VALUE"):
        name, _, field = key.partition("/")
        secrets.setdefault(name, {})[field] = value
    claims = {name: Path(path).resolve() for name, path in _pairs(claim, "--claim", "CLAIM=DIR")}
    if os.geteuid() != 0:
        raise DeployError("booting needs root (network namespaces and mounts): run it with sudo")
    for values_file in values:
        _read_values(values_file)  # a missing or broken file is named before helm runs
    rendered = Helm.find().template(release, chart, values, namespace)
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    for finding in static_findings(docs):
        typer.echo(f"warning: {finding}", err=True)
    started = time.monotonic()

    def say(event: str) -> None:
        typer.echo(f"[{time.monotonic() - started:6.1f} s] {event}", err=True)

    say("making the image's Python from the Dockerfile (pip, first time a few minutes)")
    image_bin = build_image_python()
    workdir = Path(tempfile.mkdtemp(prefix="sluiceway-boot-"))
    boot = Boot(
        docs,
        image_bin=image_bin,
        image_env=read_dockerfile().env,
        workdir=workdir,
        namespace=namespace,
        claims=claims,
        secrets=secrets,
    )
    with boot:
        boot.start(timeout_s=timeout, on_event=say)
        say("PUT serveConfigV2 to the Serve REST API")
        boot.apply_serve_config()
        boot.wait_running(timeout_s=timeout)
        say("every Serve application RUNNING")
        boot.wait_ready(timeout_s=timeout)
        say(f"every pod ready; pod logs under {workdir}")
        for url in boot.serve_endpoints():
            typer.echo(f"serve endpoint: {url}")
        typer.echo(f"dashboard: {boot.dashboard}")
        if check:
            return
        say("serving until Ctrl-C")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            typer.echo("stopping", err=True)
            sys.exit(0)


def register(root: typer.Typer) -> None:
    """Add `deploy` to the root app."""
    root.add_typer(app, name="deploy")
