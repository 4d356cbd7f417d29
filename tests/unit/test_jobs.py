"""Reading a step's outcome from its Job and Pods (pure): the reasons a person sees in status."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tuneops.reconcile.jobs import observe_job, parse_result


def job(*conditions: tuple[str, str, str], active: int = 0) -> dict[str, Any]:
    return {
        "status": {
            "active": active,
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": f"{r} message"} for t, s, r in conditions
            ],
        }
    }


def pod(
    phase: str, exit_code: int | None = None, reason: str = "", message: str = "", ts: str = "t1"
) -> dict[str, Any]:
    cs: dict[str, Any] = {"name": "worker", "state": {}}
    if exit_code is not None:
        cs["state"] = {"terminated": {"exitCode": exit_code, "reason": reason, "message": message}}
    return {"metadata": {"creationTimestamp": ts}, "status": {"phase": phase, "containerStatuses": [cs]}}


RESULT = json.dumps({"artifact": {"uri": "pvc://m/x", "digest": "sha256:1"}})

CASES = [
    ("no job yet", None, [], "Missing", "", ""),
    ("created, pod not scheduled", job(active=1), [pod("Pending")], "Pending", "JobPending", ""),
    ("running", job(active=1), [pod("Running")], "Running", "JobRunning", ""),
    ("complete with result", job(("Complete", "True", "")), [pod("Succeeded", 0, "Completed", RESULT)], "Succeeded", "", ""),
    ("oom by the kubelet", job(("Failed", "True", "BackoffLimitExceeded")), [pod("Failed", 137, "OOMKilled")], "Failed", "OOMKilled", "out of memory"),
    ("exit 137 without a reason", job(("Failed", "True", "BackoffLimitExceeded")), [pod("Failed", 137, "Error")], "Failed", "OOMKilled", "exit 137"),
    ("worker error message", job(("Failed", "True", "BackoffLimitExceeded")),
     [pod("Failed", 2, "Error", json.dumps({"error": "adapter is DoRA; use method: peft"}))], "Failed", "JobFailed", "adapter is DoRA"),
    ("plain text message", job(("Failed", "True", "BackoffLimitExceeded")), [pod("Failed", 1, "Error", "Traceback ... boom")], "Failed", "JobFailed", "boom"),
    ("deadline", job(("Failed", "True", "DeadlineExceeded")), [], "Failed", "DeadlineExceeded", "DeadlineExceeded message"),
    ("newest pod wins", job(("Failed", "True", "BackoffLimitExceeded")),
     [pod("Failed", 1, "Error", "old", ts="t1"), pod("Failed", 137, "OOMKilled", "", ts="t2")], "Failed", "OOMKilled", ""),
]  # fmt: skip


@pytest.mark.parametrize(("case", "j", "pods", "state", "reason", "text"), CASES, ids=[c[0] for c in CASES])
def test_observe_job(
    case: str, j: dict[str, Any] | None, pods: list[dict[str, Any]], state: str, reason: str, text: str
) -> None:
    out = observe_job(j, pods)
    assert out.state == state
    assert out.reason == reason
    assert text in out.message


def test_result_of_a_successful_job_is_parsed() -> None:
    out = observe_job(job(("Complete", "True", "")), [pod("Succeeded", 0, "Completed", RESULT)])
    assert out.result["artifact"]["digest"] == "sha256:1"


@pytest.mark.parametrize(
    ("raw", "want"),
    [("", {}), ("[1]", {"error": "[1]"}), ("oops", {"error": "oops"}), ('{"a": 1}', {"a": 1})],
)
def test_parse_result(raw: str, want: dict[str, Any]) -> None:
    assert parse_result(raw) == want


def owned(p: dict[str, Any], uid: str = "job-uid") -> dict[str, Any]:
    p["metadata"]["ownerReferences"] = [{"kind": "Job", "uid": uid, "controller": True}]
    return p


def test_a_succeeded_pod_of_the_job_is_its_result_before_the_job_controller_writes_complete() -> None:
    j = {**job(active=1), "metadata": {"uid": "job-uid"}, "spec": {"completions": 1}}
    early = observe_job(j, [owned(pod("Succeeded", 0, "Completed", RESULT))])
    assert early.state == "Succeeded" and early.result["artifact"]["uri"] == "pvc://m/x"
    # Not the Job's own Pod (no controller reference to this Job): the Job controller's word is awaited.
    assert observe_job(j, [owned(pod("Succeeded", 0, "Completed", RESULT), uid="other")]).state != "Succeeded"
    # A Job that needs several completions is not done with one.
    many = {**j, "spec": {"completions": 3}}
    assert observe_job(many, [owned(pod("Succeeded", 0, "Completed", RESULT))]).state != "Succeeded"
    # A Job the controller marked Failed stays failed whatever a Pod says.
    failed = {**job(("Failed", "True", "DeadlineExceeded")), "metadata": {"uid": "job-uid"}}
    assert observe_job(failed, [owned(pod("Succeeded", 0, "Completed", RESULT))]).state == "Failed"


def test_the_result_is_the_workers_not_an_init_containers() -> None:
    """The benchmark's Pod copies code in an init container that ends well first: its (empty) message is not the
    step's result."""
    p = pod("Succeeded", 0, "Completed", RESULT)
    p["status"]["initContainerStatuses"] = [
        {"name": "code", "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": ""}}}
    ]
    out = observe_job(job(("Complete", "True", "")), [p])
    assert out.state == "Succeeded" and out.result == json.loads(RESULT)


def test_a_complete_job_whose_pod_is_not_read_yet_is_not_done() -> None:
    """The Job's Complete can arrive before its Pod's terminated state: recording the step as succeeded then
    would lose the worker's result for good (the step is not read again)."""
    out = observe_job(job(("Complete", "True", "")), [pod("Running")])
    assert out.state == "Running" and out.result == {}
    assert observe_job(job(("Complete", "True", "")), []).state == "Running"
