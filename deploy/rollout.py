"""Latency-gated rollouts: step a canary variant's weight up, let Prometheus vouch for it.

For each step: apply the values with the canary at that weight (``helm upgrade``, then wait
for the RayService to be ready), hold for the analysis window, compare the canary's P99 and
error ratio with the baseline's (`deploy.canary.judge`), then go on or roll back. Only
``serving.models.<model>.variants.*.weight`` changes between steps, so KubeRay updates Serve
in place. The decision is `judge`'s; this module only sequences it around a `Target`.
"""

from __future__ import annotations

import copy
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import yaml

from deploy.canary import (
    DEFAULT_POLICY,
    CanaryPolicy,
    Decision,
    PrometheusClient,
    VariantHealth,
    Verdict,
    judge,
)
from deploy.errors import DeployError, InvalidValues


class Target(Protocol):
    """Where a step's values go: a Helm release (production) or a local Serve app (tests)."""

    def apply(self, values: dict[str, Any], step: int) -> None:
        """Apply ``values`` and return once the new weights serve."""

    def rollback(self) -> None:
        """Return to what served before the rollout began."""


@dataclass(frozen=True)
class Plan:
    """What to roll out and how carefully."""

    model: str
    canary: str
    baseline: str
    steps: tuple[int, ...] = (10, 50, 100)
    window_seconds: int = 300
    policy: CanaryPolicy = DEFAULT_POLICY

    def __post_init__(self) -> None:
        steps = list(self.steps)
        if not steps or steps != sorted(set(steps)) or steps[0] < 1 or steps[-1] != 100:
            raise InvalidValues(
                f"--steps {','.join(map(str, steps))}: give increasing canary weights in "
                "percent that end at 100, e.g. 10,50,100"
            )
        if steps[0] == 100:
            raise InvalidValues(
                "--steps 100 alone leaves no step where canary and baseline share traffic to "
                "compare: add a step below 100, e.g. 10,100"
            )


@dataclass
class StepResult:
    step: int
    verdict: Verdict


@dataclass
class Outcome:
    """What happened: every step's verdict, and whether the canary was promoted."""

    promoted: bool
    steps: list[StepResult] = field(default_factory=list)
    rolled_back: bool = False
    current_step: int | None = None  # the step being applied or held


def with_weights(values: dict[str, Any], plan: Plan, step: int) -> dict[str, Any]:
    """``values`` with the canary at ``step`` percent, the baseline at the rest, others 0."""
    result = copy.deepcopy(values)
    models = result.get("serving", {}).get("models", {})
    if plan.model not in models:
        raise InvalidValues(
            f"serving.models has no model {plan.model!r} (models: {sorted(models)}); "
            "pass --model with one of them"
        )
    variants = models[plan.model].get("variants", {})
    for name in (plan.canary, plan.baseline):
        if name not in variants:
            raise InvalidValues(
                f"serving.models.{plan.model}.variants has no {name!r} "
                f"(variants: {sorted(variants)}); the values must hold both the baseline "
                "and the canary"
            )
    for name, variant in variants.items():
        variant["weight"] = {plan.canary: step, plan.baseline: 100 - step}.get(name, 0)
    return result


def plan_lines(plan: Plan, release: str, namespace: str) -> list[str]:
    """The plan in words, for --dry-run and before a real rollout."""
    lines = [
        f"rollout of {plan.model}/{plan.canary} against {plan.baseline} "
        f"(release {release}, namespace {namespace})"
    ]
    for step in plan.steps:
        lines.append(
            f"  step {step:>3}%: helm upgrade {release} with {plan.canary}={step} "
            f"{plan.baseline}={100 - step}; wait for the RayService to be Ready; hold "
            f"{plan.window_seconds}s; compare P99 and error ratio"
        )
    p = plan.policy
    lines.append(
        f"  promote while canary P99 <= {p.max_p99_ratio:g}x baseline (or within "
        f"+{p.p99_tolerance_seconds * 1000:g} ms), error ratio <= baseline "
        f"+{p.max_error_ratio_increase:g}, >= {p.min_requests} requests per side; "
        "otherwise helm rollback"
    )
    return lines


def run(
    plan: Plan,
    values: dict[str, Any],
    target: Target,
    prometheus: PrometheusClient,
    *,
    echo: Callable[[str], None] = print,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    """Step the canary up; roll back at the first verdict that is not PROMOTE.

    A step that fails to apply (helm error, not Ready in time) or is interrupted (Ctrl-C)
    rolls back too, to the revision before the rollout, and the error then goes on up: a
    release must never be left at a canary's weight that nobody vouched for.
    """
    outcome = Outcome(promoted=False)
    for step in plan.steps:
        with_weights(values, plan, step)  # values that cannot work fail before any change
    step = plan.steps[0]
    try:
        _steps(plan, values, target, prometheus, outcome, echo=echo, sleep=sleep)
    except (DeployError, KeyboardInterrupt) as exc:
        step = outcome.current_step or step
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {exc}"
        echo(f"step {step}%: {what}")
        echo(f"rolling back to the revision before the rollout: {plan.canary} is not promoted")
        target.rollback()
        outcome.rolled_back = True
        echo("rolled back")
        raise
    return outcome


def _steps(
    plan: Plan,
    values: dict[str, Any],
    target: Target,
    prometheus: PrometheusClient,
    outcome: Outcome,
    *,
    echo: Callable[[str], None],
    sleep: Callable[[float], None],
) -> None:
    last_baseline: VariantHealth | None = None
    for step in plan.steps:
        outcome.current_step = step
        echo(f"step {step}%: applying {plan.canary}={step} {plan.baseline}={100 - step}")
        target.apply(with_weights(values, plan, step), step)
        echo(f"step {step}%: holding {plan.window_seconds}s for the analysis window")
        sleep(plan.window_seconds)
        try:
            canary = prometheus.variant_health(plan.model, plan.canary, plan.window_seconds)
            baseline = prometheus.variant_health(plan.model, plan.baseline, plan.window_seconds)
        except DeployError as exc:  # no numbers, no promotion: back to what served before
            echo(f"step {step}%: no verdict: {exc}")
            echo(f"rolling back: {plan.canary} is not promoted")
            target.rollback()
            outcome.rolled_back = True
            return
        if step == 100 and last_baseline is not None:
            baseline = last_baseline  # no baseline traffic left: compare with the last seen
        verdict = judge(baseline, canary, plan.policy)
        outcome.steps.append(StepResult(step, verdict))
        echo(f"step {step}%: {verdict.summary()}")
        for reason in verdict.reasons:
            echo(f"    {reason}")
        if verdict.decision is not Decision.PROMOTE:
            echo(f"rolling back: {plan.canary} is not promoted")
            target.rollback()
            outcome.rolled_back = True
            return
        last_baseline = baseline
    outcome.promoted = True
    echo(f"promoted: {plan.model}/{plan.canary} serves 100%")


def write_temp_values(values: dict[str, Any], directory: Path | None = None) -> Path:
    """A values file for one helm call."""
    with tempfile.NamedTemporaryFile(
        "w", suffix=".yaml", prefix="sluiceway-step-", dir=directory, delete=False
    ) as handle:
        yaml.safe_dump(values, handle, sort_keys=False)
    return Path(handle.name)
