"""A replica's own queue: what it admits, what it batches, what it drops (pure, no clock)."""

from __future__ import annotations

import pytest

from serving.batch_queue import BatchQueue, Entry


def entry(name: str, *, key: str = "a", rows: int = 1, deadline: float = 100.0) -> Entry[str]:
    return Entry(key=key, rows=rows, deadline=deadline, token=name)


def names(entries: list[Entry[str]]) -> list[str]:
    return [e.token for e in entries]


def test_refuses_what_it_cannot_hold_so_a_pool_never_holds_more_than_its_replicas_can() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=1, max_batch=2, queue_limit=3)
    assert [queue.admit(entry(str(i))) for i in range(6)] == [True] * 5 + [False]
    assert queue.held == 5 == queue.capacity + queue.queue_limit


def test_waiting_jobs_with_the_same_key_share_a_call_up_to_max_batch_rows() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=1, max_batch=3, queue_limit=10)
    for job in (entry("a1"), entry("b1", key="b"), entry("a2", rows=2), entry("a3")):
        queue.admit(job)
    batch, expired = queue.take(now=0.0)
    assert names(batch) == ["a1", "a2"] and expired == []  # a3 would exceed 3 rows
    assert queue.take(now=0.0) == ([], [])  # the only slot is busy
    assert (queue.running_rows, queue.waiting_rows) == (3, 2)
    queue.done(batch)
    batch, _ = queue.take(now=0.0)
    assert names(batch) == ["b1"]  # the oldest waiting job leads the next call


def test_a_job_whose_deadline_passed_is_dropped_never_run() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=1, max_batch=4, queue_limit=10)
    queue.admit(entry("late", deadline=5.0))
    queue.admit(entry("fine", deadline=50.0))
    batch, expired = queue.take(now=10.0)
    assert names(batch) == ["fine"] and names(expired) == ["late"]
    assert queue.held == 1


def test_a_cancelled_job_is_not_run_and_frees_its_room() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=1, max_batch=1, queue_limit=1)
    first, second = entry("first"), entry("second")
    assert queue.admit(first) and queue.admit(second)
    queue.cancel(first)
    assert queue.held == 1
    batch, _ = queue.take(now=0.0)
    assert names(batch) == ["second"]


def test_an_idle_replica_takes_a_job_larger_than_a_batch() -> None:
    queue: BatchQueue[str] = BatchQueue(slots=1, max_batch=2, queue_limit=0)
    assert queue.admit(entry("big", rows=5))
    batch, _ = queue.take(now=0.0)
    assert names(batch) == ["big"]
    assert not queue.admit(entry("next"))


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="slots"):
        BatchQueue(slots=0, max_batch=1, queue_limit=0)
