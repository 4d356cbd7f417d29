"""Reading a step's outcome from its Job and Pods: pending (and stuck why), running, succeeded with a result,
or failed why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneops.api.conditions import Reason
from tuneops.reconcile.workload import diagnose, parse_result

State = Literal["Missing", "Pending", "Running", "Succeeded", "Failed"]


@dataclass(frozen=True)
class JobOutcome:
    state: State
    reason: str = ""
    message: str = ""
    result: dict[str, Any] = field(default_factory=dict)


def _conditions(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (job.get("status") or {}).get("conditions") or []}


def job_finished(job: dict[str, Any]) -> bool:
    """The Job controller has marked it Complete or Failed: it runs no Pod any more."""
    conds = _conditions(job)
    return any(conds.get(t, {}).get("status") == "True" for t in ("Complete", "Failed"))


def _terminated(pod: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        for key in ("state", "lastState"):
            term = (cs.get(key) or {}).get("terminated")
            if term:
                out.append(term)
    return out


def _newest(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(
        pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp", "")), reverse=True
    )


def _succeeded_pod(job: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A Pod of this Job (owned by it, as the Job controller counts them) that succeeded, when one success
    completes the Job: its result is known before the Job controller writes Complete, which under load comes
    seconds later."""
    spec = job.get("spec") or {}
    if int(spec.get("completions") or 1) != 1:
        return None
    uid = (job.get("metadata") or {}).get("uid")
    for pod in _newest(pods):
        meta = pod.get("metadata") or {}
        owned = any(r.get("uid") == uid and r.get("controller") for r in meta.get("ownerReferences") or [])
        if uid and owned and (pod.get("status") or {}).get("phase") == "Succeeded":
            return pod
    return None


def observe_job(
    job: dict[str, Any] | None, pods: list[dict[str, Any]], events: Sequence[Mapping[str, Any]] = ()
) -> JobOutcome:
    """Classify a Job. A failure says why: OOMKilled (exit 137 or the kubelet's reason), the deadline, or the
    worker's own error message from its termination log. A Job whose Pod cannot start says why too (the image,
    a Secret, the scheduler's message; `events` are the Pods' Events), still Pending: Kubernetes keeps trying,
    and the Job may start once the image is pushed or the Secret created."""
    if job is None:
        return JobOutcome("Missing")
    conds = _conditions(job)
    early = _succeeded_pod(job, pods) if not conds else None
    if early is not None or conds.get("Complete", {}).get("status") == "True":
        for pod in [early] if early is not None else _newest(pods):
            for term in _terminated(pod):
                if term.get("exitCode") == 0:
                    return JobOutcome("Succeeded", result=parse_result(term.get("message")))
        return JobOutcome("Succeeded")
    failed = conds.get("Failed", {})
    if failed.get("status") == "True":
        if failed.get("reason") == "DeadlineExceeded":
            return JobOutcome(
                "Failed",
                Reason.DEADLINE_EXCEEDED,
                failed.get("message") or "the Job ran past activeDeadlineSeconds",
            )
        for pod in _newest(pods):
            for term in _terminated(pod):
                if term.get("exitCode", 0) == 0:
                    continue
                result = parse_result(term.get("message"))
                detail = str(result.get("error") or term.get("message") or "").strip()
                if term.get("reason") == "OOMKilled" or term.get("exitCode") == 137:
                    msg = "the worker ran out of memory (OOMKilled, exit 137); raise job.resources.limits.memory"
                    return JobOutcome(
                        "Failed", Reason.OOM_KILLED, f"{msg}: {detail}" if detail else msg, result
                    )
                msg = f"exit code {term.get('exitCode')}"
                # A worker may name a reason of its own for what it refused (a DigestMismatch).
                own = result.get("reason") == Reason.DIGEST_MISMATCH
                why = Reason.DIGEST_MISMATCH if own else Reason.JOB_FAILED
                return JobOutcome("Failed", why, f"{detail} ({msg})" if detail else msg, result)
        return JobOutcome(
            "Failed", Reason.JOB_FAILED, failed.get("message") or failed.get("reason") or "Job failed"
        )
    status = job.get("status") or {}
    running = any((p.get("status") or {}).get("phase") == "Running" for p in pods)
    stuck = (
        None
        if running
        else diagnose([p for p in pods if (p.get("status") or {}).get("phase") == "Pending"], events)
    )
    if stuck is not None:
        return JobOutcome("Pending", stuck.reason, stuck.message)
    if running or (
        status.get("active") and any((p.get("status") or {}).get("phase") != "Pending" for p in pods)
    ):
        return JobOutcome("Running", Reason.JOB_RUNNING)
    return JobOutcome("Pending", Reason.JOB_PENDING)
