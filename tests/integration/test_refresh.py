"""New weights under the same adapter URI: the tuneops.io/refresh annotation reads the adapter again; a new
digest re-merges, the same digest does not."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from tests.integration.helpers import ADAPTER_RESULT, complete, ftm, job_named, merge_result, wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess

STEP = "app.kubernetes.io/component"


def _names(cluster: Cluster, ns: str, step: str) -> set[str]:
    return {j.metadata.name for j in cluster.jobs(ns) if (j.metadata.labels or {}).get(STEP) == step}


def _refresh(kubectl: Any, ns: str, value: str) -> None:
    kubectl("annotate", "--overwrite", "ftm", "m", f"tuneops.io/refresh={value}", namespace=ns)


def test_a_refresh_reinspects_and_a_new_digest_remerges(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(ftm("m"), namespace=namespace)
    first_inspect = job_named(cluster, namespace, "inspect", wait_until).metadata.name
    complete(cluster, namespace, first_inspect, ADAPTER_RESULT, wait_until)
    first_merge = job_named(cluster, namespace, "merge", wait_until).metadata.name
    complete(cluster, namespace, first_merge, merge_result(namespace), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until)

    # Same weights: a new inspect Job, the same digest, no new merge.
    _refresh(kubectl, namespace, "1")
    wait_until(
        lambda: len(_names(cluster, namespace, "inspect")) == 2, timeout=30, what="a second inspect Job"
    )
    [second] = _names(cluster, namespace, "inspect") - {first_inspect}
    complete(cluster, namespace, second, ADAPTER_RESULT, wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until)
    time.sleep(3)
    assert _names(cluster, namespace, "merge") == {first_merge}

    # New weights: the next refresh finds a new digest, which gives a new merge Job.
    new_weights = copy.deepcopy(ADAPTER_RESULT)
    new_weights["adapter"]["digest"] = "sha256:adapter2"  # type: ignore[index]
    _refresh(kubectl, namespace, "2")
    wait_until(
        lambda: len(_names(cluster, namespace, "inspect")) == 3, timeout=30, what="a third inspect Job"
    )
    [third] = _names(cluster, namespace, "inspect") - {first_inspect, second}
    complete(cluster, namespace, third, new_weights, wait_until)
    wait_until(lambda: len(_names(cluster, namespace, "merge")) == 2, timeout=30, what="a second merge Job")
    [remerge] = _names(cluster, namespace, "merge") - {first_merge}
    complete(cluster, namespace, remerge, merge_result(namespace, "sha256:merged2"), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40)
    obj = cluster.get("finetunedmodels", namespace, "m")
    assert obj is not None
    assert obj["status"]["adapterDigest"] == "sha256:adapter2"
    assert obj["status"]["artifact"]["digest"] == "sha256:merged2"


def _gguf_qjob(name: str, gate: float | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"source": {"uri": "pvc://models/merged"}, "method": "gguf",
                            "gguf": {"quantTypes": ["Q4_K_M"]}}  # fmt: skip
    if gate is not None:
        spec["qualityGate"] = {"maxPerplexityIncreasePct": gate}
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "QuantizationJob",
        "metadata": {"name": name},
        "spec": spec,
    }


def _fail(cluster: Cluster, ns: str, job: str, wait_until: Callable[..., Any], message: str) -> None:
    # backoffLimit 1: the Job controller retries once, then marks the Job Failed.
    for _ in range(2):
        wait_until(lambda: cluster.finish_pod(ns, job, {"error": message}, 1, "Error"), timeout=30,
                   what=f"a Pod of {job}")  # fmt: skip


def test_a_refresh_retries_a_failed_quantizationjob_step_and_only_that(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """The second-clone demo: the GGUF quality gate failed (ModuleNotFoundError); once the cause is fixed,
    setting tuneops.io/refresh retries the failed evaluate step without a spec change, and does not re-run the
    quantize step that succeeded."""
    kubectl.apply(_gguf_qjob("q", gate=50), namespace=namespace)
    quantize = job_named(cluster, namespace, "quantize", wait_until).metadata.name
    complete(cluster, namespace, quantize,
             {"artifact": {"uri": f"pvc://artifacts/{namespace}/q", "digest": "sha256:q", "format": "gguf",
                           "files": ["q-Q4_K_M.gguf"]}}, wait_until)  # fmt: skip
    evaluate = job_named(cluster, namespace, "evaluate", wait_until).metadata.name
    _fail(cluster, namespace, evaluate, wait_until, "ModuleNotFoundError: No module named 'llama_cpp'")
    wait_ready(cluster, "quantizationjobs", namespace, "q", wait_until, ("False", "JobFailed"), timeout=40)
    message = cluster.ready("quantizationjobs", namespace, "q")["message"]  # type: ignore[index]
    assert "llama_cpp" in message and "tuneops.io/refresh" in message, message
    time.sleep(3)
    assert _names(cluster, namespace, "evaluate") == {evaluate}, "no retry without a refresh"

    kubectl("annotate", "--overwrite", "qjob", "q", "tuneops.io/refresh=1", namespace=namespace)
    wait_until(
        lambda: len(_names(cluster, namespace, "evaluate")) == 2, timeout=30, what="a retried evaluate"
    )
    [retry] = _names(cluster, namespace, "evaluate") - {evaluate}
    job = next(j for j in cluster.jobs(namespace) if j.metadata.name == retry)
    assert job.metadata.annotations["tuneops.io/retry-of"] == evaluate
    env = {e.name: e.value for e in job.spec.template.spec.containers[0].env}
    assert env["TUNEOPS_JOB_NAME"] == retry
    metrics = {"perplexity": 11.5, "referencePerplexity": 11.0, "increasePct": 4.5}
    complete(cluster, namespace, retry, {"metrics": metrics, "passed": True}, wait_until)
    wait_ready(cluster, "quantizationjobs", namespace, "q", wait_until, timeout=40)
    assert _names(cluster, namespace, "quantize") == {quantize}, "the step that succeeded is not re-run"

    # A later refresh value re-runs nothing that succeeded.
    kubectl("annotate", "--overwrite", "qjob", "q", "tuneops.io/refresh=2", namespace=namespace)
    time.sleep(4)
    assert _names(cluster, namespace, "evaluate") == {evaluate, retry}
    assert _names(cluster, namespace, "quantize") == {quantize}
    wait_ready(cluster, "quantizationjobs", namespace, "q", wait_until)


def test_a_refresh_on_an_inferenceservice_rolls_its_pods(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """The same annotation retries what failed in a service's Pods (a crash whose cause is fixed, adapters that
    failed to load): a new value rolls the Pods, as `kubectl rollout restart` would, and nothing else changes."""
    obj = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "edge"},
        "spec": {"model": {"uri": "pvc://models/tiny.Q4_K_M.gguf"}, "runtime": "llamacpp"},
    }
    kubectl.apply(obj, namespace=namespace)

    def template() -> dict[str, str]:
        d = cluster.apps.read_namespaced_deployment("edge", namespace)
        return dict(d.spec.template.metadata.annotations or {})

    wait_until(lambda: cluster.apps.list_namespaced_deployment(namespace).items, what="Deployment")
    before = cluster.apps.read_namespaced_deployment("edge", namespace).spec.template.spec.to_dict()
    assert "tuneops.io/refresh" not in template()
    kubectl("annotate", "--overwrite", "tisvc", "edge", "tuneops.io/refresh=r1", namespace=namespace)
    wait_until(lambda: template().get("tuneops.io/refresh") == "r1", timeout=30, what="the Pods rolled")
    after = cluster.apps.read_namespaced_deployment("edge", namespace).spec.template.spec.to_dict()
    assert after == before, "only the template's annotation changes"
