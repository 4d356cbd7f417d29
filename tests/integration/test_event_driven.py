"""The operator reacts to its children's changes, not to a timer, and a settled operator asks the API server
nothing: the poll interval here is two minutes and the resync five, so anything that happens within seconds
was woken by a watch."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from tests.integration.helpers import (
    ADAPTER_RESULT,
    complete,
    ftm,
    job_named,
    merge_result,
    qjob,
    ready_reason,
    wait_ready,
)  # fmt: skip
from tests.integration.operator_bed import Cluster, OperatorProcess

SLOW = {"TUNEOPS_POLL_SECONDS": "120", "TUNEOPS_RESYNC_SECONDS": "300"}


def requests(audit_log: Any, mark: int, user: str, namespace: str) -> list[Any]:
    """The operator's requests since `mark` about the test's namespace or cluster-wide (another test's
    namespace may still be going away), watch streams aside."""
    return [
        e for e in audit_log.select(mark, user=user) if e.verb != "watch" and e.namespace in (namespace, "")
    ]


def settle(op: OperatorProcess, quiet_s: float = 2.0, timeout: float = 60.0) -> None:
    """Until the operator's reconcile count stops moving for `quiet_s`."""
    deadline = time.monotonic() + timeout
    last = op.reconciles()
    while time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = op.reconciles()
        if now == last:
            return
        last = now
    raise AssertionError("the operator kept reconciling")


def test_a_finished_pod_wakes_its_owner_and_a_ready_source_wakes_its_user(
    start_operator: Callable[..., OperatorProcess], cluster: Cluster, kubectl: Any, namespace: str,
    wait_until: Callable[..., Any], audit_log: Any, operator_user: str,
) -> None:  # fmt: skip
    op = start_operator(**SLOW)
    op.wait_serving()
    # The user first: it references a source that does not exist yet (the watch comes from its spec, not a read).
    kubectl.apply(qjob("q", "m"), namespace=namespace)
    wait_until(lambda: ready_reason(cluster, "quantizationjobs", namespace, "q") is not None, timeout=30,
               what="the QuantizationJob waits for a source that does not exist")  # fmt: skip
    kubectl.apply(ftm("m"), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    wait_until(lambda: ready_reason(cluster, "quantizationjobs", namespace, "q") is not None, timeout=30,
               what="the QuantizationJob waits for its source")  # fmt: skip
    # A Pod's completion reaches its owner through the watch, not the 2-minute poll: the inspect Pod's
    # makes the merge Job, the merge Pod's makes the model Ready.
    started = time.monotonic()
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    merge = job_named(cluster, namespace, "merge", wait_until)
    inspect_to_merge = time.monotonic() - started
    started = time.monotonic()
    complete(cluster, namespace, merge.metadata.name, merge_result(namespace), wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "m", wait_until, timeout=10)
    pod_to_status = time.monotonic() - started
    # The QuantizationJob's spec references its source (tuneops.watches): the source turning Ready wakes it.
    job_named(cluster, namespace, "quantize", wait_until, owner="q")
    source_to_job = time.monotonic() - started
    print(f"inspect Pod done -> merge Job: {inspect_to_merge:.2f}s; merge Pod done -> owner Ready: "
          f"{pod_to_status:.2f}s; -> the dependent's Job: {source_to_job:.2f}s")  # fmt: skip
    assert inspect_to_merge < 3.0 and pod_to_status < 3.0, (inspect_to_merge, pod_to_status)
    assert source_to_job < 5.0, source_to_job

    # Settled: between resyncs the operator neither reads nor writes (its watch streams aside).
    settle(op)
    mark = audit_log.mark()
    time.sleep(8)
    quiet = requests(audit_log, mark, operator_user, namespace)
    assert quiet == [], [(e.verb, e.resource, e.name) for e in quiet]


def test_a_restarted_operator_lists_each_kind_once_and_writes_nothing(
    start_operator: Callable[..., OperatorProcess], cluster: Cluster, kubectl: Any, namespace: str,
    wait_until: Callable[..., Any], audit_log: Any, operator_user: str,
) -> None:  # fmt: skip
    first = start_operator(**SLOW)
    first.wait_serving()
    kubectl.apply(ftm("r", merge=False), namespace=namespace)
    inspect = job_named(cluster, namespace, "inspect", wait_until)
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "r", wait_until, timeout=10)
    settle(first)
    first.stop()

    mark = audit_log.mark()
    second = start_operator(**SLOW)
    second.wait_serving()
    wait_until(lambda: second.reconciles() >= 1, timeout=30, what="the restarted operator's first pass")
    settle(second)
    seen = requests(audit_log, mark, operator_user, namespace)
    writes = [(e.verb, e.resource, e.name) for e in seen if e.verb not in ("get", "list")]
    assert writes == [], writes
    lists = Counter(e.resource for e in seen if e.verb == "list")
    assert lists and set(lists.values()) == {1}, lists  # kinds not installed here are not listed again either
    assert {"finetunedmodels", "jobs", "pods", "deployments"} <= set(lists), lists
    gets = [(e.resource, e.name) for e in seen if e.verb == "get"]
    assert all(r == "" for r, _ in gets), gets  # only /version (feature discovery), no object
    assert ready_reason(cluster, "finetunedmodels", namespace, "r") == ("True", "Succeeded")


def test_the_operator_stops_promptly_on_sigterm(start_operator: Callable[..., OperatorProcess]) -> None:
    op = start_operator(**SLOW)
    op.wait_serving()
    time.sleep(2)  # watching
    started = time.monotonic()
    op.stop(timeout=15)
    assert time.monotonic() - started < 5.0, op.log()


def test_a_spec_change_reaches_a_reconcile_through_kopf_which_writes_nothing_on_the_object(
    start_operator: Callable[..., OperatorProcess], cluster: Cluster, kubectl: Any, namespace: str,
    wait_until: Callable[..., Any], audit_log: Any, operator_user: str,
) -> None:  # fmt: skip
    mark = audit_log.mark()
    op = start_operator(**SLOW)
    op.wait_serving()
    kubectl.apply(ftm("k", merge=False), namespace=namespace)
    seen = {job_named(cluster, namespace, "inspect", wait_until).metadata.name}
    # With a 2-minute poll and a 5-minute resync, only the watch event of the spec change can bring a new inspect
    # Job (its name carries the spec's hash) within seconds; the tuneops kinds are watched by kopf alone.
    took = []
    for adapter in ("adapter-b", "adapter-c", "adapter-d"):
        started = time.monotonic()
        cluster.patch_spec("finetunedmodels", namespace, "k", {"adapter": {"uri": f"pvc://models/{adapter}"}})

        def new_job() -> str | None:
            names = {j.metadata.name for j in cluster.jobs(namespace)} - seen
            return next(iter(names), None)

        seen.add(wait_until(new_job, timeout=10, what=f"the inspect Job of {adapter}"))
        took.append(time.monotonic() - started)
    print("spec change -> the new inspect Job: " + ", ".join(f"{t:.2f}s" for t in took))
    assert max(took) < 3.0, took

    # kopf lists and watches the three kinds; the operator's own client neither lists nor watches them (the audit
    # log records a watch once its stream has ended, so the lists are what is checked for kopf).
    ours = [e for e in audit_log.select(mark, user=operator_user) if e.api_group == "tuneops.io"]
    streams = {
        (e.user_agent.split("/")[0].lower(), e.verb, e.resource) for e in ours if e.verb in ("list", "watch")
    }
    assert {
        ("kopf", "list", p) for p in ("finetunedmodels", "quantizationjobs", "inferenceservices")
    } <= streams
    assert {agent for agent, _, _ in streams} == {"kopf"}, streams
    # kopf keeps nothing on the object: no annotation, no finalizer (the operator writes status only).
    writes = {(e.verb, e.subresource) for e in ours if e.is_write and e.name == "k"}
    assert writes <= {("patch", "status"), ("update", "status")}, writes
    meta = cluster.get("finetunedmodels", namespace, "k")["metadata"]  # type: ignore[index]
    assert not meta.get("finalizers"), meta
    assert not [a for a in meta.get("annotations") or {} if "kopf" in a], meta
