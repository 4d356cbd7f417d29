"""InferenceService against a real API server: waits for its source, owns Deployment + Service, reports
availability and the URL, rolls when the upstream digest changes, refuses what cannot be served."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.helpers import complete, job_named, ready_reason, wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess, mark_pods_ready


def gguf_qjob() -> dict[str, Any]:
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "QuantizationJob",
        "metadata": {"name": "q"},
        "spec": {
            "source": {"uri": "pvc://models/merged"},
            "method": "gguf",
            "gguf": {"quantTypes": ["Q4_K_M"]},
        },
    }


def llamacpp_isvc() -> dict[str, Any]:
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "edge"},
        "spec": {"model": {"quantizationJobRef": {"name": "q"}}, "runtime": "llamacpp",
                 "resources": {"cpu": 2, "memory": "4Gi"}},
    }  # fmt: skip


def test_service_waits_for_its_quantization_then_serves_and_rolls_on_a_new_digest(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(llamacpp_isvc(), namespace=namespace)
    wait_until(
        lambda: (
            ready_reason(cluster, "inferenceservices", namespace, "edge") == ("False", "WaitingForSource")
        ),
        what="waiting",
    )
    assert not cluster.apps.list_namespaced_deployment(namespace).items

    kubectl.apply(gguf_qjob(), namespace=namespace)
    quantize = job_named(cluster, namespace, "quantize", wait_until)
    artifact = {"uri": f"pvc://artifacts/{namespace}/q", "digest": "sha256:first", "sizeBytes": 10, "format": "gguf",
                "files": ["model-Q4_K_M.gguf"]}  # fmt: skip
    complete(cluster, namespace, quantize.metadata.name, {"artifact": artifact}, wait_until)

    deployment = wait_until(
        lambda: cluster.apps.list_namespaced_deployment(namespace).items, what="Deployment"
    )[0]
    ref = deployment.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.controller) == ("InferenceService", "edge", True)
    service = wait_until(lambda: cluster.core.list_namespaced_service(namespace).items, what="Service")[0]
    assert service.metadata.owner_references[0].name == "edge"
    args = deployment.spec.template.spec.containers[0].args
    assert any("model-Q4_K_M.gguf" in a for a in args), args
    wait_ready(cluster, "inferenceservices", namespace, "edge", wait_until, ("False", "Deploying"))

    selector = ",".join(f"{k}={v}" for k, v in deployment.spec.selector.match_labels.items())
    wait_until(
        lambda: cluster.core.list_namespaced_pod(namespace, label_selector=selector).items, what="Pods"
    )
    mark_pods_ready(cluster, namespace, selector)
    wait_ready(cluster, "inferenceservices", namespace, "edge", wait_until, timeout=40)
    status = cluster.get("inferenceservices", namespace, "edge")["status"]  # type: ignore[index]
    assert status["url"] == f"http://edge.{namespace}.svc.cluster.local:8000/v1"
    assert status["readyReplicas"] == 1 and status["modelDigest"] == "sha256:first"
    assert status["selector"] == selector or set(status["selector"].split(",")) == set(selector.split(","))
    generation = deployment.metadata.generation

    # A new upstream artifact digest rolls the Pods (the pod template changes).
    obj = cluster.get("quantizationjobs", namespace, "q")
    assert obj is not None
    cluster.custom.patch_namespaced_custom_object_status(
        "tuneops.io", "v1alpha1", namespace, "quantizationjobs", "q",
        {"status": {"artifact": {**artifact, "digest": "sha256:second"}}},
    )  # fmt: skip
    wait_until(lambda: cluster.apps.read_namespaced_deployment("edge", namespace).metadata.generation > generation,
               timeout=40, what="a new Deployment generation")  # fmt: skip
    wait_until(lambda: cluster.get("inferenceservices", namespace, "edge")["status"].get("modelDigest") == "sha256:second",  # type: ignore[index]
               timeout=40, what="the new digest in status")  # fmt: skip


def test_scale_subresource_drives_replicas(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    obj = llamacpp_isvc()
    obj["spec"]["model"] = {"uri": "pvc://models/tiny.Q4_K_M.gguf"}
    kubectl.apply(obj, namespace=namespace)
    wait_until(lambda: cluster.apps.list_namespaced_deployment(namespace).items, what="Deployment")
    kubectl("scale", "tisvc/edge", "--replicas=3", namespace=namespace)
    wait_until(
        lambda: cluster.apps.read_namespaced_deployment("edge", namespace).spec.replicas == 3,
        what="3 replicas",
    )


def test_service_problem_is_reported_and_nothing_is_deployed(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    obj = llamacpp_isvc()
    obj["spec"]["model"] = {"uri": "pvc://models/merged-folder"}  # no GGUF file named
    kubectl.apply(obj, namespace=namespace)
    wait_ready(cluster, "inferenceservices", namespace, "edge", wait_until, ("False", "InvalidSpec"))
    assert "spec.model" in cluster.ready("inferenceservices", namespace, "edge")["message"]  # type: ignore[index]
    assert not cluster.apps.list_namespaced_deployment(namespace).items


def test_cross_namespace_reference_is_refused(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    obj = llamacpp_isvc()
    obj["spec"]["model"] = {"quantizationJobRef": {"name": "q", "namespace": "kube-system"}}
    kubectl.apply(obj, namespace=namespace)
    wait_ready(cluster, "inferenceservices", namespace, "edge", wait_until, ("False", "InvalidSpec"))
    assert "cross-namespace" in cluster.ready("inferenceservices", namespace, "edge")["message"]  # type: ignore[index]
