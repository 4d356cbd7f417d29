"""Ready and phase describe the Pods that serve, on the real API server with the operator as a subprocess.

- One adapter that fails to load, beside a base model and an adapter that serve: Ready=True with reason
  Degraded, the Degraded condition names the adapter's failure and how to retry, the phase is Ready (never
  Failed), and the Event is a Warning.
- A rollout whose new Pods crash-loop while the old ones serve: Ready=True with reason Degraded, Degraded names
  CrashLoopBackOff, never Ready=True/Succeeded over the broken Pods.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from tests.integration.helpers import wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess, mark_pods_ready
from tests.security import vllm_fakes as fake
from tuneops.render.serving.types import PORT

_NET = os.getpid() % 250 + 1
PREFIX = f"127.81.{_NET}."


def one_adapter_fails(state: dict[str, str]) -> fake.Behaviour:
    """A vLLM server on which adapter `bad` fails to load (vLLM's own error); everything else loads."""
    return fake.fails_to_load("bad", 400, "LoRA rank 64 is greater than max_lora_rank 16.", state)


def conditions(cluster: Cluster, ns: str, name: str) -> dict[str, dict[str, Any]]:
    obj = cluster.get("inferenceservices", ns, name) or {}
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or []}


def test_a_failing_adapter_leaves_a_serving_service_ready_and_degraded(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    adapters = [{"name": "good", "uri": "pvc://adapters/good"}, {"name": "bad", "uri": "pvc://adapters/bad"}]
    svc = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "mixed"},
        "spec": {"model": {"uri": "pvc://models/base"}, "lora": {"adapters": adapters}},
    }
    state: dict[str, str] = {}
    with fake.FakePod(one_adapter_fails(state), host=f"{PREFIX}10", port=PORT):
        kubectl.apply(svc, namespace=namespace)
        selector = "app.kubernetes.io/instance=mixed,app.kubernetes.io/component=server"
        wait_until(lambda: cluster.core.list_namespaced_pod(namespace, label_selector=selector).items,
                   timeout=40, what="the serving Pod")  # fmt: skip
        mark_pods_ready(cluster, namespace, selector, ip_prefix=PREFIX)
        wait_ready(
            cluster, "inferenceservices", namespace, "mixed", wait_until, ("True", "Degraded"), timeout=60
        )
        conds = conditions(cluster, namespace, "mixed")
        assert conds["Degraded"]["status"] == "True" and conds["Degraded"]["reason"] == "AdapterLoadFailed"
        assert (
            "max_lora_rank" in conds["Degraded"]["message"]
            and "tuneops.io/refresh" in conds["Degraded"]["message"]
        )
        assert conds["Available"]["status"] == "True"
        obj = cluster.get("inferenceservices", namespace, "mixed") or {}
        assert obj["status"]["phase"] == "Ready", obj["status"]["phase"]
        assert state == {"good": "/mnt/pvc/adapters/good"}, "the base and the good adapter serve"
        events = cluster.core.list_namespaced_event(
            namespace, field_selector="involvedObject.name=mixed"
        ).items
        assert any(e.type == "Warning" and e.reason == "Degraded" for e in events), [
            (e.type, e.reason) for e in events
        ]


def test_a_rollout_whose_new_pods_crash_is_not_called_succeeded(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    svc = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "edge"},
        "spec": {"model": {"uri": "pvc://models/tiny.Q4_K_M.gguf"}, "runtime": "llamacpp", "replicas": 2},
    }
    kubectl.apply(svc, namespace=namespace)
    selector = "app.kubernetes.io/instance=edge,app.kubernetes.io/component=server"
    wait_until(lambda: len(cluster.core.list_namespaced_pod(namespace, label_selector=selector).items) == 2,
               timeout=40, what="two serving Pods")  # fmt: skip
    mark_pods_ready(cluster, namespace, selector)
    wait_ready(cluster, "inferenceservices", namespace, "edge", wait_until, timeout=60)

    # A new revision (a refresh rolls the Pods); its first Pod crash-loops while the old ones serve.
    kubectl("annotate", "--overwrite", "tisvc", "edge", "tuneops.io/refresh=1", namespace=namespace)

    def new_pods() -> list[Any]:
        pods = cluster.core.list_namespaced_pod(namespace, label_selector=selector).items
        return [p for p in pods if (p.metadata.annotations or {}).get("tuneops.io/refresh") == "1"]

    wait_until(new_pods, timeout=40, what="a Pod of the new revision")
    pod = new_pods()[0]
    c = pod.spec.containers[0]
    crash = {
        "phase": "Running",
        "podIP": "10.0.0.99",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{
            "name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 4,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container"}},
            "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                         "message": "error: failed to load model '/models/tiny.Q4_K_M.gguf'"}},
        }],
    }  # fmt: skip
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": crash})
    wait_ready(cluster, "inferenceservices", namespace, "edge", wait_until, ("True", "Degraded"), timeout=60)
    conds = conditions(cluster, namespace, "edge")
    assert conds["Degraded"]["reason"] == "CrashLoopBackOff", conds["Degraded"]
    assert "failed to load model" in conds["Degraded"]["message"]
    obj = cluster.get("inferenceservices", namespace, "edge") or {}
    assert obj["status"]["phase"] == "Ready"
