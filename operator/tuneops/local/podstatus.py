"""A Pod's status as a kubelet reports it (phase, conditions, container statuses), from its containers' states."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from tuneops.local.container import Container, now_rfc3339
from tuneops.local.podenv import HOST_IP

Obj = dict[str, Any]


def phase(init: Sequence[Container], containers: Sequence[Container], failed_init: bool) -> str:
    if failed_init:
        return "Failed"
    if any(not c.done for c in init):
        return "Pending"
    states = [c.state for c in containers]
    if any("running" in s for s in states):
        return "Running"
    if all(c.done for c in containers) and containers:
        codes = [int(c.state["terminated"]["exitCode"]) for c in containers]
        return "Succeeded" if all(code == 0 for code in codes) else "Failed"
    if any(c.restart_count > 0 or "terminated" in c.state for c in containers):
        return "Running"
    return "Pending"


def _gates_pending(gates: Sequence[str], old: list[Obj]) -> str | None:
    """The kubelet's message for the first readiness gate whose condition is not True (None: all are)."""
    have = {c.get("type"): c.get("status") for c in old}
    for gate in gates:
        if gate not in have:
            return f'corresponding condition of pod readiness gate "{gate}" does not exist.'
        if have[gate] != "True":
            return f'the status of pod readiness gate "{gate}" is not "True", but {have[gate]}'
    return None


def _conditions(
    init: Sequence[Container],
    containers: Sequence[Container],
    initialized: bool,
    ready: bool,
    finished: bool,
    old: list[Obj],
    gates: Sequence[str] = (),
) -> list[Obj]:
    now = now_rfc3339()
    # Ready also needs every readiness gate's condition True (conditions others set in the Pod's status).
    gated = _gates_pending(gates, old) if ready else None
    conditions: list[Obj] = [
        {"type": "PodScheduled", "status": "True"},
        {"type": "Initialized", "status": "True" if initialized else "False"},
        {"type": "ContainersReady", "status": "True" if ready else "False"},
        {"type": "Ready", "status": "True" if ready and gated is None else "False"},
    ]
    if gated is not None:
        conditions[3]["reason"] = "ReadinessGatesNotReady"
        conditions[3]["message"] = gated
    if not initialized:
        incomplete = [c.name for c in init if not c.done or c.state.get("terminated", {}).get("exitCode")]
        conditions[1]["reason"] = "ContainersNotInitialized"
        conditions[1]["message"] = f"containers with incomplete status: [{' '.join(incomplete)}]"
    if not ready:
        unready = [c.name for c in containers if not c.ready]
        for cond in conditions[2:]:
            cond["reason"] = "PodCompleted" if finished else "ContainersNotReady"
            cond["message"] = f"containers with unready status: [{' '.join(unready)}]"
    for cond in conditions[1:]:
        # The status is a strategic merge patch (conditions merged by type): a null clears the reason and
        # message a condition had while False, as a kubelet's whole-status update does.
        cond.setdefault("reason", None)
        cond.setdefault("message", None)
    previous = {c.get("type"): c for c in old}
    for cond in conditions:
        prev = previous.get(cond["type"])
        same = prev is not None and prev.get("status") == cond["status"]
        cond["lastTransitionTime"] = prev.get("lastTransitionTime") if same and prev else now
        cond["lastProbeTime"] = None
    return conditions


def pod_status(
    pod: Obj,
    init: Sequence[Container],
    containers: Sequence[Container],
    failed_init: bool,
    ip: str,
    start_time: str,
) -> Obj:
    """The status to report; a finished Pod's containers are marked unready as a side effect."""
    initialized = all(c.done for c in init) and not failed_init
    # A native sidecar's readiness counts toward the Pod's, as the kubelet's does.
    ready = bool(containers) and all(c.ready for c in (*containers, *(i for i in init if i.sidecar)))
    current = phase(init, containers, failed_init)
    finished = current in ("Succeeded", "Failed")
    if finished:
        ready = False
        for c in containers:
            c.ready = False
    old = (pod.get("status") or {}).get("conditions") or []
    gates = [
        str(g["conditionType"])
        for g in (pod.get("spec") or {}).get("readinessGates") or []
        if isinstance(g, dict) and g.get("conditionType")
    ]
    status: Obj = {
        "phase": current,
        "conditions": _conditions(init, containers, initialized, ready, finished, old, gates),
        "hostIP": HOST_IP,
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": start_time,
        "containerStatuses": [_waiting_for_init(c.status(), initialized) for c in containers],
    }
    if init:
        status["initContainerStatuses"] = [c.status() for c in init]
    return status


def _waiting_for_init(status: Obj, initialized: bool) -> Obj:
    # Until the init containers are done the others have not been created: the kubelet says PodInitializing.
    if not initialized and status["state"] == {"waiting": {"reason": "ContainerCreating"}}:
        return {**status, "state": {"waiting": {"reason": "PodInitializing"}}}
    return status


def comparable(status: Obj) -> str:
    """The status without transition times, as text: equal text means nothing worth reporting changed."""
    return json.dumps(
        {
            **status,
            "conditions": [
                {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in status["conditions"]
            ],
        },
        sort_keys=True,
    )
