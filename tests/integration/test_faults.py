"""Faults between the operator and the API server: errors, stalls, an API server restart, a kill mid-write.

Each test runs its own operator (so the proxy can sit in front of it) and checks the two things that matter:
the pipeline converges, and no Job is created twice (counted in the API and in the audit log).
The OOMKilled worker is covered in test_operator.py (test_failing_pod_gives_reason_and_a_spec_change_reruns),
the worker that dies mid-write in tests/workers/test_storage.py, the vLLM Pod restart in tests/e2e.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.faultproxy import FaultProxy, Faults, Request
from tests.integration.helpers import (
    ADAPTER_RESULT,
    complete,
    ftm,
    job_named,
    merge_result,
    qjob,
    wait_ready,
)
from tests.integration.operator_bed import Cluster, OperatorProcess
from tuneops.local.controlplane import AuditLog, ControlPlane

GGUF_RESULT = {"artifact": {"uri": "pvc://artifacts/q", "digest": "sha256:q1", "sizeBytes": 99, "format": "gguf",
                            "files": ["model-Q4_K_M.gguf"]}}  # fmt: skip


def ours(req: Request) -> bool:
    """The operator's own API client (kopf's requests have their own retry loop and are left alone)."""
    return req.user_agent.startswith("tuneops/") and not req.is_watch


@pytest.fixture
def proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    p = FaultProxy(control_plane.server_url, control_plane.ca_path)
    p.start()
    yield p
    p.stop()


def metric(op: OperatorProcess, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{op.metrics_port}/metrics", timeout=5).read().decode()
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def healthy(op: OperatorProcess) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.liveness_port}/healthz", timeout=5) as r:
        return bool(r.status == 200)


def job_creations(audit: AuditLog, since: int, namespace: str) -> list[str]:
    """Job creations as the API server recorded them: a create, or a server-side apply that created (201)."""
    return sorted(
        e.name
        for e in audit.select(since, resource="jobs", namespace=namespace)
        if e.verb == "create" or (e.verb == "patch" and e.code == 201)
    )


def run_pipeline(cluster: Cluster, ns: str, wait: Callable[..., Any], timeout: float = 90) -> None:
    """FineTunedModel m (inspect, merge) -> QuantizationJob q (quantize), playing kubelet for each Job."""
    complete(cluster, ns, job_named(cluster, ns, "inspect", wait).metadata.name, ADAPTER_RESULT, wait)
    complete(cluster, ns, job_named(cluster, ns, "merge", wait).metadata.name, merge_result(ns), wait)
    wait_ready(cluster, "finetunedmodels", ns, "m", wait, timeout=timeout, what="m Ready")
    complete(
        cluster, ns, job_named(cluster, ns, "quantize", wait, owner="q").metadata.name, GGUF_RESULT, wait
    )
    wait_ready(cluster, "quantizationjobs", ns, "q", wait, timeout=timeout, what="q Ready")


def test_operator_converges_through_errors_and_stalls_without_duplicate_jobs(
    start_operator: Callable[..., OperatorProcess], proxy: FaultProxy, operator_kubeconfig: Path, tmp_path: Path,
    cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any], audit_log: AuditLog,
) -> None:  # fmt: skip
    # A quarter of the operator's requests fail (409 on writes, 429 with Retry-After, 500 half of them after
    # the write landed) and 5% stall past the client's 2 s timeout.
    proxy.set_faults(
        Faults(rates={409: 0.08, 429: 0.07, 500: 0.10}, stall_rate=0.05, stall_s=3.0, applies=ours)
    )
    op = start_operator(
        proxy.kubeconfig(operator_kubeconfig, tmp_path / "via-proxy"), TUNEOPS_API_TIMEOUT_SECONDS="2"
    )
    mark = audit_log.mark()
    kubectl.apply([ftm("m"), qjob("q", "m")], namespace=namespace)
    run_pipeline(cluster, namespace, wait_until, timeout=120)

    jobs = sorted(j.metadata.name for j in cluster.jobs(namespace))
    assert len(jobs) == 3, jobs  # inspect, merge, quantize: once each
    assert job_creations(audit_log, mark, namespace) == jobs
    for kind in ("409", "429", "500", "500-after-forward", "stall"):
        assert proxy.counts[kind] > 0, (kind, proxy.counts)
    assert metric(op, "tuneops_api_retries_total") > 0
    assert op.alive() and healthy(op), op.log()


def test_kopf_requests_through_server_errors_still_converge(
    start_operator: Callable[..., OperatorProcess], proxy: FaultProxy, operator_kubeconfig: Path, tmp_path: Path,
    cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any],
) -> None:  # fmt: skip
    # Every client in the process, kopf's included, sees 5xx and throttling on its non-watch requests.
    proxy.set_faults(Faults(rates={429: 0.05, 500: 0.05, 503: 0.05}, seed=7))
    op = start_operator(proxy.kubeconfig(operator_kubeconfig, tmp_path / "via-proxy"))
    kubectl.apply([ftm("m"), qjob("q", "m")], namespace=namespace)
    run_pipeline(cluster, namespace, wait_until, timeout=120)
    assert len(cluster.jobs(namespace)) == 3
    assert proxy.counts["500"] + proxy.counts["503"] + proxy.counts["429"] > 0
    assert op.alive() and healthy(op), op.log()


def test_api_server_restart_mid_pipeline(
    start_operator: Callable[..., OperatorProcess], control_plane: ControlPlane, cluster: Cluster, kubectl: Any,
    namespace: str, wait_until: Callable[..., Any], audit_log: AuditLog,
) -> None:  # fmt: skip
    op = start_operator()
    mark = audit_log.mark()
    kubectl.apply([ftm("m"), qjob("q", "m")], namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    # The API server goes away for a few seconds (etcd keeps every object); watches and requests break.
    control_plane.restart_apiserver(downtime=3.0)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, namespace, "merge", wait_until)
    control_plane.restart_apiserver(downtime=1.0)
    complete(cluster, namespace, merge.metadata.name, merge_result(namespace), wait_until)
    complete(cluster, namespace, job_named(cluster, namespace, "quantize", wait_until).metadata.name, GGUF_RESULT,
             wait_until)  # fmt: skip
    wait_ready(cluster, "quantizationjobs", namespace, "q", wait_until, timeout=120,
               what="q Ready after two API server restarts")  # fmt: skip
    jobs = sorted(j.metadata.name for j in cluster.jobs(namespace))
    assert len(jobs) == 3, jobs
    assert job_creations(audit_log, mark, namespace) == jobs
    assert op.alive() and healthy(op), op.log()


@pytest.mark.parametrize("fate", ["lost", "landed-after-death"])
def test_operator_killed_in_the_middle_of_a_status_write(
    start_operator: Callable[..., OperatorProcess], proxy: FaultProxy, operator_kubeconfig: Path, tmp_path: Path,
    cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any], audit_log: AuditLog, fate: str,
) -> None:  # fmt: skip
    """SIGKILL while the status write that records the inspect result is on the wire.

    Either the write never arrives, or it arrives after the writer died; a new operator picks up from
    whatever the API server holds and finishes without running any step twice."""
    kubeconfig = proxy.kubeconfig(operator_kubeconfig, tmp_path / "via-proxy")
    op = start_operator(kubeconfig)
    mark = audit_log.mark()
    kubectl.apply(ftm("m"), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, ("False", "JobPending"),
               what="the inspect step recorded")  # fmt: skip
    held = proxy.hold(
        lambda r: (
            r.method == "PATCH"
            and r.path.endswith(f"/namespaces/{namespace}/finetunedmodels/m/status")
            and ours(r)
        )
    )
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    held.wait()
    # The write that is held is the one after the inspect result: the merge Job was applied just before it.
    op.kill()
    if fate == "lost":
        held.drop()
    else:
        held.release()
    start_operator(kubeconfig)
    merge = job_named(cluster, namespace, "merge", wait_until)
    complete(cluster, namespace, merge.metadata.name, merge_result(namespace), wait_until)
    wait_ready(
        cluster, "finetunedmodels", namespace, "m", wait_until, timeout=60, what="Ready after the kill"
    )
    jobs = sorted(j.metadata.name for j in cluster.jobs(namespace))
    assert len(jobs) == 2, jobs
    assert job_creations(audit_log, mark, namespace) == jobs
    status = cluster.get("finetunedmodels", namespace, "m")["status"]  # type: ignore[index]
    assert [s["state"] for s in status["steps"]] == ["Succeeded", "Succeeded"]
