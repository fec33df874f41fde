"""What an ingress knows of a pool: replicas' own reports, its sends, staleness, stalls.

Driven by an injected clock (no Ray, no sleeps).
"""

from __future__ import annotations

import random

import pytest

from serving.routing.pool_stats import ANY_REPLICA, PoolStats, ReplicaState


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def pool(clock: FakeClock, *, capacity: int = 2, queue: int = 2, expected: int = 1) -> PoolStats:
    return PoolStats(
        "gpu",
        replica_capacity=capacity,
        replica_queue=queue,
        expected_replicas=expected,
        ttl_s=2.0,
        stall_s=1.0,
        window=8,
        clock=clock,
        rng=random.Random(0),
    )


def test_before_serve_names_any_replica_the_first_requests_go_to_serves_choice() -> None:
    clock = FakeClock()
    stats = pool(clock, expected=2)
    assert stats.healthy
    assert stats.pick() == ANY_REPLICA
    view = stats.view()
    assert (view.capacity, view.queue_limit) == (4, 4)
    for _ in range(8):
        stats.sent(ANY_REPLICA, 1)
    assert stats.pick() is None  # the expected replicas' room is used up
    stats.ended(ANY_REPLICA, 1)
    # the answer names the replica: from now on it is known
    stats.answered("r1", held=3)
    assert stats.pick() == "r1"


def test_load_is_the_replicas_own_report_plus_what_this_ingress_sent_since() -> None:
    clock = FakeClock()
    stats = pool(clock)
    stats.set_members(["r1", "r2"])
    # r1 says it holds 3 rows (other ingresses' work): r2, idle, is picked
    stats.answered("r1", held=3)
    assert stats.pick() == "r2"
    stats.sent("r2", 1)
    stats.sent("r2", 1)
    stats.sent("r2", 1)
    assert stats.view().held == 3 + 3
    # a full replica (capacity 2 + queue 2) is never picked; with both full, none is
    stats.sent("r2", 1)
    stats.answered("r1", held=4)
    assert stats.pick() is None
    assert stats.view().saturated


def test_a_stale_report_counts_only_what_this_ingress_has_outstanding() -> None:
    clock = FakeClock()
    stats = pool(clock)
    stats.set_members(["r1"])
    stats.answered("r1", held=4)
    assert stats.pick() is None
    clock.now += 2.5  # past the 2 s ttl: the report no longer counts
    assert stats.view().held == 0
    assert stats.pick() == "r1"


def test_a_replica_out_of_rotation_gets_no_work_and_the_pool_is_lost_without_any_up() -> None:
    clock = FakeClock()
    stats = pool(clock)
    stats.set_members(["r1", "r2", "r3"])
    stats.mark("r2", ReplicaState.LOST)
    picks = {stats.pick() for _ in range(50)}
    assert picks == {"r1", "r3"}
    assert stats.view().capacity == 4  # two replicas up
    stats.mark("r1", ReplicaState.STALLED)
    stats.mark("r3", ReplicaState.LOST)
    assert not stats.healthy and stats.pick() is None
    stats.recovered("r3")
    assert stats.healthy and stats.pick() == "r3"


def test_a_replica_holding_calls_with_no_answer_for_the_stall_bound_is_stalled() -> None:
    clock = FakeClock()
    stats = pool(clock)
    stats.set_members(["r1", "r2"])
    stats.sent("r1", 1)
    stats.sent("r2", 1)
    clock.now += 0.8
    stats.answered("r2", held=1)  # r2 makes progress, r1 does not
    stats.ended("r2", 1)
    assert stats.stalled_now() == []
    clock.now += 0.5
    assert stats.stalled_now() == ["r1"]
    # an idle replica never stalls, however long since it answered
    clock.now += 60
    stats.ended("r1", 1)
    assert stats.stalled_now() == []


def test_service_time_is_the_median_of_fresh_samples_and_ages_out() -> None:
    clock = FakeClock()
    stats = pool(clock)
    for seconds in (0.5, 0.5, 0.5):
        stats.record_service(seconds)
    assert stats.service_time_s() == 0.5
    clock.now += 1.5
    for seconds in (0.05, 0.05, 0.05, 0.05):
        stats.record_service(seconds)
    assert stats.service_time_s() == 0.05  # four of seven
    clock.now += 1.0  # the 0.5 s samples are older than the ttl now
    assert stats.service_time_s() == 0.05
    clock.now += 5.0  # nothing fresh at all: unknown, not slow; the last figure is kept
    assert stats.service_time_s() is None
    assert stats.view().last_service_time_s == 0.05


def test_expected_latency_counts_whole_rounds_of_calls_ahead() -> None:
    clock = FakeClock()
    stats = pool(clock, capacity=8, queue=8)  # a replica runs batches of 8
    stats.set_members(["r1"])
    stats.record_service(0.2)
    assert stats.view().expected_latency_s() == pytest.approx(0.2)  # idle: its own call
    stats.sent("r1", 7)
    assert stats.view().expected_latency_s() == pytest.approx(0.2)  # joins the running batch
    stats.sent("r1", 1)
    assert stats.view().expected_latency_s() == pytest.approx(0.4)  # waits for a whole one


def test_pick_leaves_out_replicas_that_cannot_serve_within_the_bound() -> None:
    clock = FakeClock()
    stats = pool(clock, capacity=1, queue=8)
    stats.set_members(["r1", "r2"])
    stats.record_service(0.2)
    stats.sent("r1", 2)  # a request sent there now would run after two calls: 0.6 s
    stats.sent("r2", 1)
    assert stats.pick(1, within_s=0.5) == "r2"  # 0.4 s there
    stats.sent("r2", 1)
    assert stats.pick(1, within_s=0.5) is None  # room in both queues, but not in time
    assert stats.pick(1) in {"r1", "r2"}  # no bound: the queue's own limit
    assert stats.pick(1, within_s=0.1) is None  # not even an idle call fits


def test_membership_follows_serve_and_lost_replicas_stay_out_until_they_answer() -> None:
    clock = FakeClock()
    stats = pool(clock)
    stats.set_members(["r1", "r2"])
    stats.mark("r1", ReplicaState.LOST)
    stats.set_members(["r1", "r2", "r3"])  # the controller still lists r1 (it lags)
    assert stats.replicas["r1"].state is ReplicaState.LOST
    assert stats.replicas["r3"].state is ReplicaState.UP
    stats.set_members(["r2", "r3"])
    assert set(stats.replicas) == {"r2", "r3"}


@pytest.mark.parametrize("rows", [1, 3])
def test_an_idle_replica_takes_a_request_larger_than_its_room(rows: int) -> None:
    stats = pool(FakeClock(), capacity=1, queue=0)
    stats.set_members(["r1"])
    assert stats.pick(rows) == "r1"


def test_among_many_replicas_a_free_slot_anywhere_is_found() -> None:
    clock = FakeClock()
    stats = pool(clock, capacity=1, queue=0)
    members = [f"r{i}" for i in range(50)]
    stats.set_members(members)
    for replica in members[:-1]:
        stats.sent(replica, 1)  # every replica but the last is busy
    assert stats.pick() == "r49"
    stats.sent("r49", 1)
    assert stats.pick() is None


def test_running_totals_match_a_recount_after_any_sequence_of_events() -> None:
    """The pool's load is kept as a running total; it must equal the sum over up replicas
    of each one's load, however events interleave (random, seeded)."""
    clock = FakeClock()
    stats = pool(clock, capacity=2, queue=3)
    rng = random.Random(5)
    names = [f"r{i}" for i in range(6)]
    stats.set_members(names[:4])
    for _ in range(3000):
        name = rng.choice(names)
        event = rng.random()
        if event < 0.3:
            stats.sent(name, rng.randint(1, 2))
        elif event < 0.55:
            stats.ended(name, rng.randint(1, 2))
        elif event < 0.75:
            stats.answered(name, held=rng.randint(0, 6))
        elif event < 0.82:
            stats.mark(name, rng.choice(list(ReplicaState)))
        elif event < 0.85:
            stats.set_members(rng.sample(names, rng.randint(1, 6)))
        else:
            clock.now += rng.choice([0.1, 0.5, 1.5, 3.0])
        expected = 0
        for replica in stats.replicas.values():
            if replica.state is not ReplicaState.UP:
                continue
            fresh = clock.now - replica.report_at <= stats.ttl_s
            own = replica.outstanding
            expected += max(own, replica.report_held + replica.sent_since_report) if fresh else own
        assert stats.view().held == expected


def test_calls_sent_before_the_replicas_were_known_leave_no_load_behind() -> None:
    clock = FakeClock()
    stats = pool(clock)
    for _ in range(3):
        stats.sent(ANY_REPLICA, 1)
    stats.set_members(["r1"])
    for _ in range(3):
        stats.ended(ANY_REPLICA, 1)
    assert stats.view().held == 0


def test_a_pool_that_starts_with_no_replica_is_down_until_serve_names_one() -> None:
    """replicas.min 0 (a GPU pool whose node may never come): nothing is sent there, the
    router fails over, until Serve's controller reports a running replica."""
    clock = FakeClock()
    stats = pool(clock, expected=0)
    assert not stats.healthy
    assert stats.pick() is None
    assert stats.view().capacity == 0
    stats.set_members(["r1"])
    assert stats.healthy and stats.pick() == "r1"
