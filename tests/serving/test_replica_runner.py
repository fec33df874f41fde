"""A replica's runner around a fake model (no Ray, no ONNX Runtime): what it batches, what
it refuses, what it drops, and how one model failure ends only its own call."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from serving.batch_queue import BatchQueue
from serving.calls import Job, Status, Tensors
from serving.replica import ReplicaRunner


class Model:
    """Doubles its input; blocks until released, so tests decide when a call ends."""

    def __init__(self) -> None:
        self.calls: list[int] = []  # rows per call
        self.release = threading.Event()

    def __call__(self, variant: str, inputs: Tensors) -> Tensors:
        self.release.wait(timeout=10)
        x = inputs["x"]
        if variant == "broken":
            raise RuntimeError("kernel exploded")
        self.calls.append(int(x.shape[0]))
        return {"y": x * 2}


def job(value: float, *, deadline: float = 1e12, variant: str = "v", rows: int = 1) -> Job:
    return Job(variant, {"x": np.full((rows, 3), value, dtype=np.float32)}, deadline)


DROPPED: list[tuple[str, int]] = []  # what the runners here reported dropping


def runner(model: Model, *, slots: int = 1, batch: int = 4, queue: int = 8) -> ReplicaRunner:
    DROPPED.clear()
    return ReplicaRunner(
        BatchQueue(slots=slots, max_batch=batch, queue_limit=queue),
        model,
        ThreadPoolExecutor(max_workers=slots),
        clock=lambda: 100.0,
        on_dropped=lambda reason, count: DROPPED.append((reason, count)),
    )


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_what_waits_for_a_busy_slot_runs_as_one_batch_and_each_gets_its_rows() -> None:
    async def scenario() -> None:
        model = Model()
        run = runner(model, batch=4)
        first = asyncio.create_task(run.submit(job(1)))
        await settle()
        waiting = [asyncio.create_task(run.submit(job(v))) for v in (2, 3, 4)]
        await settle()
        model.release.set()
        outcomes = [await first] + [await t for t in waiting]
        assert model.calls == [1, 3]  # alone (a free slot), then the three that waited
        for value, outcome in zip((1, 2, 3, 4), outcomes, strict=True):
            assert outcome.status is Status.OK and outcome.outputs is not None
            np.testing.assert_array_equal(outcome.outputs["y"], np.full((1, 3), 2 * value))
        assert outcomes[1].batch_rows == 3

    asyncio.run(scenario())


def test_a_full_replica_refuses_at_once_without_running_anything() -> None:
    async def scenario() -> None:
        model = Model()
        run = runner(model, batch=1, queue=1)
        held = [asyncio.create_task(run.submit(job(v))) for v in (1, 2)]
        await settle()
        refused = await run.submit(job(3))
        assert refused.status is Status.FULL
        model.release.set()
        assert [(await t).status for t in held] == [Status.OK, Status.OK]
        assert model.calls == [1, 1]

    asyncio.run(scenario())


def test_a_job_past_its_deadline_is_dropped_and_a_cancelled_one_never_runs() -> None:
    async def scenario() -> None:
        model = Model()
        run = runner(model, batch=1)
        busy = asyncio.create_task(run.submit(job(1)))
        await settle()
        late = asyncio.create_task(run.submit(job(2, deadline=50.0)))  # the clock says 100
        gone = asyncio.create_task(run.submit(job(3)))
        await settle()
        gone.cancel()
        await settle()
        model.release.set()
        assert (await busy).status is Status.OK
        assert (await late).status is Status.EXPIRED
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert model.calls == [1]
        assert sorted(DROPPED) == [("cancelled", 1), ("deadline", 1)]
        assert run.queue.held == 0

    asyncio.run(scenario())


def test_a_model_failure_fails_its_own_call_only() -> None:
    async def scenario() -> None:
        model = Model()
        model.release.set()
        run = runner(model, slots=2)
        broken, fine = await asyncio.gather(
            run.submit(job(1, variant="broken")), run.submit(job(2))
        )
        assert broken.status is Status.MODEL_ERROR
        assert "RuntimeError: kernel exploded" in broken.detail
        assert fine.status is Status.OK

    asyncio.run(scenario())


class Picky(Model):
    """Refuses a call holding a NaN, as ONNX Runtime refuses inputs its graph cannot take."""

    def __call__(self, variant: str, inputs: Tensors) -> Tensors:
        from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

        if np.isnan(inputs["x"]).any():
            self.release.wait(timeout=10)
            raise ort_errors.InvalidArgument("Invalid input shape: {1}")
        return super().__call__(variant, inputs)


def test_a_request_the_model_cannot_take_fails_alone_as_a_bad_request() -> None:
    """Batched with others, one request whose inputs the graph refuses fails only itself
    (the batch runs again job by job), with a 400's status naming why, not a 500."""

    async def scenario() -> None:
        model = Picky()
        run = runner(model, batch=4)
        first = asyncio.create_task(run.submit(job(1)))
        await settle()
        waiting = [asyncio.create_task(run.submit(job(v))) for v in (2, float("nan"), 4)]
        await settle()
        model.release.set()
        assert (await first).status is Status.OK
        fine, bad, other = [await t for t in waiting]
        assert bad.status is Status.BAD_REQUEST
        assert "the model cannot take these inputs: Invalid input shape" in bad.detail
        assert fine.status is Status.OK and other.status is Status.OK
        assert model.calls == [1, 1, 1]  # the batch of three failed; its good two ran alone

    asyncio.run(scenario())
