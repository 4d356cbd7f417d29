"""The adapters readiness gate of a serving Pod: whether it may get traffic, from what its server lists.

A vLLM Pod that serves runtime LoRA adapters carries `readinessGates: [{conditionType: tuneops.io/adapters-ready}]`:
the kubelet reports it Ready (so the Service and an InferencePool's endpoint picker send it requests) only once
its containers are ready *and* the operator has set that condition True, which it does when the Pod's server
lists every adapter it should serve. A new replica, or one whose server restarted (its containers turn unready,
and the gate is set False at once), gets no traffic until it serves them all.

One exception keeps a bad adapter from taking the service down: an adapter that has failed (past its attempts)
on this Pod and is served by no other Pod is broken, not this Pod's fault; it does not hold the gate (the
service's Degraded condition names it). Failed here but served elsewhere, it does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneops.adapters.types import AdapterState, PodResult

GATE = "tuneops.io/adapters-ready"


@dataclass(frozen=True)
class Gate:
    status: bool
    reason: str
    message: str


def condition(pod: Mapping[str, Any], kind: str) -> Mapping[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if isinstance(c, Mapping) and c.get("type") == kind:
            return c
    return None


def is_true(pod: Mapping[str, Any], kind: str) -> bool:
    c = condition(pod, kind)
    return c is not None and c.get("status") == "True"


def gated(pod: Mapping[str, Any]) -> bool:
    """Whether the Pod's spec carries the adapters gate."""
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    return any(isinstance(g, Mapping) and g.get("conditionType") == GATE for g in gates)


def decide(pod: Mapping[str, Any], result: PodResult | None, results: Sequence[PodResult]) -> Gate | None:
    """The gate a Pod should have, or None when this pass says nothing new about it (no answer yet)."""
    if not is_true(pod, "ContainersReady"):
        return Gate(False, "ServerNotReady", "the server is not ready: its adapters are checked once it is")
    if result is None or not result.reachable:
        return None
    loading: list[str] = []
    failed: list[str] = []
    for name, st in sorted(result.states.items()):
        if not st.desired or st.state is AdapterState.READY:
            continue
        if st.state is AdapterState.FAILED:
            elsewhere = any(
                r.pod != result.pod
                and r.reachable
                and (o := r.states.get(name))
                and o.state is AdapterState.READY
                for r in results
            )
            if elsewhere:
                failed.append(f"{name}: {st.message[:160]}" if st.message else name)
            continue
        loading.append(name)
    if failed:
        return Gate(
            False, "AdapterFailed", "fails to load what other replicas serve: " + "; ".join(failed[:3])
        )
    if loading:
        more = f" and {len(loading) - 5} more" if len(loading) > 5 else ""
        return Gate(False, "AdaptersLoading", f"loading {', '.join(loading[:5])}{more}")
    served = sum(1 for st in result.states.values() if st.desired and st.state is AdapterState.READY)
    return Gate(True, "AdaptersServed", f"serves its {served} adapter{'' if served == 1 else 's'}")


def differs(pod: Mapping[str, Any], gate: Gate) -> bool:
    have = condition(pod, GATE)
    if have is None:
        return True
    return (have.get("status"), have.get("reason"), have.get("message")) != (
        "True" if gate.status else "False",
        gate.reason,
        gate.message,
    )


def patch_body(pod: Mapping[str, Any], gate: Gate, now: str) -> dict[str, Any]:
    """A strategic merge patch of the Pod's status that sets the gate's condition (conditions merge by type)."""
    have = condition(pod, GATE)
    status = "True" if gate.status else "False"
    changed = have is None or have.get("status") != status
    return {
        "status": {
            "conditions": [
                {
                    "type": GATE,
                    "status": status,
                    "reason": gate.reason,
                    "message": gate.message,
                    "lastProbeTime": None,
                    "lastTransitionTime": now if changed else (have or {}).get("lastTransitionTime") or now,
                }
            ]
        }
    }
