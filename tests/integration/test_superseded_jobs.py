"""A step's Job replaced while it runs: the superseded Job is deleted and only the Job of the current spec
writes the output; a worker Pod OOMKilled on a server without podFailurePolicy is retried up to backoffLimit
by the Job controller, then never re-created by the operator."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.integration.helpers import ADAPTER_RESULT, complete, ftm, job_named, merge_result, wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess

STEP = "app.kubernetes.io/component"


def _merge_jobs(cluster: Cluster, ns: str) -> list[Any]:
    return [j for j in cluster.jobs(ns) if (j.metadata.labels or {}).get(STEP) == "merge"]


def _step_job(cluster: Cluster, ns: str, step: str) -> str | None:
    obj = cluster.get("finetunedmodels", ns, "m") or {}
    for entry in (obj.get("status") or {}).get("steps") or []:
        if entry.get("name") == step:
            return str(entry.get("job"))
    return None


def _merge_running(
    cluster: Cluster, kubectl: Any, ns: str, wait_until: Callable[..., Any]
) -> tuple[str, str]:
    """A FineTunedModel whose adapter was inspected and whose merge Pod runs: the inspect and merge Jobs."""
    kubectl.apply(ftm("m"), namespace=ns)
    inspect = job_named(cluster, ns, "inspect", wait_until).metadata.name
    complete(cluster, ns, inspect, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, ns, "merge", wait_until).metadata.name
    wait_until(lambda: cluster.run_pod(ns, merge), timeout=30, what="the merge Pod running")
    wait_ready(cluster, "finetunedmodels", ns, "m", wait_until, ("False", "JobRunning"))
    return inspect, merge


def test_a_spec_change_mid_run_deletes_the_superseded_job(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    inspect, old = _merge_running(cluster, kubectl, namespace, wait_until)

    cluster.patch_spec("finetunedmodels", namespace, "m", {"merge": {"dtype": "bfloat16"}})
    wait_until(lambda: [j.metadata.name for j in _merge_jobs(cluster, namespace)] not in ([], [old]),
               timeout=30, what="the new merge Job")  # fmt: skip
    wait_until(lambda: old not in {j.metadata.name for j in _merge_jobs(cluster, namespace)},
               timeout=30, what="the superseded merge Job deleted")  # fmt: skip
    [new] = _merge_jobs(cluster, namespace)
    assert new.metadata.name != old and "bfloat16" in new.spec.template.spec.containers[0].args
    wait_until(lambda: not cluster.job_pods(namespace, old), timeout=60, what="the superseded Job's Pod gone")
    # The inspect Job, finished, is not the merge step's: it stays.
    assert inspect in {j.metadata.name for j in cluster.jobs(namespace)}

    complete(cluster, namespace, new.metadata.name, merge_result(namespace, "sha256:m2"), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40)
    assert _step_job(cluster, namespace, "merge") == new.metadata.name
    obj = cluster.get("finetunedmodels", namespace, "m")
    assert obj is not None and obj["status"]["artifact"]["digest"] == "sha256:m2"
    assert [j.metadata.name for j in _merge_jobs(cluster, namespace)] == [new.metadata.name]


def test_disabling_the_merge_mid_run_deletes_the_merge_job(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    _merge_running(cluster, kubectl, namespace, wait_until)

    cluster.patch_spec("finetunedmodels", namespace, "m", {"merge": {"enabled": False}})
    wait_until(lambda: not _merge_jobs(cluster, namespace), timeout=30, what="the merge Job deleted")


def test_an_oomkilled_job_is_retried_up_to_its_backoff_limit_then_never_recreated(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(ftm("m"), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, namespace, "merge", wait_until)
    # This API server (1.20) has no podFailurePolicy, so the operator renders none.
    assert getattr(merge.spec, "pod_failure_policy", None) is None
    name, limit = merge.metadata.name, merge.spec.backoff_limit
    assert limit == 1
    for _ in range(limit + 1):
        wait_until(lambda: cluster.finish_pod(namespace, name, {}, 137, "OOMKilled"), timeout=30,
                   what="a merge Pod")  # fmt: skip
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, ("False", "OOMKilled"), timeout=40)
    time.sleep(6)  # more than a poll period: nothing else starts
    assert len(cluster.job_pods(namespace, name)) == limit + 1, (
        "the Job controller retried up to backoffLimit"
    )
    assert [j.metadata.name for j in _merge_jobs(cluster, namespace)] == [name], (
        "the operator re-created nothing"
    )
    assert _step_job(cluster, namespace, "merge") == name
