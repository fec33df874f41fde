"""Quality gates: thresholds per precision, and the pure function that judges a variant.

Thresholds are data: one base plus a table of per-precision overrides; users tighten or
relax them with ``--gate NAME=VALUE`` (every variant) or ``--gate int8.NAME=VALUE`` (one).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from optimize.errors import GateSpecError
from optimize.manifest import Fidelity, GateResult, Precision


class GateThresholds(BaseModel):
    """Limits a variant must meet against its source model on the eval set."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_top1_agreement: float = Field(
        0.99, ge=0, le=1, description="share of eval clips whose top-1 label matches the source"
    )
    min_logit_cosine: float = Field(
        0.99, ge=-1, le=1, description="mean cosine similarity of logits, source vs artifact"
    )
    max_abs_error: float = Field(
        1.0, ge=0, description="largest |logit difference| over the eval set"
    )
    max_nonfinite_logits: float = Field(
        0, ge=0, description="NaN or infinite logits the artifact may produce on the eval set"
    )
    max_source_class_share: float = Field(
        0.95,
        gt=0,
        le=1,
        description=(
            "largest share of eval clips the source gives one label: above it the source is "
            "near-constant and agreement proves nothing"
        ),
    )

    @classmethod
    def for_precision(cls, precision: Precision, **overrides: float) -> GateThresholds:
        """The default thresholds of ``precision`` with ``overrides`` applied."""
        return cls(**{**_PRECISION_OVERRIDES[precision], **overrides})


_PRECISION_OVERRIDES: dict[Precision, dict[str, float]] = {
    # fp32 must reproduce PyTorch up to float rounding.
    Precision.FP32: {
        "min_top1_agreement": 0.999,
        "min_logit_cosine": 0.9999,
        "max_abs_error": 1e-2,
    },
    Precision.FP16: {"min_top1_agreement": 0.99, "min_logit_cosine": 0.999, "max_abs_error": 0.25},
    # int8 moves wav2vec2-base logits (magnitude ~5) by up to ~1.1 without changing
    # decisions; with 2 labels cosine barely sees a scale error, so max_abs_error backs it.
    Precision.INT8: {"min_top1_agreement": 0.99, "min_logit_cosine": 0.99, "max_abs_error": 1.5},
}

GATE_NAMES: tuple[str, ...] = tuple(GateThresholds.model_fields)


def _gate(name: str, comparison: Literal[">=", "<="], threshold: float, value: float) -> GateResult:
    passed = value >= threshold if comparison == ">=" else value <= threshold
    return GateResult(
        name=name, comparison=comparison, threshold=threshold, value=value, passed=passed
    )


def judge_table(thresholds: Mapping[str, float], values: Mapping[str, float]) -> list[GateResult]:
    """One gate per ``thresholds`` entry, judged on ``values`` of the same name: ``min_*``
    gates need at least their threshold, the others at most."""
    return [
        _gate(name, ">=" if name.startswith("min_") else "<=", threshold, values[name])
        for name, threshold in thresholds.items()
    ]


def judge(fidelity: Fidelity, thresholds: GateThresholds) -> list[GateResult]:
    """Every gate of ``thresholds`` evaluated on ``fidelity``."""
    share = max(fidelity.source_class_share.values(), default=1.0)
    return [
        _gate("min_top1_agreement", ">=", thresholds.min_top1_agreement, fidelity.top1_agreement),
        _gate("min_logit_cosine", ">=", thresholds.min_logit_cosine, fidelity.logit_cosine),
        _gate("max_abs_error", "<=", thresholds.max_abs_error, fidelity.max_abs_error),
        _gate(
            "max_nonfinite_logits",
            "<=",
            thresholds.max_nonfinite_logits,
            float(fidelity.nonfinite_logits),
        ),
        _gate("max_source_class_share", "<=", thresholds.max_source_class_share, share),
    ]


def parse_gate_overrides(
    specs: Iterable[str], known: Sequence[str] | None = None
) -> dict[Precision | None, dict[str, float]]:
    """Parse ``NAME=VALUE`` / ``PRECISION.NAME=VALUE`` into overrides keyed by precision.

    The ``None`` key holds overrides for every precision. ``known``: the gate names allowed
    (default: a classifier's).
    """
    known = GATE_NAMES if known is None else known
    parsed: dict[Precision | None, dict[str, float]] = {}
    for spec in specs:
        key, sep, raw = spec.partition("=")
        if not sep:
            raise GateSpecError(
                f"--gate {spec!r}: expected NAME=VALUE, e.g. min_top1_agreement=0.995"
            )
        scope, dot, name = key.strip().rpartition(".")
        precision: Precision | None = None
        if dot:
            try:
                precision = Precision(scope)
            except ValueError:
                raise GateSpecError(
                    f"--gate {spec!r}: {scope!r} is not a precision; use one of "
                    f"{', '.join(p.value for p in Precision)}"
                ) from None
        if name not in known:
            raise GateSpecError(
                f"--gate {spec!r}: unknown gate {name!r}; known gates: {', '.join(known)}"
            )
        try:
            value = float(raw)
        except ValueError:
            raise GateSpecError(f"--gate {spec!r}: {raw!r} is not a number") from None
        parsed.setdefault(precision, {})[name] = value
    return parsed


def thresholds_for(
    precision: Precision, overrides: dict[Precision | None, dict[str, float]]
) -> GateThresholds:
    """Defaults for ``precision``, then global overrides, then the precision's own."""
    merged = {**overrides.get(None, {}), **overrides.get(precision, {})}
    return GateThresholds.for_precision(precision, **merged)
