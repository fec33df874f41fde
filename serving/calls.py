"""What an ingress sends a replica, and what comes back.

One call carries one or more jobs (requests); the reply carries one outcome per job and
the replica's own count of what it holds, which is how every ingress learns the load the
pool has from all of them (``serving.routing.pool_stats``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from numpy.typing import NDArray

Tensors = dict[str, NDArray[Any]]


class Status(StrEnum):
    """How one job ended in the replica (a closed set)."""

    OK = "ok"
    BAD_REQUEST = "bad_request"  # inputs do not fit the model: 400
    UNKNOWN_VARIANT = "unknown_variant"  # 404
    NOT_LOADED = "not_loaded"  # the variant's artifact failed to load on this pool: 503
    MODEL_ERROR = "model_error"  # the model raised: 500, never a failover
    EXPIRED = "expired"  # its deadline passed before it ran: dropped, never run
    FULL = "full"  # the replica held all it may: not run, try elsewhere


@dataclass(frozen=True)
class Job:
    """One request for a replica: inputs for a variant, and when it stops being worth running
    (``deadline``: Unix time, so that it means the same on every node)."""

    variant: str
    inputs: Tensors
    deadline: float

    @property
    def rows(self) -> int:
        """Batch rows the job adds (the first dimension of its first input)."""
        first = next(iter(self.inputs.values()), None)
        return int(first.shape[0]) if first is not None and first.ndim else 1


@dataclass(frozen=True)
class Outcome:
    """One job's result: outputs when ``status`` is OK, else a message."""

    status: Status
    outputs: Tensors | None = None
    detail: str = ""
    run_s: float = 0.0  # the model call it was part of (its whole batch), seconds
    batch_rows: int = 0  # rows in that model call


@dataclass(frozen=True)
class Reply:
    """A replica's answer to one call."""

    outcomes: list[Outcome]
    replica: str  # the replica that answered (Serve's replica id)
    held: int  # rows it held (running and waiting, from every caller) when it answered
    replica_s: float  # from the call's arrival to its answer, seconds
    # the artifact each variant of the call runs here (manifest variant: int8, student-int8)
    artifacts: dict[str, str] = field(default_factory=dict)
