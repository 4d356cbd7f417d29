"""Leader election against a real API server: two candidates, one Lease, short periods so takeovers are quick."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from tests.integration.conftest import wait_for
from tuneops.kube.client import ApiError, Kube
from tuneops.kube.types import LEASE
from tuneops.leader import LeaderElector
from tuneops.local.controlplane import ControlPlane

LEASE_S, RENEW_S, RETRY_S = 3.0, 1.0, 0.2


@dataclass
class Candidate:
    """An elector running acquire() in a thread of its own, as the operator's runner does."""

    elector: LeaderElector
    stop: threading.Event = field(default_factory=threading.Event)
    won_at: float | None = None
    lost: list[float] = field(default_factory=list)
    thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            if self.elector.acquire(self.stop):
                self.won_at = time.monotonic()
                self.elector.keep(self.stop, lambda: self.lost.append(time.monotonic()))

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    @property
    def won(self) -> bool:
        return self.won_at is not None


@pytest.fixture
def kube(control_plane: ControlPlane) -> Kube:
    return Kube.from_kubeconfig(control_plane.kubeconfig_path, user_agent="tuneops-test")


@pytest.fixture
def candidates(kube: Kube, namespace: str) -> Iterator[tuple[Candidate, Candidate]]:
    pair = tuple(
        Candidate(
            LeaderElector(kube, namespace, "tuneops", name, lease_s=LEASE_S, renew_s=RENEW_S, retry_s=RETRY_S)
        )
        for name in ("a", "b")
    )
    yield pair[0], pair[1]
    for c in pair:
        c.stop.set()


def holder(kube: Kube, namespace: str) -> str:
    lease = kube.get(LEASE, namespace, "tuneops") or {}
    return str((lease.get("spec") or {}).get("holderIdentity") or "")


def start_both(a: Candidate, b: Candidate) -> tuple[Candidate, Candidate]:
    """Start both at once; (winner, standby) once one has won."""
    a.start()
    b.start()
    wait_for(lambda: a.won or b.won, timeout=10, interval=0.05, what="a leader")
    return (a, b) if a.won else (b, a)


def test_exactly_one_of_two_candidates_leads_while_it_renews(
    kube: Kube, namespace: str, candidates: tuple[Candidate, Candidate]
) -> None:
    leader, standby = start_both(*candidates)
    assert holder(kube, namespace) == leader.elector.identity
    time.sleep(3 * LEASE_S)  # three lease durations: the leader renews, the standby keeps looking
    assert not standby.won and not leader.lost
    assert holder(kube, namespace) == leader.elector.identity
    lease = kube.get(LEASE, namespace, "tuneops") or {}
    assert lease["spec"]["leaseDurationSeconds"] == 3 and lease["spec"]["leaseTransitions"] == 0


def test_the_standby_takes_over_a_leader_that_stopped_renewing(
    kube: Kube, namespace: str, candidates: tuple[Candidate, Candidate]
) -> None:
    leader, standby = start_both(*candidates)
    leader.stop.set()  # renewing ends; the Lease is not released, as when a process hangs or dies
    assert leader.thread is not None
    stopped = time.monotonic()
    wait_for(lambda: standby.won, timeout=LEASE_S + 10, interval=0.05, what="the standby's takeover")
    assert standby.won_at is not None
    waited = standby.won_at - stopped
    # Not before the lease could have expired (last renewal at most renew_s before the stop), and soon after.
    assert LEASE_S - RENEW_S - 0.1 <= waited <= 2 * LEASE_S, waited
    lease = kube.get(LEASE, namespace, "tuneops") or {}
    assert lease["spec"]["holderIdentity"] == standby.elector.identity
    assert lease["spec"]["leaseTransitions"] == 1


def test_a_released_lease_is_taken_over_at_once(
    kube: Kube, namespace: str, candidates: tuple[Candidate, Candidate]
) -> None:
    leader, standby = start_both(*candidates)
    time.sleep(RENEW_S * 1.5)  # the standby has looked at least once and is waiting out the lease
    released = time.monotonic()
    leader.stop.set()
    leader.elector.release()
    wait_for(lambda: standby.won, timeout=LEASE_S, interval=0.02, what="the standby's takeover")
    assert standby.won_at is not None
    assert standby.won_at - released < LEASE_S - RENEW_S, standby.won_at - released
    assert holder(kube, namespace) == standby.elector.identity
    assert not leader.lost


def test_a_leader_whose_lease_was_taken_learns_it(
    kube: Kube, namespace: str, candidates: tuple[Candidate, Candidate]
) -> None:
    """Someone rewrites the Lease (here: by hand) naming another holder: the leader's next renewal gets a
    conflict, sees the new holder, and reports the loss once."""
    leader, standby = start_both(*candidates)
    standby.stop.set()

    def hand_over() -> bool:
        lease = kube.get(LEASE, namespace, "tuneops") or {}
        lease["spec"]["holderIdentity"] = "someone-else"
        try:
            kube.replace(LEASE, lease)
        except ApiError as exc:
            if exc.status == 409:  # a renewal came in between: read again
                return False
            raise
        return True

    wait_for(hand_over, timeout=10, interval=0.05, what="the Lease rewritten")
    wait_for(lambda: bool(leader.lost), timeout=RENEW_S + 5, interval=0.05, what="the loss to be noticed")
    time.sleep(RENEW_S * 2)
    assert len(leader.lost) == 1 and not leader.elector.leading
    assert holder(kube, namespace) == "someone-else"
