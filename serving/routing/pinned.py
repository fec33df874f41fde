"""Serve's replica choice, made by the ingress: every pool deployment routes with this.

The ingress picks the replica itself (``serving.routing.pool_stats``: pool-wide load from
the replicas' own reports, stalled and lost replicas left out) and names it in the call's
``replica`` keyword; this router sends the call there. A call that names no replica, or
one Serve no longer has (it died, or is being replaced), goes to whichever replica Serve's
cached queue lengths say is least busy. The answer says which replica served it.

This class runs inside each ingress process, built by Serve from the deployment's
``request_router_config``.
"""

from __future__ import annotations

from typing import Any

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

PIN_KEYWORD = "replica"


class PinnedReplicaRouter(RequestRouter):  # type: ignore[misc]  # Ray is untyped here
    """The replica named by the call, else any."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._by_id: dict[str, RunningReplica] = {}
        super().__init__(*args, **kwargs)

    def update_replicas(self, replicas: list[RunningReplica]) -> None:
        self._by_id = {r.replica_id.unique_id: r for r in replicas}
        super().update_replicas(replicas)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        self._by_id.pop(replica_id.unique_id, None)
        super().on_replica_actor_died(replica_id)

    async def choose_replicas(
        self,
        candidate_replicas: list[RunningReplica],
        pending_request: PendingRequest | None = None,
    ) -> list[list[RunningReplica]]:
        pin = pending_request.kwargs.get(PIN_KEYWORD) if pending_request is not None else None
        if pin:
            replica = self._by_id.get(pin)
            if replica is not None:
                return [[replica]]
        return [candidate_replicas]
