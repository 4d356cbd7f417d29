"""An autoscaled or routed InferenceService on a real API server: the operator's HPA targets the InferenceService's
scale subresource, the real kube-controller-manager's HPA controller reads it, and turning autoscaling off removes
it; KEDA's ScaledObject, the InferencePool and the HTTPRoute are admitted by CRDs carrying those projects' published
schemas, and stored exactly as the operator rendered them."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes.client import ApiException

from tests.integration.operator_bed import Cluster, OperatorProcess
from tests.unit.published_schemas import crd_schema
from tuneops.config import OperatorConfig
from tuneops.kube.types import type_of
from tuneops.render.plan import render_documents

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


# The operator reads its children from informers: one whose kind's CRD was missing when the operator started lists
# again once the operator's first apply of that kind succeeds. Applies go straight to the API server, so children
# appear at once; pruning them waits for that list, hence these longer waits.
REDISCOVERY_WAIT = 90.0


def published_crd(manifest: dict[str, Any]) -> dict[str, Any]:
    """A CRD serving `manifest`'s kind with the schema its project publishes (tests/unit/published_schemas.py:
    KEDA's and Gateway API's npm packages; for InferencePool, which no registry publishes, the transcription of
    its v1 API reference). The API server checks types, enums and required fields against it, and drops any
    field it does not define."""
    rtype = type_of(manifest)
    group, version = rtype.api_version.split("/")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        # *.k8s.io groups are reserved for reviewed APIs; the upstream CRDs carry their review's URL here.
        "metadata": {
            "name": f"{rtype.plural}.{group}",
            "annotations": {"api-approved.kubernetes.io": "unapproved, a copy of the published schema"},
        },
        "spec": {
            "group": group,
            "names": {"kind": rtype.kind, "plural": rtype.plural, "listKind": f"{rtype.kind}List",
                      "singular": rtype.kind.lower()},
            "scope": "Namespaced",
            "versions": [{"name": version, "served": True, "storage": True, "subresources": {"status": {}},
                          "schema": {"openAPIV3Schema": crd_schema(manifest)}}],
        },
    }  # fmt: skip


@pytest.fixture
def install_crds(kubectl: Any) -> Iterator[Callable[[list[dict[str, Any]]], None]]:
    """`install_crds(manifests)`: the published CRDs of the manifests' kinds, deleted when the test ends (the
    other tests here need them absent)."""
    names: list[str] = []

    def install(manifests: list[dict[str, Any]]) -> None:
        crds = [published_crd(m) for m in manifests]
        kubectl.apply(crds)
        for crd in crds:
            names.append(crd["metadata"]["name"])
            kubectl("wait", "--for=condition=Established", f"crd/{names[-1]}", "--timeout=60s")

    yield install
    for name in names:
        kubectl("delete", "crd", name, "--wait=true", "--timeout=120s", timeout=150)


def rendered(obj: dict[str, Any], namespace: str, kinds: set[str]) -> list[dict[str, Any]]:
    """What the operator applies for `obj` of `kinds` (the operator of the test bed runs on the default config)."""
    return [m for m in render_documents([obj], OperatorConfig(), namespace=namespace) if m["kind"] in kinds]


def stored(cluster: Cluster, manifest: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The objects of `manifest`'s kind in the namespace, as the API server keeps them."""
    rtype = type_of(manifest)
    group, version = rtype.api_version.split("/")
    found = cluster.custom.list_namespaced_custom_object(group, version, namespace, rtype.plural)
    return list(found["items"])


def assert_stored_as_rendered(cluster: Cluster, manifest: dict[str, Any], namespace: str) -> None:
    """The API server kept every field the operator set (its schema defines them all: none was dropped) and
    added none."""
    (found,) = stored(cluster, manifest, namespace)
    assert found["spec"] == manifest["spec"]
    assert found["metadata"]["labels"] == manifest["metadata"]["labels"] | {
        "tuneops.io/owner": found["metadata"]["ownerReferences"][0]["uid"]
    }
    assert found["metadata"]["ownerReferences"][0]["name"] == manifest["metadata"]["name"]


def assert_schema_enforced(cluster: Cluster, manifest: dict[str, Any], namespace: str) -> None:
    """The CRD is no stand-in: a field its schema does not define is dropped, a wrong type refused. (Through the
    REST paths, as the operator writes: kubectl's discovery may not list a group established a moment ago.)"""
    group, version = type_of(manifest).api_version.split("/")
    where = (group, version, namespace, type_of(manifest).plural)
    probe = copy.deepcopy(manifest)
    probe["metadata"] = {"name": "probe"}
    probe["spec"]["notInTheSchema"] = "x"
    kept = cluster.custom.create_namespaced_custom_object(*where, probe)
    assert "notInTheSchema" not in kept["spec"], kept["spec"]
    nested = next(k for k, v in sorted(manifest["spec"].items()) if isinstance(v, dict | list))
    probe["spec"] = {**manifest["spec"], nested: 7}
    with pytest.raises(ApiException) as refused:
        cluster.custom.replace_namespaced_custom_object(
            *where, "probe", probe | {"metadata": kept["metadata"]}
        )
    assert refused.value.status == 422 and f"spec.{nested}" in str(refused.value.body), refused.value.body
    cluster.custom.delete_namespaced_custom_object(*where, "probe")


def test_a_keda_scaledobject_is_admitted_by_kedas_published_crd(
    operator: OperatorProcess,
    cluster: Cluster,
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
    install_crds: Callable[[list[dict[str, Any]]], None],
) -> None:
    """KEDA is not running: nothing scales; the ScaledObject is admitted as rendered and status reports it."""
    obj = autoscaled({"engine": "keda", "minReplicas": 0, "maxReplicas": 2, "targetValue": 4})
    (scaled,) = rendered(obj, namespace, {"ScaledObject"})
    install_crds([scaled])
    assert_schema_enforced(cluster, scaled, namespace)

    kubectl.apply(obj, namespace=namespace)
    wait_until(lambda: stored(cluster, scaled, namespace), what="ScaledObject")
    assert_stored_as_rendered(cluster, scaled, namespace)

    def status() -> dict[str, Any]:
        return dict((cluster.get("inferenceservices", namespace, "chat") or {}).get("status") or {})

    seen = wait_until(lambda: status() if status().get("autoscaler") else None, what="status.autoscaler")
    assert (seen["autoscaler"], seen["maxGpus"]) == ("keda 0-2", 4), seen
    ready = cluster.ready("inferenceservices", namespace, "chat") or {}
    assert ready.get("reason") != "ExtensionNotInstalled", ready

    kubectl.apply(autoscaled(None), namespace=namespace)
    wait_until(lambda: not stored(cluster, scaled, namespace), timeout=REDISCOVERY_WAIT,
               what="the ScaledObject deleted")  # fmt: skip
    wait_until(lambda: "autoscaler" not in status(), what="status.autoscaler cleared")


def test_routing_objects_are_admitted_by_the_published_crds_and_pruned(
    operator: OperatorProcess,
    cluster: Cluster,
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
    install_crds: Callable[[list[dict[str, Any]]], None],
) -> None:
    obj = autoscaled(None)
    obj["spec"]["routing"] = {"gateway": {"name": "inference-gateway"}}

    # No endpoint picker in the spec, none in the operator config: refused before anything is applied.
    kubectl.apply(obj, namespace=namespace)

    def refused() -> dict[str, Any] | None:
        cond = cluster.ready("inferenceservices", namespace, "chat")
        return cond if cond and cond.get("reason") == "InvalidSpec" else None

    cond = wait_until(refused, what="Ready=False, InvalidSpec")
    assert cond["status"] == "False" and "spec.routing.endpointPicker" in cond["message"], cond

    obj["spec"]["routing"]["endpointPicker"] = {"name": "chat-epp"}
    pool, route = rendered(obj, namespace, {"InferencePool", "HTTPRoute"})
    install_crds([pool, route])
    for manifest in (pool, route):
        assert_schema_enforced(cluster, manifest, namespace)

    kubectl.apply(obj, namespace=namespace)
    wait_until(lambda: stored(cluster, pool, namespace), what="InferencePool")
    wait_until(lambda: stored(cluster, route, namespace), what="HTTPRoute")
    for manifest in (pool, route):
        assert_stored_as_rendered(cluster, manifest, namespace)
    ((kept_pool,), (kept_route,)) = stored(cluster, pool, namespace), stored(cluster, route, namespace)
    deployment = cluster.apps.read_namespaced_deployment("chat", namespace)
    assert kept_pool["spec"]["selector"]["matchLabels"] == deployment.spec.selector.match_labels
    assert kept_pool["spec"]["endpointPickerRef"]["name"] == "chat-epp"
    assert kept_route["spec"]["rules"][0]["backendRefs"][0] == {
        "group": "inference.networking.k8s.io", "kind": "InferencePool", "name": "chat"}  # fmt: skip

    kubectl.apply(autoscaled(None), namespace=namespace)
    wait_until(
        lambda: not stored(cluster, pool, namespace) and not stored(cluster, route, namespace),
        timeout=REDISCOVERY_WAIT,
        what="the pool and route deleted",
    )
    assert cluster.core.read_namespaced_service("chat", namespace), "the plain Service stays"
