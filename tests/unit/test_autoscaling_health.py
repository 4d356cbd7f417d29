"""Argo CD's health of an autoscaled InferenceService: scaled to zero is Healthy, an autoscaler's change of
replicas is Progressing until the operator has carried it to the Pods, then Healthy again."""

from __future__ import annotations

import pytest

from tests.unit.test_argocd_health import health, resource
from tuneops.api.conditions import Reason


@pytest.mark.parametrize(
    ("generation", "observed", "ready", "expected"),
    [
        (4, 4, ("True", Reason.SUCCEEDED, "scaled to zero; serves it again when scaled up"), "Healthy"),
        (5, 4, ("True", Reason.SUCCEEDED, "scaled to zero; serves it again when scaled up"), "Progressing"),
        (5, 5, ("True", Reason.MINIMUM_REPLICAS_AVAILABLE, "serving; rollout in progress (1/3 ready)"),
         "Progressing"),
        (5, 5, ("True", Reason.SUCCEEDED, "serving chat at http://chat.ns.svc:8000/v1"), "Healthy"),
    ],
)  # fmt: skip
def test_autoscaled_service_health(
    generation: int, observed: int, ready: tuple[str, str, str], expected: str
) -> None:
    obj = resource("InferenceService", generation=generation, observed=observed, ready=ready)
    obj["spec"] = {"autoscaling": {"engine": "keda", "minReplicas": 0, "maxReplicas": 3, "targetValue": 4},
                   "replicas": 0 if "zero" in ready[2] else 3}  # fmt: skip
    obj["status"]["autoscaler"] = "keda 0-3"
    assert health("InferenceService", obj)[0] == expected
