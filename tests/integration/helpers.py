"""What the operator tests share: sample resources, worker results, and playing kubelet for the operator's Jobs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.integration.operator_bed import Cluster

# The inspect step's result for a compatible rank-8 adapter.
ADAPTER_RESULT = {
    "adapter": {
        "type": "LORA",
        "rank": 8,
        "alpha": 16,
        "rsLora": False,
        "targetModules": ["q_proj", "v_proj"],
        "baseModelName": "tiny-llama",
        "digest": "sha256:adapter1",
    },
    "problems": [],
}


def merge_result(ns: str, digest: str = "sha256:merged1") -> dict[str, Any]:
    return {
        "artifact": {
            "uri": f"pvc://artifacts/{ns}/m",
            "digest": digest,
            "sizeBytes": 1234,
            "format": "safetensors",
        }
    }


def ftm(name: str, merge: bool = True, dtype: str = "float16") -> dict[str, Any]:
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "FineTunedModel",
        "metadata": {"name": name},
        "spec": {
            "baseModel": {"uri": "pvc://models/tiny-llama"},
            "adapter": {"uri": "pvc://models/adapter-a"},
            "merge": {"enabled": merge, "dtype": dtype},
        },
    }


def qjob(name: str, source: str, gate: float | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"fineTunedModelRef": {"name": source}}, "method": "gguf",
                            "gguf": {"quantTypes": ["Q4_K_M"]}}  # fmt: skip
    if gate is not None:
        spec["qualityGate"] = {"maxPerplexityIncreasePct": gate}
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "QuantizationJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def job_named(
    cluster: Cluster, ns: str, step: str, wait: Callable[..., Any], owner: str | None = None
) -> Any:
    def find() -> Any:
        for job in cluster.jobs(ns):
            labels = job.metadata.labels or {}
            if labels.get("app.kubernetes.io/component") == step and (
                owner is None or labels.get("app.kubernetes.io/instance") == owner
            ):
                return job
        return None

    return wait(find, timeout=30, what=f"{step} Job")


def ready_reason(cluster: Cluster, plural: str, ns: str, name: str) -> tuple[str, str] | None:
    cond = cluster.ready(plural, ns, name)
    return (cond["status"], cond["reason"]) if cond else None


def wait_ready(
    cluster: Cluster,
    plural: str,
    ns: str,
    name: str,
    wait: Callable[..., Any],
    want: tuple[str, str] = ("True", "Succeeded"),
    timeout: float = 30,
    what: str = "",
) -> None:
    """Wait until the resource's Ready condition is `want` (status, reason)."""
    wait(
        lambda: ready_reason(cluster, plural, ns, name) == want,
        timeout=timeout,
        what=what or f"{plural}/{name} Ready={want[0]} ({want[1]})",
    )


def complete(cluster: Cluster, ns: str, job: str, result: dict[str, Any], wait: Callable[..., Any]) -> None:
    wait(lambda: cluster.finish_pod(ns, job, result), timeout=30, what=f"a Pod of {job}")
