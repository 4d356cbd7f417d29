"""The operator against a real API server: children, status transitions, waiting, failures, restarts, GC."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.helpers import (
    ADAPTER_RESULT,
    complete,
    ftm,
    job_named,
    merge_result,
    qjob,
    ready_reason,
    wait_ready,
)
from tests.integration.operator_bed import Cluster, OperatorProcess


def test_finetunedmodel_runs_inspect_then_merge_and_records_the_artifact(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(ftm("m"), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    ref = inspect.metadata.owner_references[0]
    assert (ref.kind, ref.name, ref.controller) == ("FineTunedModel", "m", True)
    assert inspect.spec.backoff_limit is not None and inspect.spec.ttl_seconds_after_finished
    assert inspect.spec.active_deadline_seconds
    wait_until(
        lambda: (
            ready_reason(cluster, "finetunedmodels", namespace, "m")
            in {("False", "JobPending"), ("False", "JobRunning")}
        ),
        what="Pending",
    )

    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, namespace, "merge", wait_until)
    complete(cluster, namespace, merge.metadata.name, merge_result(namespace), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40)

    status = cluster.get("finetunedmodels", namespace, "m")["status"]  # type: ignore[index]
    assert status["artifact"] == merge_result(namespace)["artifact"]
    assert status["adapter"]["rank"] == 8 and status["adapter"]["targetModules"] == ["q_proj", "v_proj"]
    assert status["phase"] == "Ready"
    types = {c["type"]: c["status"] for c in status["conditions"]}
    assert types == {"Ready": "True", "Inspected": "True", "Merged": "True"}
    # The Event follows the status write (Events are written after, best effort).
    wait_until(
        lambda: "Succeeded" in {e.reason for e in cluster.events(namespace, "m")}, what="Succeeded Event"
    )
    out = kubectl("get", "ftm", "m", namespace=namespace).stdout
    assert "True" in out and "Succeeded" in out


def test_quantization_waits_for_its_finetunedmodel_then_proceeds(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(qjob("q", "m"), namespace=namespace)
    wait_ready(cluster, "quantizationjobs", namespace, "q", wait_until, ("False", "WaitingForSource"))
    msg = cluster.ready("quantizationjobs", namespace, "q")["message"]  # type: ignore[index]
    assert "does not exist" in msg
    assert not cluster.jobs(namespace)

    kubectl.apply(ftm("m"), namespace=namespace)
    complete(
        cluster,
        namespace,
        job_named(cluster, namespace, "inspect", wait_until).metadata.name,
        ADAPTER_RESULT,
        wait_until,
    )
    complete(
        cluster,
        namespace,
        job_named(cluster, namespace, "merge", wait_until).metadata.name,
        merge_result(namespace),
        wait_until,
    )

    quantize = job_named(cluster, namespace, "quantize", wait_until, owner="q")
    args = quantize.spec.template.spec.containers[0].args
    assert f"pvc://artifacts/{namespace}/m" in args, args
    gguf = {"artifact": {"uri": f"pvc://artifacts/{namespace}/q", "digest": "sha256:q1", "sizeBytes": 99,
                         "format": "gguf", "files": ["model-Q4_K_M.gguf"]}}  # fmt: skip
    complete(cluster, namespace, quantize.metadata.name, gguf, wait_until)
    wait_ready(cluster, "quantizationjobs", namespace, "q", wait_until, timeout=40)


def test_quality_gate_failure_reports_the_numbers(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    obj = qjob("q", "m", gate=5)
    obj["spec"]["source"] = {"uri": "pvc://models/merged"}
    kubectl.apply(obj, namespace=namespace)
    quantize = job_named(cluster, namespace, "quantize", wait_until)
    complete(cluster, namespace, quantize.metadata.name,
             {"artifact": {"uri": f"pvc://artifacts/{namespace}/q", "digest": "sha256:q", "format": "gguf",
                           "files": ["model-Q4_K_M.gguf"]}}, wait_until)  # fmt: skip
    evaluate = job_named(cluster, namespace, "evaluate", wait_until)
    complete(cluster, namespace, evaluate.metadata.name,
             {"metrics": {"perplexity": 13.2, "referencePerplexity": 11.0, "increasePct": 20.0}, "passed": False},
             wait_until)  # fmt: skip
    wait_ready(cluster, "quantizationjobs", namespace, "q", wait_until, ("False", "QualityGateFailed"))
    obj = cluster.get("quantizationjobs", namespace, "q")
    assert obj is not None
    msg = cluster.ready("quantizationjobs", namespace, "q")["message"]  # type: ignore[index]
    assert "13.200" in msg and "11.000" in msg and "20.00%" in msg and "5%" in msg
    assert obj["status"]["quality"]["passed"] is False
    assert obj["status"]["phase"] == "Failed"


@pytest.mark.parametrize(
    ("exit_code", "kubelet_reason", "result", "want_reason", "want_text"),
    [
        (137, "OOMKilled", {}, "OOMKilled", "out of memory"),
        (1, "Error", {"error": "adapter_config.json not found under pvc://models/adapter-a"}, "JobFailed",
         "adapter_config.json not found"),
    ],
)  # fmt: skip
def test_failing_pod_gives_reason_and_a_spec_change_reruns(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any],
    exit_code: int, kubelet_reason: str, result: dict[str, Any], want_reason: str, want_text: str,
) -> None:  # fmt: skip
    kubectl.apply(ftm("m"), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, namespace, "merge", wait_until)
    # backoffLimit 1: the Job controller retries once, then marks the Job Failed.
    for _ in range(2):
        wait_until(lambda: cluster.finish_pod(namespace, merge.metadata.name, result, exit_code, kubelet_reason),
                   timeout=30, what="a merge Pod")  # fmt: skip
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, ("False", want_reason), timeout=40)
    assert want_text in cluster.ready("finetunedmodels", namespace, "m")["message"]  # type: ignore[index]
    jobs_before = {j.metadata.name for j in cluster.jobs(namespace)}

    # No hot loop: the failed Job is not re-created while the spec stays the same.
    import time

    time.sleep(4)
    assert {j.metadata.name for j in cluster.jobs(namespace)} == jobs_before
    # Changing the spec gives a new content-addressed merge Job.
    cluster.patch_spec("finetunedmodels", namespace, "m", {"merge": {"dtype": "bfloat16"}})
    wait_until(lambda: len([j for j in cluster.jobs(namespace) if j.metadata.labels.get("app.kubernetes.io/component") == "merge"]) == 2,
               what="a second merge Job")  # fmt: skip
    new = next(j for j in cluster.jobs(namespace) if j.metadata.name not in jobs_before)
    assert "bfloat16" in new.spec.template.spec.containers[0].args
    complete(cluster, namespace, new.metadata.name, merge_result(namespace, "sha256:m2"), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40)


def test_incompatible_adapter_is_refused(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(ftm("m"), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    bad = {**ADAPTER_RESULT, "problems": ["target module q_proj: base has no such module"]}
    complete(cluster, namespace, inspect.metadata.name, bad, wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, ("False", "IncompatibleAdapter"))
    assert "q_proj" in cluster.ready("finetunedmodels", namespace, "m")["message"]  # type: ignore[index]
    assert not [
        j for j in cluster.jobs(namespace) if j.metadata.labels.get("app.kubernetes.io/component") == "merge"
    ]


def test_operator_restart_mid_pipeline_makes_no_duplicates(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(ftm("m"), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    operator.kill()  # SIGKILL: no cleanup, no goodbye
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    operator.start()
    merge = job_named(cluster, namespace, "merge", wait_until)
    operator.stop()
    operator.start()
    complete(cluster, namespace, merge.metadata.name, merge_result(namespace), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=60)
    names = sorted(j.metadata.name for j in cluster.jobs(namespace))
    assert len(names) == 2, names


def test_deleting_a_resource_removes_its_children(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    kubectl.apply(ftm("m"), namespace=namespace)
    job_named(cluster, namespace, "inspect", wait_until)
    kubectl("delete", "ftm", "m", "--wait=true", namespace=namespace)
    wait_until(lambda: not cluster.jobs(namespace), timeout=60, what="garbage collection of the Jobs")


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"merge": {"dtype": "int3"}}, "spec.merge.dtype"),
        ({"baseModel": {"uri": "ftp://x/y"}}, "spec.baseModel.uri"),
        ({"job": {"backoffLimit": -1}}, "spec.job.backoffLimit"),
    ],
)
def test_invalid_resource_is_refused_by_the_api_server(
    crds: None, kubectl: Any, namespace: str, patch: dict[str, Any], field: str
) -> None:
    obj = ftm("bad")
    obj["spec"].update(patch)
    proc = kubectl.apply(obj, namespace=namespace, check=False)
    assert proc.returncode != 0
    assert field in proc.stderr, proc.stderr


def test_steady_state_makes_no_writes(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any],
    audit_log: Any, operator_user: str,
) -> None:  # fmt: skip
    kubectl.apply(ftm("m", merge=False), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=40)
    import time

    time.sleep(2)  # let the last status write land
    mark, passes = audit_log.mark(), operator.reconciles()
    time.sleep(operator.resync * 4)  # several resync periods
    writes = audit_log.select(mark, user=operator_user, namespace=namespace, writes_only=True)
    reads = audit_log.select(mark, user=operator_user, namespace=namespace, verbs=["get", "list"])
    assert operator.reconciles() > passes, "the resync timer did not run"
    assert reads == [], [(r.verb, r.resource, r.name) for r in reads]  # a resync works from memory
    assert writes == [], [(w.verb, w.resource, w.subresource, w.name) for w in writes]
