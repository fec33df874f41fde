"""What an ingress knows about each pool and each of its replicas.

Pure state over an injected clock: the ingress and the simulator drive the same code.

Pool-wide truth comes from the replicas. Every reply carries the replica's own count of the
rows it holds, from every ingress (``serving.calls.Reply.held``); an ingress stamps it when
it arrives and adds the rows it sent there since. A report older than ``ttl_s`` is stale:
the replica's load is then only what this ingress has outstanding there. Service times are
timestamped too and age out after ``ttl_s``, so a pool that got no traffic for a while
reads as unknown (worth trying), never as slow forever.

A replica is up, stalled (calls outstanding and no answer for ``stall_s``) or lost (it
could not be reached); only up replicas get new work. A pool is healthy while any replica
is up, or while its replicas are not known yet (the first requests go to Serve's choice).

The pool's load (the sum over up replicas) and its up count are kept as running totals, so
that a decision costs the same with 3 replicas or 300 (the simulator routes thousands of
requests a second through this code).
"""

from __future__ import annotations

import bisect
import math
import random
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum

Clock = Callable[[], float]
ANY_REPLICA = ""  # no replica known yet: let Serve pick one
SAMPLED_PICK = 8  # above this many replicas, pick the better of two at random first
# Of recent model-call times, for the SLO decisions: the median (the p90 made the ingress
# refuse closed-loop clients that the pool served within the SLO; see the commit)
QUANTILE = 0.5


class ReplicaState(StrEnum):
    UP = "up"
    STALLED = "stalled"  # requests outstanding and no answer for stall_s
    LOST = "lost"  # unreachable (dead, or its node is gone)


@dataclass(frozen=True)
class PoolView:
    """A snapshot of one pool, the input of a routing decision."""

    name: str
    healthy: bool
    held: int  # rows the pool holds (running and waiting), from every ingress, as known
    capacity: int  # rows its up replicas run at once
    queue_limit: int  # rows they may hold waiting beyond that
    service_time_s: float | None  # recent model-call time (median); None when nothing fresh
    last_service_time_s: float | None = None  # the last one known, however old

    @property
    def saturated(self) -> bool:
        return self.held >= self.capacity + self.queue_limit

    @property
    def idle_slot(self) -> bool:
        """A new request would start at once."""
        return self.held < self.capacity

    def expected_latency_s(self) -> float | None:
        """Latency a new request would see: its own model call, after every round of calls
        the pool must run before it starts (a round serves ``capacity`` rows). Whole rounds,
        not fractions: a request that just missed a batch waits for all of it."""
        if self.service_time_s is None:
            return None
        rounds_ahead = max(0, math.ceil((self.held + 1) / max(1, self.capacity)) - 1)
        return self.service_time_s * (1 + rounds_ahead)


class ReplicaStats:
    """One replica as this ingress sees it."""

    __slots__ = (
        "busy_since",
        "calls",
        "contribution",
        "fresh",
        "id",
        "last_answer",
        "outstanding",
        "report_at",
        "report_held",
        "sent_since_report",
        "state",
    )

    def __init__(self, replica_id: str, now: float) -> None:
        self.id = replica_id
        self.state = ReplicaState.UP
        self.report_held = 0
        self.report_at = -float("inf")
        self.fresh = False  # its report is younger than the ttl
        self.sent_since_report = 0  # rows this ingress sent after the report arrived
        self.outstanding = 0  # rows this ingress has in flight there
        self.calls = 0  # calls this ingress has in flight there
        self.busy_since = now  # when ``calls`` last went from 0 to 1
        self.last_answer = now
        self.contribution = 0  # its load, as last added to the pool's total

    def load(self) -> int:
        """Rows the replica holds as best known: its fresh report plus what was sent since,
        else only what this ingress has outstanding there."""
        if self.fresh:
            return max(self.outstanding, self.report_held + self.sent_since_report)
        return self.outstanding

    def stalled(self, now: float, stall_s: float) -> bool:
        """Calls outstanding and no answer for ``stall_s``."""
        return self.calls > 0 and now - max(self.busy_since, self.last_answer) > stall_s


class PoolStats:
    """Live state of one pool's replicas, kept by one ingress."""

    def __init__(
        self,
        name: str,
        *,
        replica_capacity: int,
        replica_queue: int,
        expected_replicas: int,
        ttl_s: float,
        stall_s: float,
        window: int,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self.replica_capacity = replica_capacity
        self.replica_queue = replica_queue
        self.ttl_s = ttl_s
        self.stall_s = stall_s
        self._clock = clock
        self._rng = rng or random.Random()
        self.replicas: dict[str, ReplicaStats] = {}
        self._up: list[ReplicaStats] = []  # the up replicas, for sampling
        self._held = 0  # the sum of the up replicas' loads
        # Until Serve's controller names the replicas, the pool counts as this many.
        self._expected = expected_replicas
        self._any = ReplicaStats(ANY_REPLICA, clock())
        self._reports: deque[tuple[float, ReplicaStats]] = deque()  # (stale at, replica)
        self._window = window
        self._samples: deque[tuple[float, float]] = deque()  # (when, seconds), oldest first
        self._sorted: list[float] = []  # the same seconds, in order (for the quantile)
        self._last_known: float | None = None  # the last estimate, kept when samples age out
        self.lost = False  # the whole pool: no replica running (Serve says so)

    # -- running totals --------------------------------------------------------------

    def _recount(self, replica: ReplicaStats) -> None:
        """Bring the pool's total in line with ``replica``'s load now."""
        load = replica.load() if replica.state is ReplicaState.UP else 0
        self._held += load - replica.contribution
        replica.contribution = load

    def _set_state(self, replica: ReplicaStats, state: ReplicaState) -> None:
        if replica.state is state:
            return
        if replica.state is ReplicaState.UP:
            self._up.remove(replica)
        replica.state = state
        if state is ReplicaState.UP:
            self._up.append(replica)
        self._recount(replica)

    def _age_reports(self, now: float) -> None:
        """Reports that went stale stop counting (oldest first; a newer one replaced some)."""
        reports = self._reports
        while reports and reports[0][0] < now:
            stale_at, replica = reports.popleft()
            if replica.fresh and replica.report_at + self.ttl_s <= stale_at:
                replica.fresh = False
                self._recount(replica)

    # -- membership ------------------------------------------------------------------

    def set_members(self, running: Iterable[str]) -> None:
        """The replicas Serve's controller reports running. New ones start up; gone ones
        are forgotten; a lost or stalled one stays out until it answers."""
        now = self._clock()
        current = set(running)
        for gone in set(self.replicas) - current:
            replica = self.replicas.pop(gone)
            self._set_state(replica, ReplicaState.LOST)
            replica.fresh = False
        for replica_id in current:
            if replica_id not in self.replicas:
                self._add(replica_id, now)
        if current:
            self.lost = False

    def _add(self, replica_id: str, now: float) -> ReplicaStats:
        replica = self.replicas[replica_id] = ReplicaStats(replica_id, now)
        self._up.append(replica)
        return replica

    def _member(self, replica_id: str) -> ReplicaStats:
        if replica_id == ANY_REPLICA:
            return self._any
        replica = self.replicas.get(replica_id)
        if replica is None:  # an answer from a replica the controller has not named yet
            replica = self._add(replica_id, self._clock())
        return replica

    def up(self) -> list[ReplicaStats]:
        return list(self._up)

    @property
    def healthy(self) -> bool:
        if self.lost:
            return False
        if not self.replicas:
            return self._expected > 0
        return bool(self._up)

    # -- choosing a replica ----------------------------------------------------------

    def pick(self, rows: int = 1, within_s: float | None = None) -> str | None:
        """The up replica with the least load that has room for ``rows`` and, given what it
        holds, is expected to serve them within ``within_s`` (whole rounds of calls before
        theirs, at the pool's recent call time); None when no replica can.
        ``ANY_REPLICA`` while no replica is known yet.

        Among many replicas, the better of two taken at random (Serve's and most balancers'
        power of two choices) when one of them qualifies; else every replica is looked at,
        so that a free slot anywhere is found before a request waits or spills.
        """
        self._age_reports(self._clock())
        if not self.replicas:
            limit = self._expected * (self.replica_capacity + self.replica_queue)
            if self.lost or self._any.outstanding + rows > limit:
                return None
            return ANY_REPLICA
        limit = self.replica_capacity + self.replica_queue
        service = self.service_time_s()
        if within_s is not None and service is not None and service > 0:
            rounds = math.floor(within_s / service)  # calls that fit: its own and those ahead
            if rounds < 1:
                return None  # even an idle replica would take longer
            limit = min(limit, rounds * self.replica_capacity)
        up = self._up
        if len(up) > SAMPLED_PICK:
            first, second = self._rng.sample(up, 2)
            best = first if first.contribution <= second.contribution else second
            if best.contribution + rows <= limit or best.contribution == 0:
                return best.id
        chosen: ReplicaStats | None = None
        lowest = limit
        ties = 0
        for replica in up:
            load = replica.contribution
            if load + rows > limit and load > 0:
                continue
            if chosen is None or load < lowest:
                chosen, lowest, ties = replica, load, 1
            elif load == lowest:
                ties += 1  # reservoir sampling: each tie equally likely
                if self._rng.random() * ties < 1:
                    chosen = replica
        return None if chosen is None else chosen.id

    # -- what happens to calls -------------------------------------------------------

    def sent(self, replica_id: str, rows: int) -> None:
        replica = self._member(replica_id)
        if replica.calls == 0:
            replica.busy_since = self._clock()
        replica.calls += 1
        replica.outstanding += rows
        replica.sent_since_report += rows
        if replica is not self._any:  # calls to no replica in particular are no one's load
            self._recount(replica)

    def ended(self, replica_id: str, rows: int) -> None:
        """A call to ``replica_id`` ended, answered or not."""
        replica = self.replicas.get(replica_id) if replica_id else self._any
        if replica is None:
            return
        replica.calls = max(0, replica.calls - 1)
        replica.outstanding = max(0, replica.outstanding - rows)
        replica.sent_since_report = max(0, replica.sent_since_report - rows)
        if replica is not self._any:
            self._recount(replica)

    def answered(self, replica_id: str, held: int) -> None:
        """``replica_id`` answered and said it holds ``held`` rows: it is up, and this is
        now the freshest word on its load."""
        now = self._clock()
        replica = self._member(replica_id)
        replica.report_held = held
        replica.report_at = now
        replica.sent_since_report = 0
        replica.last_answer = now
        if not replica.fresh:
            replica.fresh = True
        self._reports.append((now + self.ttl_s, replica))
        self.lost = False
        if replica is self._any:
            return
        if replica.state is ReplicaState.UP:
            self._recount(replica)
        else:
            self._set_state(replica, ReplicaState.UP)

    def recovered(self, replica_id: str) -> None:
        """``replica_id`` answered a probe: it, and so the pool, is up."""
        if replica_id != ANY_REPLICA:
            self._set_state(self._member(replica_id), ReplicaState.UP)
        self.lost = False

    def mark(self, replica_id: str, state: ReplicaState) -> None:
        replica = self.replicas.get(replica_id)
        if replica is not None:
            self._set_state(replica, state)

    def stalled_now(self) -> list[str]:
        """Up replicas that crossed the stall bound (the caller marks them)."""
        now = self._clock()
        return [r.id for r in self._up if r.stalled(now, self.stall_s)]

    # -- service time ----------------------------------------------------------------

    def record_service(self, seconds: float) -> None:
        """A model call's time (or a timed-out request's, capped at its deadline)."""
        if len(self._samples) == self._window:
            self._forget_oldest()
        self._samples.append((self._clock(), seconds))
        bisect.insort(self._sorted, seconds)

    def _forget_oldest(self) -> None:
        _, seconds = self._samples.popleft()
        del self._sorted[bisect.bisect_left(self._sorted, seconds)]

    def service_time_s(self) -> float | None:
        """The ``QUANTILE`` of the latest ``window`` samples younger than ``ttl_s``."""
        horizon = self._clock() - self.ttl_s
        samples = self._samples
        while samples and samples[0][0] < horizon:
            self._forget_oldest()
        ordered = self._sorted
        if not ordered:
            return None
        estimate = ordered[min(len(ordered) - 1, int(QUANTILE * len(ordered)))]
        self._last_known = estimate
        return estimate

    # -- the policy's input ----------------------------------------------------------

    def view(self) -> PoolView:
        self._age_reports(self._clock())
        if not self.replicas:
            count = 0 if self.lost else self._expected
            held = self._any.outstanding
        else:
            count = len(self._up)
            held = self._held
        return PoolView(
            name=self.name,
            healthy=self.healthy,
            held=held,
            capacity=count * self.replica_capacity,
            queue_limit=count * self.replica_queue,
            service_time_s=self.service_time_s(),
            last_service_time_s=self._last_known,
        )
