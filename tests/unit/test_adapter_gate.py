"""The adapters readiness gate: the operator's verdict per Pod (tuneops.adapters.gate) and the local kubelet's
reading of readiness gates (a Pod is Ready only when its containers are and every gate's condition is True)."""

from __future__ import annotations

from typing import Any

import pytest

from tuneops.adapters import gate
from tuneops.adapters.types import AdapterPodState, AdapterState, PodResult
from tuneops.local import podstatus

READY, LOADING, FAILED = AdapterState.READY, AdapterState.LOADING, AdapterState.FAILED


def pod(containers_ready: bool = True, have: str | None = None, reason: str = "") -> dict[str, Any]:
    conditions = [{"type": "ContainersReady", "status": "True" if containers_ready else "False"}]
    if have is not None:
        conditions.append({"type": gate.GATE, "status": have, "reason": reason, "message": ""})
    return {
        "metadata": {"name": "p"},
        "spec": {"readinessGates": [{"conditionType": gate.GATE}]},
        "status": {"conditions": conditions},
    }


def result(name: str, reachable: bool = True, **states: AdapterState) -> PodResult:
    return PodResult(
        pod=name,
        reachable=reachable,
        states={a: AdapterPodState(name=a, state=s, message=f"{a} broke" if s is FAILED else "")
                for a, s in states.items()},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("mine", "others", "want"),
    [
        ({"a": READY, "b": READY}, [], (True, "AdaptersServed")),
        ({}, [], (True, "AdaptersServed")),  # nothing to serve: nothing to wait for
        ({"a": READY, "b": LOADING}, [], (False, "AdaptersLoading")),
        # failed here, served by another replica: this Pod is the problem, it gets no traffic
        ({"a": READY, "b": FAILED}, [{"a": READY, "b": READY}], (False, "AdapterFailed")),
        # failed everywhere: a broken adapter takes no server down (Degraded names it)
        ({"a": READY, "b": FAILED}, [{"a": READY, "b": FAILED}], (True, "AdaptersServed")),
        ({"a": READY, "b": FAILED}, [], (True, "AdaptersServed")),
    ],
)
def test_the_gate_opens_when_the_pod_serves_what_it_should(
    mine: dict[str, AdapterState], others: list[dict[str, AdapterState]], want: tuple[bool, str]
) -> None:
    me = result("p", **mine)
    verdict = gate.decide(pod(), me, [me, *(result(f"o{i}", **o) for i, o in enumerate(others))])
    assert verdict is not None and (verdict.status, verdict.reason) == want
    if not verdict.status:
        assert "b" in verdict.message


def test_an_unwanted_adapter_on_its_way_out_holds_nothing() -> None:
    me = PodResult(pod="p", reachable=True, states={
        "a": AdapterPodState(name="a", state=READY),
        "old": AdapterPodState(name="old", state=AdapterState.UNLOADING, desired=False)})  # fmt: skip
    verdict = gate.decide(pod(), me, [me])
    assert verdict is not None and verdict.status and verdict.message == "serves its 1 adapter"


def test_a_server_that_is_not_ready_closes_the_gate_at_once() -> None:
    """A restarted server (its containers unready) loses its runtime adapters: the gate is closed before it is
    ready again, so the kubelet never reports it Ready on the old verdict."""
    verdict = gate.decide(pod(containers_ready=False, have="True"), None, [])
    assert verdict is not None and (verdict.status, verdict.reason) == (False, "ServerNotReady")


def test_no_answer_yet_changes_nothing() -> None:
    assert gate.decide(pod(), None, []) is None
    assert gate.decide(pod(), result("p", reachable=False), []) is None


def test_only_a_change_is_written_and_the_transition_time_kept() -> None:
    closed = gate.Gate(False, "AdaptersLoading", "loading a")
    p = pod(have="False", reason="AdaptersLoading")
    p["status"]["conditions"][1].update(message="loading a", lastTransitionTime="t0")
    assert not gate.differs(p, closed)
    moved = gate.Gate(False, "AdaptersLoading", "loading a, b")
    assert gate.differs(p, moved)
    assert gate.patch_body(p, moved, "t1")["status"]["conditions"][0]["lastTransitionTime"] == "t0"
    opened = gate.patch_body(p, gate.Gate(True, "AdaptersServed", "serves its 2 adapters"), "t1")
    assert opened["status"]["conditions"][0] | {} == {
        "type": gate.GATE, "status": "True", "reason": "AdaptersServed", "message": "serves its 2 adapters",
        "lastProbeTime": None, "lastTransitionTime": "t1"}  # fmt: skip


@pytest.mark.parametrize(
    ("gate_status", "ready", "says"),
    [
        (
            None,
            "False",
            'corresponding condition of pod readiness gate "tuneops.io/adapters-ready" does not exist.',
        ),
        (
            "False",
            "False",
            'the status of pod readiness gate "tuneops.io/adapters-ready" is not "True", but False',
        ),
        ("True", "True", None),
    ],
)
def test_the_local_kubelet_reads_readiness_gates(
    gate_status: str | None, ready: str, says: str | None
) -> None:
    old = [] if gate_status is None else [{"type": gate.GATE, "status": gate_status}]
    conditions = {c["type"]: c for c in podstatus._conditions([], [], True, True, False, old, [gate.GATE])}
    assert conditions["ContainersReady"]["status"] == "True"
    assert conditions["Ready"]["status"] == ready
    assert conditions["Ready"]["message"] == says
    if says:
        assert conditions["Ready"]["reason"] == "ReadinessGatesNotReady"
    assert gate.GATE not in conditions, "the kubelet's patch leaves the gate's own condition to its owner"


def test_the_operators_pod_cache_keeps_the_readiness_gates() -> None:
    """The informer keeps a projection of each Pod; the gate is read from it."""
    from tuneops.kube.informer import project_pod

    assert gate.gated(project_pod({"apiVersion": "v1", "kind": "Pod", **pod()}))
