from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from optimize.errors import GateSpecError
from optimize.evaluate import fidelity
from optimize.gates import GateThresholds, judge, parse_gate_overrides, thresholds_for
from optimize.manifest import Fidelity, Precision


def _fidelity(agreement: float, share: float = 0.5) -> Fidelity:
    return Fidelity(
        clips=100,
        top1_agreement=agreement,
        logit_cosine=0.999,
        max_abs_error=0.1,
        source_class_share={"a": share, "b": 1 - share},
    )


def test_int8_defaults_pass_a_faithful_variant_and_fail_a_wrong_one() -> None:
    thresholds = GateThresholds.for_precision(Precision.INT8)
    assert all(g.passed for g in judge(_fidelity(0.995), thresholds))
    failed = [g.name for g in judge(_fidelity(0.80), thresholds) if not g.passed]
    assert failed == ["min_top1_agreement"]


def test_a_near_constant_source_fails_the_balance_gate() -> None:
    results = judge(_fidelity(1.0, share=0.99), GateThresholds.for_precision(Precision.FP16))
    assert [g.name for g in results if not g.passed] == ["max_source_class_share"]


def test_overrides_apply_globally_then_per_precision() -> None:
    overrides = parse_gate_overrides(["min_top1_agreement=0.9", "int8.min_top1_agreement=0.95"])
    assert thresholds_for(Precision.FP16, overrides).min_top1_agreement == 0.9
    assert thresholds_for(Precision.INT8, overrides).min_top1_agreement == 0.95
    assert thresholds_for(Precision.INT8, overrides).max_abs_error == 1.5  # untouched default


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("min_top1_agreement", "expected NAME=VALUE"),
        ("speed=3", "unknown gate 'speed'"),
        ("int4.max_abs_error=1", "'int4' is not a precision"),
        ("max_abs_error=lots", "'lots' is not a number"),
    ],
)
def test_bad_gate_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(GateSpecError, match=message):
        parse_gate_overrides([spec])


def test_out_of_range_threshold_is_rejected_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="min_top1_agreement"):
        thresholds_for(Precision.INT8, parse_gate_overrides(["min_top1_agreement=1.5"]))


def test_nan_logits_fail_their_own_gate_and_the_manifest_still_reads(tmp_path: Path) -> None:
    """A candidate that answers NaN/inf is a failed gate the user can read, not a manifest
    that no longer parses ("rebuild the artifact")."""
    source = np.array([[2.0, -1.0], [0.5, 1.5], [1.0, 0.0]], np.float32)
    candidate = source.copy()
    candidate[1, 0] = np.nan
    candidate[2, 1] = np.inf
    measured = fidelity(source, candidate, ["a", "b"])
    assert measured.nonfinite_logits == 2
    results = judge(measured, GateThresholds.for_precision(Precision.FP16))
    assert "max_nonfinite_logits" in [g.name for g in results if not g.passed]
    (tmp_path / "fidelity.json").write_text(measured.model_dump_json())
    again = Fidelity.model_validate_json((tmp_path / "fidelity.json").read_text())
    assert again == measured  # every figure finite: JSON keeps it
