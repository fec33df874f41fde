"""The ingress's transport: attempts as calls to Serve deployment handles (over gRPC, see
``serving.app.direct``), Ray's errors told apart into what the router acts on."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from typing import Any

import grpc
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayError
from ray.serve.exceptions import (
    BackPressureError,
    DeploymentUnavailableError,
    ReplicaUnavailableError,
)
from ray.serve.handle import DeploymentHandle

from serving.calls import Job, Reply
from serving.errors import ModelError
from serving.routing.core import Attempt, PoolFull, ReplicaGone, ReplicaUnreachable
from serving.routing.pool_stats import ANY_REPLICA

# A replica that cannot be reached or died under a request. Handles call replicas over
# gRPC (see ``serving.app.direct``): Serve maps UNAVAILABLE to ActorUnavailableError.
REPLICA_LOST: tuple[type[BaseException], ...] = (
    ActorDiedError,
    ActorUnavailableError,
    RayActorError,
    ReplicaUnavailableError,
    DeploymentUnavailableError,
)
# gRPC codes that say the replica is unreachable; any other gRPC error fails the request.
UNREACHABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
PROBE_FAILED: tuple[type[BaseException], ...] = (
    TimeoutError,
    grpc.aio.AioRpcError,
    *REPLICA_LOST,
    RayError,
)


@dataclasses.dataclass(eq=False)
class _Call:
    """One request in flight to one replica."""

    waiter: asyncio.Future[Reply]
    task: asyncio.Future[Any]
    response: Any  # the DeploymentResponse

    def fail(self, why: str) -> None:
        if not self.waiter.done():
            self.waiter.set_exception(ReplicaGone(why))
        self.task.cancel()
        self.response.cancel()


def _settle(waiter: asyncio.Future[Reply], task: asyncio.Future[Any]) -> None:
    """Pass a finished call's result on (or read it, so nothing logs, when nobody waits)."""
    if task.cancelled():
        if not waiter.done():
            waiter.set_exception(ReplicaGone("the call was cancelled"))
        return
    error = task.exception()
    if waiter.done():
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(task.result())


def _unreachable(exc: BaseException) -> bool:
    """Whether a call's error means its replica cannot be reached (vs. a failed request)."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code() in UNREACHABLE
    return isinstance(exc, REPLICA_LOST)


class RayTransport:
    """One model's pools as Serve deployment handles."""

    def __init__(self, model: str, handles: Mapping[str, DeploymentHandle]) -> None:
        self.model = model
        self.handles = dict(handles)
        # A handle's method is a new handle per attribute read: made once per pool.
        self._infer = {pool: handle.infer for pool, handle in handles.items()}

    async def call(self, pool: str, replica: str, job: Job, attempt: Attempt) -> Reply:
        response = self._infer[pool].remote([job], replica=replica or None)
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(response)  # a DeploymentResponse is awaitable
        task.add_done_callback(lambda done: _settle(waiter, done))
        call = _Call(waiter, task, response)
        attempt.abort = call.fail
        try:
            return await waiter
        except asyncio.CancelledError:  # the deadline: the replica drops it if not started
            task.cancel()
            response.cancel()
            raise
        except BackPressureError as exc:  # Serve's own limit: the pool is full
            raise PoolFull(str(exc)) from exc
        except (grpc.aio.AioRpcError, *REPLICA_LOST) as exc:
            if not _unreachable(exc):
                raise ModelError(
                    f"model {self.model!r}: the call to pool {pool!r} failed: {exc}"
                ) from exc
            raise ReplicaUnreachable(f"{type(exc).__name__} while serving") from exc

    async def health(self, pool: str, replica: str | None, timeout_s: float) -> str | None:
        response = self.handles[pool].health.remote(replica=replica)
        try:
            answer = await asyncio.wait_for(response, timeout=timeout_s)
        except BackPressureError:
            return replica or ANY_REPLICA  # alive, only full
        except PROBE_FAILED:
            response.cancel()
            return None
        return str(answer)
