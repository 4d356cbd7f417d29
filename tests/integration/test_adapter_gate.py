"""The adapters readiness gate on the real API server, with the operator as a subprocess: a serving Pod gets
traffic (Ready) only once its server lists every adapter the service serves.

Two replicas behind fake vLLM servers; the test plays kubelet and honours readiness gates as a kubelet does.
One replica's server cannot load an adapter the other serves: the operator opens the gate of the good one and
keeps the other's closed, saying why. When the good one's server restarts (its containers turn unready), the
gate closes at once, before the server could be ready again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from tests.integration.operator_bed import Cluster, OperatorProcess
from tests.security import vllm_fakes as fake
from tuneops.adapters.gate import GATE
from tuneops.render.serving.types import PORT

_NET = os.getpid() % 250 + 1
PREFIX = f"127.82.{_NET}."
SELECTOR = "app.kubernetes.io/instance=gated,app.kubernetes.io/component=server"


def refuses(name: str, state: dict[str, str]) -> fake.Behaviour:
    return fake.fails_to_load(name, 500, "CUDA out of memory while loading the adapter", state)


def kubelet(cluster: Cluster, ns: str, pod: Any, ip: str, containers_ready: bool) -> None:
    """The status a kubelet reports: ContainersReady as told, Ready only with every readiness gate True."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    have = {c.type: c.status for c in pod.status.conditions or []}
    gates = [g.condition_type for g in pod.spec.readiness_gates or []]
    ready = containers_ready and all(have.get(g) == "True" for g in gates)
    conditions = [
        {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
        {"type": "Initialized", "status": "True", "lastTransitionTime": now},
        {"type": "ContainersReady", "status": str(containers_ready), "lastTransitionTime": now},
        {"type": "Ready", "status": str(ready), "lastTransitionTime": now},
    ]
    status = {
        "phase": "Running",
        "podIP": ip,
        "conditions": conditions,
        "containerStatuses": [
            {"name": c.name, "image": c.image, "imageID": "", "ready": containers_ready, "restartCount": 0,
             "started": True, "state": {"running": {"startedAt": now}}}
            for c in pod.spec.containers
        ],
    }  # fmt: skip
    # strategic merge (conditions by type), as a kubelet sends it: the gate's condition is left to its owner
    cluster.core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": status})


def gate_of(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    pod = cluster.core.read_namespaced_pod_status(name, ns)
    for c in pod.status.conditions or []:
        if c.type == GATE:
            return {"status": c.status, "reason": c.reason, "message": c.message}
    return {}


def test_a_replica_gets_traffic_only_once_it_serves_every_adapter(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    adapters = [{"name": "a", "uri": "pvc://adapters/a"}, {"name": "b", "uri": "pvc://adapters/b"}]
    svc = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "gated"},
        "spec": {"model": {"uri": "pvc://models/base"}, "replicas": 2, "lora": {"adapters": adapters}},
    }
    kubectl.apply(svc, namespace=namespace)
    pods = wait_until(
        lambda: (
            (items := cluster.core.list_namespaced_pod(namespace, label_selector=SELECTOR).items)
            and len(items) == 2
            and items
        ),
        timeout=40,
        what="two serving Pods",
    )
    pods = sorted(pods, key=lambda p: p.metadata.name)
    assert all(any(g.condition_type == GATE for g in p.spec.readiness_gates or []) for p in pods)
    good_ip, bad_ip = f"{PREFIX}10", f"{PREFIX}11"
    good_state: dict[str, str] = {}
    bad_state: dict[str, str] = {}
    good, bad = (p.metadata.name for p in pods)
    with (
        fake.FakePod(fake.well_behaved(good_state), host=good_ip, port=PORT),
        fake.FakePod(refuses("b", bad_state), host=bad_ip, port=PORT),
    ):
        for p, ip in zip(pods, (good_ip, bad_ip), strict=True):
            kubelet(cluster, namespace, p, ip, containers_ready=True)
        wait_until(lambda: gate_of(cluster, namespace, good).get("status") == "True", timeout=40,
                   what="the gate of the replica that serves both adapters")  # fmt: skip
        assert gate_of(cluster, namespace, good)["reason"] == "AdaptersServed"
        assert good_state == {"a": "/mnt/pvc/adapters/a", "b": "/mnt/pvc/adapters/b"}
        closed = wait_until(
            lambda: (g := gate_of(cluster, namespace, bad)).get("reason") == "AdapterFailed" and g,
            timeout=40,
            what="the other replica's gate closed on the adapter it cannot load",
        )
        assert closed["status"] == "False"
        assert "b" in closed["message"] and "out of memory" in closed["message"], closed
        # the kubelet, reading the gates: the good replica is Ready, the other is not
        for p, ip in zip(pods, (good_ip, bad_ip), strict=True):
            kubelet(
                cluster, namespace, cluster.core.read_namespaced_pod(p.metadata.name, namespace), ip, True
            )
        ready = {
            p.metadata.name: next(c.status for c in p.status.conditions if c.type == "Ready")
            for p in cluster.core.list_namespaced_pod(namespace, label_selector=SELECTOR).items
        }
        assert ready == {good: "True", bad: "False"}

        # The good replica's server restarts: its containers turn unready and the gate closes at once.
        kubelet(cluster, namespace, cluster.core.read_namespaced_pod(good, namespace), good_ip, False)
        wait_until(lambda: gate_of(cluster, namespace, good).get("reason") == "ServerNotReady", timeout=20,
                   what="the restarted replica's gate closed")  # fmt: skip
        assert gate_of(cluster, namespace, good)["status"] == "False"
