"""Rollout sequencing without a cluster: step weights, refused plans, and what happens when
Prometheus cannot vouch for the canary (a recording `Target` stands in for helm + KubeRay)."""

from __future__ import annotations

from typing import Any

import pytest

from deploy.canary import PrometheusClient, VariantHealth
from deploy.errors import DeployError, InvalidValues
from deploy.rollout import Plan, plan_lines, run, with_weights
from tests.conftest import free_port

VALUES = {
    "serving": {
        "models": {
            "w2v": {
                "variants": {
                    "stable": {"weight": 100, "artifacts": {}},
                    "v2": {"weight": 0, "artifacts": {}},
                    "old": {"weight": 0, "artifacts": {}},
                }
            }
        }
    }
}


class Recording:
    def __init__(self, fail_at: int | None = None) -> None:
        self.weights: list[dict[str, int]] = []
        self.rolled_back = False
        self.fail_at = fail_at

    def apply(self, values: dict[str, Any], step: int) -> None:
        variants = values["serving"]["models"]["w2v"]["variants"]
        self.weights.append({n: v["weight"] for n, v in variants.items()})
        if step == self.fail_at:
            raise DeployError("RayService sw-sluiceway not Ready within 900 s")

    def rollback(self) -> None:
        self.rolled_back = True


def test_each_step_gives_the_canary_its_weight_and_the_baseline_the_rest() -> None:
    plan = Plan(model="w2v", canary="v2", baseline="stable", steps=(10, 50, 100))
    weights = [
        {
            n: v["weight"]
            for n, v in with_weights(VALUES, plan, s)["serving"]["models"]["w2v"][
                "variants"
            ].items()
        }
        for s in plan.steps
    ]
    assert weights == [
        {"stable": 90, "v2": 10, "old": 0},
        {"stable": 50, "v2": 50, "old": 0},
        {"stable": 0, "v2": 100, "old": 0},
    ]
    assert VALUES["serving"]["models"]["w2v"]["variants"]["v2"]["weight"] == 0  # not mutated
    assert "step  10%: helm upgrade sw with v2=10 stable=90" in "\n".join(
        plan_lines(plan, "sw", "ml")
    )


@pytest.mark.parametrize(
    ("steps", "message"),
    [((50, 20, 100), "increasing"), ((10, 50), "end at 100"), ((100,), "add a step below 100")],
)
def test_plans_that_cannot_work_are_refused(steps: tuple[int, ...], message: str) -> None:
    with pytest.raises(InvalidValues, match=message):
        Plan(model="w2v", canary="v2", baseline="stable", steps=steps)


def test_a_variant_missing_from_the_values_is_named() -> None:
    plan = Plan(model="w2v", canary="v3", baseline="stable", steps=(50, 100))
    with pytest.raises(InvalidValues, match="no 'v3'"):
        with_weights(VALUES, plan, 50)


def test_prometheus_unreachable_means_no_promotion_and_a_rollback() -> None:
    target = Recording()
    printed: list[str] = []
    plan = Plan(model="w2v", canary="v2", baseline="stable", steps=(50, 100), window_seconds=1)
    dead = PrometheusClient(f"http://127.0.0.1:{free_port()}", timeout_seconds=2)
    outcome = run(plan, VALUES, target, dead, echo=printed.append, sleep=lambda s: None)
    assert not outcome.promoted and target.rolled_back
    assert target.weights == [{"stable": 50, "v2": 50, "old": 0}]
    assert any("no verdict" in line and "127.0.0.1" in line for line in printed), printed


class Healthy:
    """Prometheus as a stand-in: both variants fast and error-free."""

    def variant_health(self, model: str, variant: str, window_seconds: int) -> VariantHealth:
        return VariantHealth(variant=variant, requests=1000, p99_seconds=0.1, error_ratio=0.0)


def test_a_step_that_fails_to_apply_rolls_back_itself_and_says_so() -> None:
    target = Recording(fail_at=50)
    printed: list[str] = []
    plan = Plan(model="w2v", canary="v2", baseline="stable", steps=(10, 50, 100))
    healthy: Any = Healthy()
    with pytest.raises(DeployError, match="not Ready"):
        run(plan, VALUES, target, healthy, echo=printed.append, sleep=lambda s: None)
    assert target.rolled_back
    assert [w["v2"] for w in target.weights] == [10, 50]  # never went on to 100
    assert any("step 50%: failed: RayService" in line for line in printed), printed
    assert "rolled back" in printed


def test_ctrl_c_during_the_hold_rolls_back_before_it_stops() -> None:
    target = Recording()
    printed: list[str] = []
    plan = Plan(model="w2v", canary="v2", baseline="stable", steps=(10, 50, 100))

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    healthy: Any = Healthy()
    with pytest.raises(KeyboardInterrupt):
        run(plan, VALUES, target, healthy, echo=printed.append, sleep=interrupted)
    assert target.rolled_back
    assert any("step 10%: interrupted" in line for line in printed), printed
