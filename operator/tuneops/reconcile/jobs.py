"""Reading a step's outcome from its Job and Pods: pending (and stuck why), running, succeeded with a result,
or failed why."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from tuneops.api.conditions import Reason
from tuneops.reconcile.workload import diagnose, parse_result
from tuneops.render.jobs import WORKER_CONTAINER

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


# What decides what a container computes: a Pod that differs from its Job's template in any of these is not the
# Job's own, whoever its ownerReference names.
_RUNS = ("name", "image", "command", "args", "env", "envFrom", "workingDir", "volumeMounts")
# The ServiceAccount token the API server mounts into every container of a Pod whose template does not turn it off.
_TOKEN_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"


def _runs(container: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: container.get(k) for k in _RUNS if container.get(k) not in (None, [], {})}
    mounts = [m for m in out.get("volumeMounts") or [] if m.get("mountPath") != _TOKEN_MOUNT]
    out["volumeMounts"] = mounts or None
    return out


def job_pod(job: Mapping[str, Any], pod: Mapping[str, Any]) -> bool:
    """Whether `pod` is proven to be `job`'s own: its controller is the Job (by uid) and it runs exactly what the
    Job's template says (images, commands, arguments, environment, mounts and the volumes behind them).

    Labels and ownerReferences are written by whoever creates a Pod, so a tenant can make a Pod that claims a Job
    and exits 0 first with a result of its choosing. Such a Pod either differs from the template, and is ignored,
    or runs the template itself, and then computes what the Job's own Pod would."""
    uid = (job.get("metadata") or {}).get("uid")
    meta = pod.get("metadata") or {}
    if not uid or not any(
        r.get("uid") == uid and r.get("controller") is True for r in meta.get("ownerReferences") or []
    ):
        return False
    template = ((job.get("spec") or {}).get("template") or {}).get("spec") or {}
    spec = pod.get("spec") or {}
    for key in ("containers", "initContainers"):
        want = [_runs(c) for c in template.get(key) or []]
        if [_runs(c) for c in spec.get(key) or []] != want:
            return False
    volumes = {v.get("name"): v for v in spec.get("volumes") or []}
    templated = {v.get("name"): v for v in template.get("volumes") or []}
    mounted = {m.get("name") for c in spec.get("containers") or [] for m in c.get("volumeMounts") or []}
    mounted |= {m.get("name") for c in spec.get("initContainers") or [] for m in c.get("volumeMounts") or []}
    for name in mounted:
        if name in templated:
            if volumes.get(name) != templated[name]:
                return False
        elif not _token_volume(volumes.get(name)):
            return False
    return bool(spec.get("serviceAccountName", "default") == template.get("serviceAccountName", "default"))


def _token_volume(volume: Mapping[str, Any] | None) -> bool:
    """The projected ServiceAccount token volume the API server adds (kube-api-access-*), and nothing else."""
    if not volume or not str(volume.get("name", "")).startswith("kube-api-access-"):
        return False
    sources = (volume.get("projected") or {}).get("sources") or []
    return all(set(s) <= {"serviceAccountToken", "configMap", "downwardAPI"} for s in sources)


def job_pods(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The Pods proven to be `job`'s own (job_pod), in the order given."""
    return [dict(p) for p in pods if job_pod(job, p)]


def _terminated(pod: dict[str, Any], only: str | None = None) -> list[dict[str, Any]]:
    """Terminated states of the Pod's containers, init containers first (`only`: of that container alone)."""
    out = []
    status = pod.get("status") or {}
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        if only is not None and cs.get("name") != only:
            continue
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
            # the result is the worker's: an init container that ended well (the benchmark's code copy) has none
            for term in _terminated(pod, only=WORKER_CONTAINER):
                if term.get("exitCode") == 0:
                    return JobOutcome("Succeeded", result=parse_result(term.get("message")))
        # Complete, but the worker's terminated state is not in the Pods as read yet (the Pod informer trails the
        # Job's): not done until its result is, or the step would be recorded as succeeded without it for good
        return JobOutcome("Running", Reason.JOB_RUNNING, "the Job is complete; reading its worker's result")
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
