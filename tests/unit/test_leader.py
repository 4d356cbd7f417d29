"""Leader election on a Lease, against an in-memory API that honours resourceVersion, with a clock the test moves."""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections.abc import Callable
from typing import Any

import pytest

from tuneops.cli import build_parser
from tuneops.kube.client import ApiError
from tuneops.kube.types import LEASE, ResourceType
from tuneops.leader import LeaderElector, micro_time

NS, NAME = "ops", "tuneops"
Obj = dict[str, Any]


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def wall(self) -> dt.datetime:
        return dt.datetime(2030, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=self.t)


class Ticking(threading.Event):
    """An Event whose wait() moves the fake clock instead of sleeping; sets itself once the clock reaches `until`."""

    def __init__(self, clock: Clock, until: float = float("inf")) -> None:
        super().__init__()
        self.clock = clock
        self.until = until

    def wait(self, timeout: float | None = None) -> bool:
        assert timeout is not None, "the elector never waits without a timeout on the test's events"
        if not self.is_set():
            self.clock.t += timeout
            if self.clock.t >= self.until:
                self.set()
        return self.is_set()


class Leases:
    """The Lease collection of an API server: create (409 AlreadyExists), PUT guarded by resourceVersion (409)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.items: dict[str, Obj] = {}
        self.version = 0
        self.writes: list[tuple[float, str]] = []  # (clock, holder) of every accepted write
        self.failing = False
        self.before_write: Callable[[], None] | None = None

    def _check(self, rtype: ResourceType, method: str) -> None:
        assert rtype is LEASE
        if self.failing:
            raise ApiError(503, method, "/leases", '{"message": "etcd unavailable"}')

    def _store(self, obj: Obj) -> Obj:
        self.version += 1
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.items[obj["metadata"]["name"]] = obj
        self.writes.append((self.clock.t, obj["spec"].get("holderIdentity", "")))
        return copy.deepcopy(obj)

    def _hook(self) -> None:
        hook, self.before_write = self.before_write, None
        if hook:
            hook()

    def get(self, rtype: ResourceType, namespace: str | None, name: str) -> Obj | None:
        self._check(rtype, "GET")
        assert namespace == NS
        return copy.deepcopy(self.items.get(name))

    def create(self, rtype: ResourceType, namespace: str | None, body: Obj) -> Obj:
        self._check(rtype, "POST")
        self._hook()
        if body["metadata"]["name"] in self.items:
            raise ApiError(409, "POST", "/leases", '{"reason": "AlreadyExists", "message": "exists"}')
        return self._store(body)

    def replace(self, rtype: ResourceType, obj: Obj) -> Obj:
        self._check(rtype, "PUT")
        self._hook()
        held = self.items.get(obj["metadata"]["name"])
        if held is None:
            raise ApiError(404, "PUT", "/leases", "")
        if held["metadata"]["resourceVersion"] != obj["metadata"].get("resourceVersion"):
            raise ApiError(409, "PUT", "/leases", '{"reason": "Conflict", "message": "modified"}')
        return self._store(obj)

    def spec(self) -> Obj:
        return dict(self.items[NAME]["spec"])


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def leases(clock: Clock) -> Leases:
    return Leases(clock)


def elector(leases: Leases, clock: Clock, identity: str, **kw: float) -> LeaderElector:
    return LeaderElector(leases, NS, NAME, identity, clock=clock, wall=clock.wall, **kw)


def renew(e: LeaderElector, clock: Clock, until: float) -> list[str]:
    """Run the renewal loop in this thread until `until` (fake time); what on_lost was told, as a list."""
    lost: list[str] = []
    e._renew_loop(Ticking(clock, until), lambda: lost.append("lost"))
    return lost


def test_the_first_candidate_creates_the_lease_and_holds_it(leases: Leases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    assert a.acquire(Ticking(clock)) and a.leading
    assert leases.spec() == {
        "holderIdentity": "a",
        "leaseDurationSeconds": 15,
        "acquireTime": micro_time(clock.wall()),
        "renewTime": micro_time(clock.wall()),
        "leaseTransitions": 0,
    }
    assert leases.spec()["renewTime"] == "2030-01-01T00:16:40.000000Z"


def test_a_standby_waits_for_a_silent_holder_for_the_lease_duration_on_its_own_clock(
    leases: Leases, clock: Clock
) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert a.try_acquire()
    seen = clock.t
    assert b.acquire(Ticking(clock))
    assert seen + 15 <= clock.t <= seen + 15 + b.retry_s
    spec = leases.spec()
    assert (spec["holderIdentity"], spec["leaseTransitions"], spec["acquireTime"]) == (
        "b", 1, micro_time(clock.wall())
    )  # fmt: skip


def test_a_renewed_lease_is_never_taken(leases: Leases, clock: Clock) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert a.try_acquire()
    for _ in range(60):  # two minutes: the holder renews every 10 s, the standby looks every 2 s
        clock.t += 2
        if clock.t - a._renewed_at >= a.renew_s:
            assert a._attempt(renewing=True, timeout_s=5) is True
        assert not b.try_acquire()
    assert leases.spec()["holderIdentity"] == "a" and not b.leading


def test_a_released_lease_is_taken_at_once(leases: Leases, clock: Clock) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert a.try_acquire()
    assert not b.try_acquire()
    a.release()
    assert not a.leading
    assert "holderIdentity" not in leases.spec() and leases.spec()["leaseDurationSeconds"] == 1
    before = clock.t
    assert b.acquire(Ticking(clock)) and clock.t == before
    assert leases.spec()["holderIdentity"] == "b"


def test_release_without_the_lease_writes_nothing(leases: Leases, clock: Clock) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert a.try_acquire()
    writes = list(leases.writes)
    b.release()
    assert leases.writes == writes


def test_two_candidates_racing_for_an_expired_lease_one_wins(leases: Leases, clock: Clock) -> None:
    old, a, b = (elector(leases, clock, n) for n in ("old", "a", "b"))
    assert old.try_acquire()
    assert not a.try_acquire() and not b.try_acquire()  # both start the lease's clock
    clock.t += 15
    results: list[bool] = []
    # b reads, then a's whole attempt lands between b's read and b's write: b's write carries a stale version.
    leases.before_write = lambda: results.append(a.try_acquire())
    results.append(b.try_acquire())
    assert results == [True, False]
    assert leases.spec()["holderIdentity"] == "a" and a.leading and not b.leading


def test_two_candidates_creating_the_first_lease_one_wins(leases: Leases, clock: Clock) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    results: list[bool] = []
    leases.before_write = lambda: results.append(a.try_acquire())
    results.append(b.try_acquire())
    assert results == [True, False] and leases.spec()["holderIdentity"] == "a"


def test_the_holder_renews_every_renew_period(leases: Leases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    assert a.try_acquire()
    start = clock.t
    assert renew(a, clock, until=start + 65) == []
    assert [t - start for t, _ in leases.writes] == [0, 10, 20, 30, 40, 50, 60]
    assert a.leading


def test_a_holder_that_cannot_renew_gives_up_before_the_lease_expires(leases: Leases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    assert a.try_acquire()
    start = clock.t
    leases.failing = True
    assert renew(a, clock, until=start + 100) == ["lost"]
    # Tried at 10 and 12 (every retry_s); gave up at 13, one retry period before the lease's 15 s are over.
    assert clock.t - start == 13
    assert not a.leading


def test_a_holder_that_renews_after_a_failure_keeps_the_lease(leases: Leases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    assert a.try_acquire()
    start = clock.t
    leases.failing = True  # until 11 s: the renewal at 10 fails, the retry at 12 goes through
    halt = Ticking(clock, until=start + 40)
    original = halt.wait

    def wait(timeout: float | None = None) -> bool:
        done = original(timeout)
        if clock.t >= start + 11:
            leases.failing = False
        return done

    halt.wait = wait  # type: ignore[method-assign]
    lost: list[str] = []
    a._renew_loop(halt, lambda: lost.append("lost"))
    assert lost == []
    assert [t - start for t, _ in leases.writes] == [0, 12, 22, 32]


def test_a_holder_whose_lease_was_taken_learns_it_at_the_next_renewal(leases: Leases, clock: Clock) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert a.try_acquire()
    start = clock.t
    # The lease is handed to b behind a's back (as an administrator or a clock gone wrong would).
    leases.items[NAME]["spec"]["holderIdentity"] = "b"
    leases.items[NAME]["metadata"]["resourceVersion"] = "99"
    assert renew(a, clock, until=start + 100) == ["lost"]
    assert clock.t - start == 10 and not a.leading
    assert leases.spec()["holderIdentity"] == "b"
    assert not b.leading  # b never asked; nothing was written for it


def test_a_lease_changed_by_someone_else_but_still_ours_is_renewed(leases: Leases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    assert a.try_acquire()
    leases.items[NAME]["metadata"]["resourceVersion"] = "99"  # e.g. a label added with kubectl
    clock.t += 10
    assert a._attempt(renewing=True, timeout_s=5) is True
    assert leases.spec()["holderIdentity"] == "a"


def test_a_deleted_lease_is_created_again_by_its_holder(leases: Leases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    assert a.try_acquire()
    del leases.items[NAME]
    clock.t += 10
    assert a._attempt(renewing=True, timeout_s=5) is True
    assert leases.spec()["holderIdentity"] == "a"


def test_errors_while_standing_by_are_retried(leases: Leases, clock: Clock) -> None:
    a = elector(leases, clock, "a")
    leases.failing = True
    assert not a.try_acquire()

    stop = Ticking(clock, until=clock.t + 60)
    original = stop.wait

    def wait(timeout: float | None = None) -> bool:
        leases.failing = False
        return original(timeout)

    stop.wait = wait  # type: ignore[method-assign]
    assert a.acquire(stop) and leases.spec()["holderIdentity"] == "a"


def test_acquire_gives_up_when_stopped(leases: Leases, clock: Clock) -> None:
    a, b = elector(leases, clock, "a"), elector(leases, clock, "b")
    assert a.try_acquire()
    assert not b.acquire(Ticking(clock, until=clock.t + 5))
    assert leases.spec()["holderIdentity"] == "a"


def test_keep_renews_in_a_thread_and_stops_with_the_stop_event(leases: Leases) -> None:
    real = LeaderElector(leases, NS, NAME, "a", lease_s=3.0, renew_s=0.2, retry_s=0.1)
    stop = threading.Event()
    assert real.acquire(stop)
    thread = real.keep(stop, lambda: pytest.fail("lost"))
    threading.Event().wait(0.7)
    assert len(leases.writes) >= 3
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive() and real.leading  # stopping does not release: release() does
    real.release()
    assert "holderIdentity" not in leases.spec()


def test_keep_needs_the_lease(leases: Leases, clock: Clock) -> None:
    with pytest.raises(RuntimeError, match="acquire"):
        elector(leases, clock, "a").keep(threading.Event(), lambda: None)


@pytest.mark.parametrize(
    ("lease_s", "renew_s", "retry_s"), [(10, 10, 2), (15, 10, 10), (15, 10, 0), (5, 10, 2)]
)
def test_periods_must_nest(lease_s: float, renew_s: float, retry_s: float, leases: Leases) -> None:
    with pytest.raises(ValueError, match="retry_s < renew_s < lease_s"):
        LeaderElector(leases, NS, NAME, "a", lease_s=lease_s, renew_s=renew_s, retry_s=retry_s)


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        ([], {}, (False, "default", "tuneops")),
        ([], {"POD_NAMESPACE": "tuneops-system"}, (False, "tuneops-system", "tuneops")),
        (
            ["--leader-election", "--leader-election-namespace=ops", "--leader-election-id=t2"],
            {},
            (True, "ops", "t2"),
        ),
    ],
)
def test_run_flags(
    argv: list[str], env: dict[str, str], expected: tuple[bool, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    args = build_parser().parse_args(["run", *argv])
    assert (args.leader_election, args.leader_election_namespace, args.leader_election_id) == expected


def test_the_flag_that_did_nothing_is_gone() -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--standalone"])
