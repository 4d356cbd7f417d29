"""The operator against hostile vLLM Pods: another service still becomes Ready, and the operator stays small.

Three InferenceServices with adapters run on the local API server with the operator as a subprocess; this test plays
kubelet and their Pods: one Pod answers a 400 MiB model list (and 400 MiB to anything else), one never answers,
the third is a well-behaved vLLM runtime LoRA API. Both listen on loopback addresses of their own, on the serving port.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bench.scale import peak_rss_mb

from tests.integration.helpers import wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess, mark_pods_ready
from tests.security import vllm_fakes as fake
from tuneops import labels
from tuneops.render.serving.types import PORT

# the address mark_pods_ready gives a service's first Pod is <prefix>10
_NET = os.getpid() % 250 + 1
PREFIX = {"stalled": f"127.80.{_NET}.", "hostile": f"127.78.{_NET}.", "good": f"127.79.{_NET}."}


def lora_isvc(name: str) -> dict[str, Any]:
    adapters = [{"name": f"{name}-a{i}", "uri": f"pvc://adapters/{name}-a{i}"} for i in range(3)]
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "pvc://models/base"}, "lora": {"adapters": adapters}},
    }


def test_a_hostile_pod_costs_neither_memory_nor_other_services(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    with (
        fake.FakePod(fake.huge_everything(), host=f"{PREFIX['hostile']}10", port=PORT) as hostile,
        fake.FakePod(fake.stall(), host=f"{PREFIX['stalled']}10", port=PORT) as stalled,
        fake.FakePod(fake.well_behaved(), host=f"{PREFIX['good']}10", port=PORT),
    ):
        for name in ("stalled", "hostile", "good"):
            kubectl.apply(lora_isvc(name), namespace=namespace)
        # the stalled one first: its pass holds one of the operator's handler threads while the others run
        for name, prefix in PREFIX.items():
            selector = f"app.kubernetes.io/instance={name},app.kubernetes.io/component=server"
            wait_until(lambda s=selector: cluster.core.list_namespaced_pod(namespace, label_selector=s).items,
                       timeout=40, what=f"{name} Pods")  # fmt: skip
            mark_pods_ready(cluster, namespace, selector, ip_prefix=prefix)
            if name == "stalled":
                wait_until(
                    lambda: stalled.hits.get("/v1/models"), timeout=40, what="a pass on the stalled Pod"
                )

        wait_ready(cluster, "inferenceservices", namespace, "good", wait_until, timeout=60)
        wait_ready(cluster, "inferenceservices", namespace, "hostile", wait_until, ("False", "AdaptersLoading"),
                   timeout=60)  # fmt: skip
        assert hostile.hits.get("/v1/models")
        status = cluster.get("inferenceservices", namespace, "hostile")["status"]  # type: ignore[index]
        adapters_ready = next(c for c in status["conditions"] if c["type"] == "AdaptersReady")
        assert adapters_ready["reason"] == "PodUnreachable"
        assert "over the 1048576-byte limit" in adapters_ready["message"]
        assert len(adapters_ready["message"]) < 600
        (problem,) = status["pods"]
        assert problem["message"].startswith("unreachable:") and len(problem["message"]) <= 200

        # the stalled service's handler returned long before its pass's deadline, saying so
        wait_until(lambda: "no answer yet" in str(cluster.get("inferenceservices", namespace, "stalled")),
                   timeout=40, what="the stalled service reported while its pass runs")  # fmt: skip
        good = cluster.get("inferenceservices", namespace, "good")["status"]  # type: ignore[index]
        assert {a["name"]: a["readyPods"] for a in good["adapters"]} == {f"good-a{i}": 1 for i in range(3)}
        assert "pods" not in good
        # the operator writes nothing on Pods: what they serve is asked of their servers
        pods: list[Any] = cluster.core.list_namespaced_pod(namespace).items
        assert all(labels.ADAPTER_MEMORY not in (p.metadata.annotations or {}) for p in pods)
    assert operator.proc is not None
    rss = peak_rss_mb(operator.proc.pid)
    print(f"operator peak RSS against a 400 MiB answer: {rss:.0f} MB")
    assert rss < 250
