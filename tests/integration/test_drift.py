"""A hand edit to what the operator sets on a child is undone within seconds, on the real API server, and a
settled operator (a restarted one too) still writes nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from kubernetes import client

from tests.integration.operator_bed import Cluster, OperatorProcess
from tests.integration.test_event_driven import SLOW, requests, settle

REVERT_S = 10.0


def lora_isvc(name: str) -> dict[str, Any]:
    """A vLLM service with runtime LoRA and no API key (so a NetworkPolicy guards it), on two replicas (a PDB)."""
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": "pvc://models/base"},
            "replicas": 2,
            "lora": {"adapters": [{"name": "a0", "uri": "pvc://adapters/a0"}]},
        },
    }


def writes_since(audit_log: Any, mark: int, user: str, namespace: str) -> list[tuple[str, str, str]]:
    seen = requests(audit_log, mark, user, namespace)
    return [(e.verb, e.resource, e.name) for e in seen if e.verb not in ("get", "list")]


def container(deployment: Any) -> Any:
    return deployment.spec.template.spec.containers[0]


def test_hand_edits_are_undone_and_a_settled_operator_writes_nothing(
    start_operator: Callable[..., OperatorProcess], cluster: Cluster, kubectl: Any, namespace: str,
    wait_until: Callable[..., Any], audit_log: Any, operator_user: str,
) -> None:  # fmt: skip
    op = start_operator(**SLOW)
    op.wait_serving()
    kubectl.apply(lora_isvc("d"), namespace=namespace)
    apps, net = cluster.apps, client.NetworkingV1Api(cluster.api)
    deployment = wait_until(lambda: apps.list_namespaced_deployment(namespace).items, what="Deployment")[0]
    name = deployment.metadata.name
    policy = wait_until(lambda: net.list_namespaced_network_policy(namespace).items, what="NetworkPolicy")[0]
    settle(op)

    # Settled: nothing is written, whatever the resync or the Deployment controller do meanwhile.
    mark = audit_log.mark()
    time.sleep(4)
    assert writes_since(audit_log, mark, operator_user, namespace) == []

    original = apps.read_namespaced_deployment(name, namespace)
    c = container(original)
    env = next(e for e in c.env or [] if e.value is not None)
    want_policy = net.read_namespaced_network_policy(policy.metadata.name, namespace).spec.to_dict()

    def reverted(what: str, check: Callable[[], bool]) -> None:
        start = time.monotonic()
        wait_until(check, timeout=REVERT_S, what=f"{what} reverted")
        print(f"{what}: reverted in {time.monotonic() - start:.2f} s")

    def patch_container(body: dict[str, Any]) -> None:
        apps.patch_namespaced_deployment(
            name, namespace, {"spec": {"template": {"spec": {"containers": [{"name": c.name, **body}]}}}}
        )

    patch_container({"image": "registry.example/evil:1"})
    reverted("image", lambda: container(apps.read_namespaced_deployment(name, namespace)).image == c.image)

    patch_container({"env": [{"name": env.name, "value": "forged"}]})
    reverted("env", lambda: {e.name: e.value for e in container(apps.read_namespaced_deployment(name, namespace)).env}
             .get(env.name) == env.value)  # fmt: skip

    patch_container({"args": ["--evil"]})
    reverted("args", lambda: container(apps.read_namespaced_deployment(name, namespace)).args == c.args)

    apps.patch_namespaced_deployment(
        name, namespace, {"spec": {"template": {"spec": {"serviceAccountName": "admin"}}}}
    )
    reverted("serviceAccountName", lambda: apps.read_namespaced_deployment(name, namespace).spec.template.spec
             .service_account_name == "default")  # fmt: skip

    # Opened: one rule that admits everything, in place of the operator's rules.
    net.patch_namespaced_network_policy(policy.metadata.name, namespace, {"spec": {"ingress": [{}]}})
    reverted("NetworkPolicy rules", lambda: net.read_namespaced_network_policy(policy.metadata.name, namespace)
             .spec.to_dict() == want_policy)  # fmt: skip

    # Undone, and settled again: nothing more is written.
    settle(op)
    mark = audit_log.mark()
    time.sleep(4)
    assert writes_since(audit_log, mark, operator_user, namespace) == []
    op.stop()

    # A restarted operator (no memory of its applies) compares every child and finds nothing to write.
    mark = audit_log.mark()
    second = start_operator(**SLOW)
    second.wait_serving()
    wait_until(lambda: second.reconciles() >= 1, timeout=30, what="the restarted operator's first pass")
    settle(second)
    assert writes_since(audit_log, mark, operator_user, namespace) == []
