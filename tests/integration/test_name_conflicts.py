"""Names against a real API server: the audit's crafted name no longer meets its victim's children, and a child
name held by another resource's object or by one a person made is never written over nor deleted.

The resource that meets a taken name reads `Ready=False, reason=NameConflict` naming the child and what holds
it; the holder's objects keep their controller, spec and resourceVersion through many reconciles; once the
stray object is gone, the resource makes its children.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.helpers import ready_reason, wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess
from tuneops.render.names import bounded_name

PLURAL = "inferenceservices"


def isvc(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "pvc://models/tiny.Q4_K_M.gguf"}, "runtime": "llamacpp",
                 "resources": {"cpu": 1, "memory": "1Gi"}},
    }  # fmt: skip


def stray_deployment(name: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    """A Deployment under `name`, controlled by `owner` (an object as read), or by nothing (made by a person)."""
    meta: dict[str, Any] = {"name": name, "labels": {"app.kubernetes.io/managed-by": "tuneops"}}
    if owner is not None:
        m = owner["metadata"]
        meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": m["name"],
                                    "uid": m["uid"], "controller": True}]  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                         "spec": {"containers": [{"name": "c", "image": "registry.example/other:1"}]}},
        },
    }  # fmt: skip


def stray_service(name: str) -> dict[str, Any]:
    """A Service a person made, without tuneops' labels: the operator's informers never hold it."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": {"app": "other"}, "ports": [{"port": 80, "targetPort": 8080}]}}  # fmt: skip


def snapshot(cluster: Cluster, ns: str, kind: str, name: str) -> tuple[Any, ...]:
    """What the operator must not move: the controller, spec, generation, labels and annotations, and which
    field managers wrote it (the Deployment controller's own status writes aside)."""
    read = (
        cluster.apps.read_namespaced_deployment
        if kind == "Deployment"
        else cluster.core.read_namespaced_service
    )
    meta = read(name, ns).metadata
    refs = [(r.kind, r.name, r.uid) for r in meta.owner_references or [] if r.controller]
    managers = sorted({f.manager for f in meta.managed_fields or [] if f.subresource != "status"})
    return refs, str(read(name, ns).spec), meta.generation, meta.labels, meta.annotations, managers


def message(cluster: Cluster, ns: str, name: str) -> str:
    cond = cluster.ready(PLURAL, ns, name)
    return str((cond or {}).get("message", ""))


def test_crafted_names_and_taken_child_names(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    ns = namespace
    # The audit's pair: `llama.v2` and a service named as the literal of the dotted name's hashed child name.
    victim_children = bounded_name("llama.v2")
    crafted = victim_children
    kubectl.apply(isvc("llama.v2"), namespace=ns)
    wait_until(
        lambda: cluster.apps.read_namespaced_deployment(victim_children, ns), what="llama.v2's Deployment"
    )
    wait_until(lambda: cluster.core.read_namespaced_service(victim_children, ns), what="llama.v2's Service")
    victim = cluster.get(PLURAL, ns, "llama.v2")
    assert victim is not None
    kubectl.apply(isvc(crafted), namespace=ns)
    crafted_children = bounded_name(crafted)
    assert crafted_children != victim_children
    wait_until(
        lambda: cluster.apps.read_namespaced_deployment(crafted_children, ns), what="the crafted Deployment"
    )

    # A child name another resource holds (a Deployment controlled by llama.v2), and one a person made.
    cluster.apps.create_namespaced_deployment(ns, stray_deployment("taken", victim))
    cluster.core.create_namespaced_service(ns, stray_service("stray"))

    def annotated(name: str) -> bool:
        # The Deployment controller's first write (its revision annotation, which a 1.20 server records as a
        # manager of the object itself) comes a moment after the create: snapshot after it.
        annotations = cluster.apps.read_namespaced_deployment(name, ns).metadata.annotations or {}
        return "deployment.kubernetes.io/revision" in annotations

    for name in ("taken", victim_children, crafted_children):
        wait_until(lambda name=name: annotated(name), what=f"the Deployment controller's revision on {name}")
    held = snapshot(cluster, ns, "Deployment", "taken")
    made = snapshot(cluster, ns, "Service", "stray")
    before = {
        (kind, name): snapshot(cluster, ns, kind, name)
        for kind in ("Deployment", "Service")
        for name in (victim_children, crafted_children)
    }
    kubectl.apply([isvc("taken"), isvc("stray")], namespace=ns)
    wait_ready(cluster, PLURAL, ns, "taken", wait_until, ("False", "NameConflict"))
    wait_ready(cluster, PLURAL, ns, "stray", wait_until, ("False", "NameConflict"))
    taken_msg, stray_msg = message(cluster, ns, "taken"), message(cluster, ns, "stray")
    assert "Deployment/taken" in taken_msg and "InferenceService/llama.v2" in taken_msg, taken_msg
    assert "Service/stray" in stray_msg and "created outside tuneops" in stray_msg, stray_msg

    # Several passes later (the operator looks again every second), nothing it does not control has moved.
    start = operator.reconciles()
    wait_until(lambda: operator.reconciles() >= start + 8, timeout=40, what="more reconciles")
    assert snapshot(cluster, ns, "Deployment", "taken") == held
    assert snapshot(cluster, ns, "Service", "stray") == made
    for (kind, name), seen in before.items():
        assert snapshot(cluster, ns, kind, name) == seen, f"{kind}/{name} was written"
    assert held[0] == [("InferenceService", "llama.v2", victim["metadata"]["uid"])]
    assert "tuneops" not in held[-1] and "tuneops" not in made[-1]
    # Nothing was made for the conflicting services either: the pass stops before any write.
    names = {d.metadata.name for d in cluster.apps.list_namespaced_deployment(ns).items}
    assert names == {victim_children, crafted_children, "taken"}
    for name in ("llama.v2", crafted):
        assert ready_reason(cluster, PLURAL, ns, name) not in (None, ("False", "NameConflict"))

    # The stray Service goes: `stray` heals and makes its own children.
    kubectl("delete", "service", "stray", namespace=ns)
    wait_until(
        lambda: ready_reason(cluster, PLURAL, ns, "stray") != ("False", "NameConflict"), what="stray healed"
    )
    service = wait_until(
        lambda: cluster.core.read_namespaced_service("stray", ns), what="stray's own Service"
    )
    (ref,) = service.metadata.owner_references
    assert (ref.kind, ref.name, ref.controller) == ("InferenceService", "stray", True)
    assert ready_reason(cluster, PLURAL, ns, "taken") == ("False", "NameConflict")
