"""Argo CD's health of an autoscaled InferenceService: scaled to zero is Healthy, an autoscaler's change of
replicas is Progressing until the operator has carried it to the Pods, then Healthy again; never Degraded
unless Argo CD would call the Deployment itself Degraded.

The status samples come from the reconciler's own decision (`service_status.decide`) over what a pass observes
while replicas move, and go through the committed Lua exactly as Argo CD runs it."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_argocd_health import health, resource
from tests.unit.test_inferenceservice_conditions import DEADLINE, NO_GPU, loading, lora, pod, ready
from tuneops.api.conditions import Reason
from tuneops.reconcile.base import Cond
from tuneops.reconcile.service_status import Adapters, Observed, Workload, decide

AUTOSCALING = {"engine": "keda", "minReplicas": 0, "maxReplicas": 3, "targetValue": 4}


def autoscaled(
    conditions: tuple[Cond, ...], replicas: int, generation: int = 5, seen: int = 5
) -> dict[str, Any]:
    """An autoscaled InferenceService whose status carries `conditions`, written for generation `seen`."""
    obj = resource("InferenceService", generation=generation, observed=seen)
    obj["spec"] = {"autoscaling": AUTOSCALING, "replicas": replicas}
    obj["status"]["autoscaler"] = "keda 0-3"
    obj["status"]["conditions"] = [
        {"type": c.type, "status": {True: "True", False: "False", None: "Unknown"}[c.status],
         "reason": c.reason, "message": c.message}
        for c in conditions
    ]  # fmt: skip
    return obj


def observed(workload: Workload, adapters: Adapters | None = None) -> Observed:
    return Observed(workload, adapters, served_models=("chat",), url="http://chat.team-a.svc:8000/v1")


BOTH = lora(pod("p0", ready("a"), ready("b")), pod("p1", ready("a"), ready("b")))

# (what the autoscaler did and where the service stands, what a pass observes, Argo CD's health)
MOVES = [
    ("scaled to zero", observed(Workload(desired=0)), "Healthy"),
    ("scaled to zero with adapters: nothing to load until it scales up", observed(Workload(desired=0), lora()),
     "Healthy"),
    ("first replica back from zero, loading the model", observed(Workload(desired=1, updated=1)), "Progressing"),
    ("first replica back from zero waits for a GPU node", observed(Workload(desired=1, updated=1, cause=NO_GPU)),
     "Progressing"),
    ("the Deployment has not seen the new count yet", observed(Workload(desired=3, ready=1, updated=1, current=False)),
     "Progressing"),
    ("scaling up 1 -> 3: one serves, two load the model", observed(Workload(desired=3, ready=1, updated=3)),
     "Progressing"),
    ("scaling up: new replicas wait for GPU nodes while one serves",
     observed(Workload(desired=3, ready=1, updated=3, cause=NO_GPU)), "Progressing"),
    ("scaled up: the new replica still loads an adapter",
     observed(Workload(desired=2, ready=2, updated=2), lora(pod("p0", ready("a"), ready("b")),
                                                             pod("p1", ready("a"), loading("b")))), "Progressing"),
    ("scaled up 1 -> 3 and serving", observed(Workload(desired=3, ready=3, updated=3)), "Healthy"),
    ("scaled up with adapters served on every replica", observed(Workload(desired=2, ready=2, updated=2), BOTH),
     "Healthy"),
    ("scaling down 3 -> 1: surplus Pods still terminating", observed(Workload(desired=1, ready=3, updated=3)),
     "Healthy"),
    # As Argo CD's own health calls a Deployment past its progress deadline (startup time + 10 minutes here)
    # Degraded: a scale-up whose Pods never start is a failure a person must look at, not a move.
    ("scale-up stuck past the Deployment's progress deadline",
     observed(Workload(desired=3, ready=1, updated=3, cause=DEADLINE)), "Degraded"),
]  # fmt: skip


@pytest.mark.parametrize(("what", "seen", "expected"), MOVES, ids=[m[0] for m in MOVES])
def test_health_while_the_autoscaler_moves_replicas(what: str, seen: Observed, expected: str) -> None:
    obj = autoscaled(decide(seen).conditions, replicas=seen.workload.desired)
    got, message = health("InferenceService", obj)
    assert got == expected, f"{what}: {got} ({message})"


@pytest.mark.parametrize(
    ("generation", "observed_generation", "ready", "expected"),
    [
        (4, 4, ("True", Reason.SUCCEEDED, "scaled to zero; serves it again when scaled up"), "Healthy"),
        (5, 4, ("True", Reason.SUCCEEDED, "scaled to zero; serves it again when scaled up"), "Progressing"),
        (5, 5, ("True", Reason.MINIMUM_REPLICAS_AVAILABLE, "serving; rollout in progress (1/3 ready)"),
         "Progressing"),
        (5, 5, ("True", Reason.SUCCEEDED, "serving chat at http://chat.ns.svc:8000/v1"), "Healthy"),
    ],
)  # fmt: skip
def test_a_write_to_the_scale_subresource_is_progressing_until_observed(
    generation: int, observed_generation: int, ready: tuple[str, str, str], expected: str
) -> None:
    """The autoscaler's write of spec.replicas bumps metadata.generation: Progressing until the operator has
    looked at it, whatever the previous status said."""
    obj = resource("InferenceService", generation=generation, observed=observed_generation, ready=ready)
    obj["spec"] = {"autoscaling": AUTOSCALING, "replicas": 0 if "zero" in ready[2] else 3}
    obj["status"]["autoscaler"] = "keda 0-3"
    assert health("InferenceService", obj)[0] == expected
