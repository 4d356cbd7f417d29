"""An autoscaled InferenceService on a real API server: the operator's HPA targets the InferenceService's scale
subresource, the real kube-controller-manager's HPA controller reads it, and turning autoscaling off removes it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from tests.integration.operator_bed import Cluster, OperatorProcess

# The test bed's API server is 1.20: no autoscaling/v2, and the operator must have found that out.
HPA = "horizontalpodautoscalers.v2beta2.autoscaling"


def autoscaled(autoscaling: dict[str, Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": "pvc://models/merged"}, "resources": {"gpus": 2},
                            "vllm": {"tensorParallelSize": 2}}  # fmt: skip
    if autoscaling:
        spec["autoscaling"] = autoscaling
    return {"apiVersion": "tuneops.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": "chat"},
            "spec": spec}  # fmt: skip


def hpas(kubectl: Any, namespace: str) -> list[dict[str, Any]]:
    out = kubectl("get", HPA, "-o", "json", namespace=namespace)
    return list(json.loads(out.stdout)["items"])


def conditions(hpa: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in (hpa.get("status") or {}).get("conditions") or []}


def test_the_hpa_controller_scales_the_inferenceservice_through_its_scale_subresource(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(
        autoscaled({"engine": "hpa", "minReplicas": 1, "maxReplicas": 3, "targetValue": 4}),
        namespace=namespace,
    )
    (hpa,) = wait_until(lambda: hpas(kubectl, namespace), what="HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "tuneops.io/v1alpha1", "kind": "InferenceService",
                                             "name": "chat"}  # fmt: skip
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "InferenceService"
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "vllm_num_requests_waiting"

    # The controller found the target through the scale subresource (AbleToScale), and says it cannot read the
    # metric: the test bed has no Prometheus adapter serving custom.metrics.k8s.io.
    def acted() -> dict[str, tuple[str, str]] | None:
        found = conditions(hpas(kubectl, namespace)[0])
        return found if "AbleToScale" in found and "ScalingActive" in found else None

    seen = wait_until(acted, timeout=120, what="the HPA controller's conditions")
    assert seen["AbleToScale"] == ("True", "SucceededGetScale"), seen
    assert seen["ScalingActive"][0] == "False" and seen["ScalingActive"][1].startswith("FailedGet"), seen

    def status() -> dict[str, Any]:
        return dict((cluster.get("inferenceservices", namespace, "chat") or {}).get("status") or {})

    seen_status = wait_until(
        lambda: status() if status().get("autoscaler") else None, what="status.autoscaler"
    )
    assert (seen_status["autoscaler"], seen_status["maxGpus"]) == ("hpa 1-3", 6)

    # What the autoscaler writes (the scale subresource) reaches the Deployment; the operator never resets it.
    kubectl("scale", "tisvc/chat", "--replicas=2", namespace=namespace)
    wait_until(
        lambda: cluster.apps.read_namespaced_deployment("chat", namespace).spec.replicas == 2, what="2"
    )

    # Off again: the HPA goes, and so does the status line.
    kubectl.apply(autoscaled(None), namespace=namespace)
    wait_until(lambda: not hpas(kubectl, namespace), what="the HPA deleted")
    wait_until(lambda: "autoscaler" not in status(), what="status.autoscaler cleared")


def test_an_engine_whose_crd_is_missing_is_named_in_status(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    keda = {"engine": "keda", "minReplicas": 0, "maxReplicas": 2, "targetValue": 4}
    kubectl.apply(autoscaled(keda), namespace=namespace)

    def ready() -> dict[str, Any] | None:
        cond = cluster.ready("inferenceservices", namespace, "chat")
        return cond if cond and "ScaledObject" in cond.get("message", "") else None

    cond = wait_until(ready, what="Ready naming the missing ScaledObject CRD")
    assert cond["status"] == "False" and "install its CRD (KEDA)" in cond["message"], cond
    assert cond["reason"] == "ExtensionNotInstalled", cond
    # The server itself is deployed all the same.
    assert cluster.apps.read_namespaced_deployment("chat", namespace)


def stand_in_crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    """A CRD that serves the kind without its schema: what is checked here is that the operator applies the
    objects and prunes them; their fields are checked against the published schemas in tests/unit."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        # *.k8s.io groups are reserved for reviewed APIs; the upstream CRDs carry their review's URL here.
        "metadata": {
            "name": f"{plural}.{group}",
            "annotations": {"api-approved.kubernetes.io": "unapproved, a test stand-in"},
        },
        "spec": {
            "group": group,
            "names": {"kind": kind, "plural": plural, "listKind": f"{kind}List", "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


def test_routing_objects_are_applied_and_pruned(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kinds = [("inference.networking.k8s.io", "InferencePool", "inferencepools"),
             ("gateway.networking.k8s.io", "HTTPRoute", "httproutes")]  # fmt: skip
    kubectl.apply([stand_in_crd(*k) for k in kinds])
    for group, _, plural in kinds:
        kubectl("wait", "--for=condition=Established", f"crd/{plural}.{group}", "--timeout=60s")

    def listed(group: str, plural: str) -> list[dict[str, Any]]:
        found = cluster.custom.list_namespaced_custom_object(group, "v1", namespace, plural)
        return list(found["items"])

    obj = autoscaled(None)
    obj["spec"]["routing"] = {
        "gateway": {"name": "inference-gateway"},
        "endpointPicker": {"name": "chat-epp"},
    }
    kubectl.apply(obj, namespace=namespace)
    (pool,) = wait_until(
        lambda: listed("inference.networking.k8s.io", "inferencepools"), what="InferencePool"
    )
    (route,) = wait_until(lambda: listed("gateway.networking.k8s.io", "httproutes"), what="HTTPRoute")
    deployment = cluster.apps.read_namespaced_deployment("chat", namespace)
    assert pool["spec"]["selector"]["matchLabels"] == deployment.spec.selector.match_labels
    assert pool["spec"]["endpointPickerRef"]["name"] == "chat-epp"
    assert route["spec"]["rules"][0]["backendRefs"][0] == {
        "group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "chat"}  # fmt: skip
    assert {pool["metadata"]["ownerReferences"][0]["name"], route["metadata"]["ownerReferences"][0]["name"]} == {
        "chat"}  # fmt: skip

    kubectl.apply(autoscaled(None), namespace=namespace)
    wait_until(
        lambda: (
            not listed("inference.networking.k8s.io", "inferencepools")
            and not listed("gateway.networking.k8s.io", "httproutes")
        ),
        what="the pool and route deleted",
    )
    assert cluster.core.read_namespaced_service("chat", namespace), "the plain Service stays"
