"""What every reconciler shares: the typed status builder, steps run as content-addressed Jobs, one way to
turn a step's outcome into conditions, and status written only on change."""

from __future__ import annotations

import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, NamedTuple

from tuneops import GROUP, labels
from tuneops.api import KindInfo, SpecError, SpecT, StatusT
from tuneops.api.common import ConditionStatus, StepStatus
from tuneops.api.conditions import (
    READY,
    SERVING_DEGRADED_REASONS,
    STUCK_REASONS,
    TERMINAL_REASONS,
    Reason,
    derive_phase,
    find,
    set_condition,
)
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.kube.cache import CachedKube
from tuneops.reconcile.jobs import JobOutcome, job_finished, job_pods, observe_job
from tuneops.reconcile.workload import clean, pod_events
from tuneops.render.names import content_hash, step_name
from tuneops.render.types import Owner
from tuneops.storage.artifacts import JOB_NAME_ENV
from tuneops.validation.policy import check_pod_policy

log = logging.getLogger(__name__)


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _no_wake(kind: str, namespace: str, name: str, cause: str = "", delay: float = 0.0) -> None:
    """Outside the operator's control loop nothing is queued; the caller looks again on its own."""


@dataclass
class Context:
    """What a reconciler may use: the API client (its reads of watched kinds come from memory in the
    operator), the operator's config, a clock, and `wake` to queue a resource again when something the API
    server does not report has finished (an adapter pass)."""

    kube: k.Kube
    config: OperatorConfig
    clock: Callable[[], str] = utcnow
    poll_seconds: float = 30.0
    wake: Callable[..., None] = _no_wake


@dataclass
class Outcome:
    """What the control loop does next: nothing, or look again after a delay."""

    requeue_after: float | None = None
    ready: bool = False
    reason: str = ""
    message: str = ""
    wrote_status: bool = False
    events: list[str] = field(default_factory=list)


Reconcile = Callable[[Context, dict[str, Any]], Outcome]


class Waiting(Exception):
    """The resource waits for something outside it (a source to become Ready, a CRD to be installed)."""

    def __init__(self, message: str, reason: str = Reason.WAITING_FOR_SOURCE):
        super().__init__(message)
        self.message = message
        self.reason = reason


class Invalid(Exception):
    """The spec cannot work as written (beyond schema checks); the person must change it."""

    def __init__(self, message: str, reason: str = Reason.INVALID_SPEC):
        super().__init__(message)
        self.message = message
        self.reason = reason


class Cond(NamedTuple):
    """One condition as a reconciler decides it (status None is Unknown)."""

    type: str
    status: bool | None
    reason: str
    message: str = ""


@dataclass(frozen=True)
class Verdict:
    """Conditions decided from what was observed, and what the reconciler does next: stop here (and look
    again after the poll interval when `requeue`), or go on to its next step."""

    conditions: tuple[Cond, ...]
    stop: bool = True
    requeue: bool = False


@dataclass(frozen=True)
class Step:
    """A step run as a Job, and the words its condition and Ready use."""

    name: str  # status.steps[].name and the Job's component, e.g. "merge"
    condition: str  # the condition type reporting the step, e.g. Merged
    doing: str  # the condition's message while the Job runs, e.g. "merging"
    failed: str  # Ready's message when the Job failed starts with this, e.g. "merge failed"


# How to get past each way a step fails: every terminal step message ends with one of these (see
# docs/troubleshooting.md). Setting tuneops.io/refresh to a new value retries a failed step of any kind.
RETRY = (
    f"retry without a spec change: kubectl annotate --overwrite <kind>/<name> {labels.REFRESH}=$(date +%s)"
)
RETRY_HINTS: dict[str, str] = {
    Reason.JOB_FAILED: "read the Job's logs (kubectl logs job/{job}), fix the cause, then " + RETRY,
    Reason.OOM_KILLED: (
        "the same memory limit fails the same way: raise the step's resources.limits.memory in the spec "
        "(a new Job runs at once), or free memory on the node and " + RETRY
    ),
    Reason.DEADLINE_EXCEEDED: (
        "raise the step's activeDeadlineSeconds in the spec (a new Job runs at once), or " + RETRY
    ),
    Reason.QUALITY_GATE_FAILED: (
        "loosen qualityGate.maxPerplexityIncreasePct or pick a gentler quantization in the spec, or re-measure: "
        + RETRY
    ),
    Reason.DIGEST_MISMATCH: (
        "an input changed after its producer recorded it: re-run the producer (set its tuneops.io/refresh), "
        "then " + RETRY
    ),
    Reason.INCOMPATIBLE_ADAPTER: "fix the adapter or the spec's base model, then " + RETRY,
    Reason.QUALITY_CHECK_FAILED: (
        "the merged model is not the base with this adapter: check merge.method and merge.dtype and re-merge "
        "(a new spec, or set tuneops.io/refresh), then " + RETRY
    ),
}


def retry_hint(reason: str, job: str) -> str:
    """The sentence a failed step's message ends with: how to get past `reason` (JobFailed's by default)."""
    return RETRY_HINTS.get(reason, RETRY_HINTS[Reason.JOB_FAILED]).replace("{job}", job)


def judge_step(step: Step, job: str, outcome: JobOutcome, done: str) -> Verdict:
    """A failed step stops the reconciler until its inputs change (a new Job name) or a new tuneops.io/refresh
    value retries it; one in progress stops it and asks to look again (also when its Pod is stuck: that heals
    without a spec change, and the condition says why); a succeeded one lets it go on."""
    if outcome.state == "Failed":
        reason = outcome.reason or Reason.JOB_FAILED
        hint = retry_hint(reason, job)
        detail = outcome.message or reason
        return Verdict(
            (
                Cond(
                    step.condition, False, reason, f"{outcome.message}; {hint}" if outcome.message else hint
                ),
                Cond(READY, False, reason, f"{step.failed}: {detail}; {hint}"),
            )
        )
    if outcome.state != "Succeeded":
        reason = outcome.reason or Reason.JOB_PENDING
        return Verdict(
            (
                Cond(step.condition, None, reason, outcome.message or step.doing),
                Cond(READY, False, reason, f"{step.name} Job {job}: {outcome.message or outcome.state}"),
            ),
            requeue=True,
        )
    return Verdict((Cond(step.condition, True, Reason.SUCCEEDED, done),), stop=False)


def blocked(err: Waiting | Invalid) -> Verdict:
    """A source that is not Ready yet is looked at again; an unworkable spec waits for the person."""
    if isinstance(err, Waiting):
        return Verdict((Cond(READY, False, err.reason, err.message),), requeue=True)
    return Verdict((Cond(READY, False, err.reason, err.message),))


def owner_of(obj: dict[str, Any]) -> Owner:
    meta = obj["metadata"]
    return Owner(
        api_version=obj["apiVersion"],
        kind=obj["kind"],
        name=meta["name"],
        namespace=meta["namespace"],
        uid=meta.get("uid", ""),
    )


def controller_ref(obj: dict[str, Any]) -> dict[str, Any] | None:
    """The object's controller ownerReference (`controller: true`), if it has one."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if isinstance(ref, dict) and ref.get("controller") is True:
            return ref
    return None


def controlled_by(obj: dict[str, Any], uid: str | None) -> bool:
    """Whether the object's controller (the API server admits one at most) is the object of `uid`."""
    ref = controller_ref(obj)
    return bool(uid) and ref is not None and ref.get("uid") == uid


def read_child(kube: k.Kube, rtype: k.ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
    """The object that holds a child's name, whoever made it.

    In the operator `kube` answers reads from informers, which hold only objects labelled
    `app.kubernetes.io/managed-by=tuneops`: an object a person made under that name is not there. So when
    memory has none, the API server is asked (once per create; a settled operator finds its children in
    memory and makes no read). A kind the cluster does not serve (its CRD is not installed) has no objects."""
    found = kube.get(rtype, namespace, name)
    if found is not None or not isinstance(kube, CachedKube):
        return found  # any other Kube has just asked the server
    informer = kube.informer(rtype, namespace)
    if informer is None or informer.refused == 404:
        return None  # asked the server already, or the kind is not served
    return k.Kube.get(kube, rtype, namespace, name)


def name_conflict(owner: Owner, kind: str, child: dict[str, Any]) -> str | None:
    """None when `owner` controls `child` (a `kind`); otherwise why the operator will not write it, naming the
    child, what holds it and what a person can do. Another resource's child (even one of an earlier resource
    of the same kind and name, which the garbage collector has not removed yet) is never written over: two
    owners applying one object would take it from each other on every pass."""
    if controlled_by(child, owner.uid):
        return None
    what = f"{kind}/{clean((child.get('metadata') or {}).get('name'))[:253]}"
    ref = controller_ref(child)
    if ref is None:
        return (
            f"{what} already exists and was created outside tuneops (it has no controller owner); tuneops does "
            f"not write over it: delete that {kind} or rename this {owner.kind}"
        )
    holder = f"{clean(ref.get('kind'))[:63]}/{clean(ref.get('name'))[:253]}"
    if (ref.get("kind"), ref.get("name")) == (owner.kind, owner.name):
        return (
            f"{what} is still held by {holder} of uid {clean(ref.get('uid'))[:40]}, an earlier {owner.kind} of "
            f"this name: it goes when the garbage collector deletes it (or delete that {kind} now)"
        )
    return (
        f"{what} is held by {holder}; tuneops never takes one resource's child for another: rename this "
        f"{owner.kind} or {holder}"
    )


class StatusBuilder(Generic[SpecT, StatusT]):
    """Accumulates one reconcile's view of the status; conditions keep their transition times when unchanged."""

    def __init__(self, ctx: Context, obj: dict[str, Any], info: KindInfo[SpecT, StatusT]):
        self.ctx = ctx
        self.obj = obj
        self.info = info
        self.owner = owner_of(obj)
        self.generation = int((obj.get("metadata") or {}).get("generation") or 0) or None
        self.before = info.parse_status(obj.get("status"))
        self.status = self.before.model_copy(deep=True)

    def condition(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        value: ConditionStatus = "Unknown" if status is None else ("True" if status else "False")
        self.status.conditions = set_condition(
            self.status.conditions, type_, value, reason, message, self.generation, self.ctx.clock()
        )

    def conclude(self, verdict: Verdict) -> Outcome:
        for cond in verdict.conditions:
            self.condition(*cond)
        return self.finish(requeue=verdict.requeue)

    def gate(self, step: Step, job: dict[str, Any], outcome: JobOutcome, done: str) -> Outcome | None:
        """Record how a step stands (its condition, and Ready unless it succeeded). None: go on to the next
        step; an Outcome: the reconciler returns it (`done` is the condition's message on success)."""
        verdict = judge_step(step, job["metadata"]["name"], outcome, done)
        if verdict.stop:
            return self.conclude(verdict)
        for cond in verdict.conditions:
            self.condition(*cond)
        return None

    def ready(self, message: str) -> Outcome:
        self.condition(READY, True, Reason.SUCCEEDED, message)
        return self.finish()

    def step(self, name: str) -> StepStatus | None:
        for s in self.status.steps or []:
            if s.name == name:
                return s
        return None

    def record_step(self, name: str, job: str, outcome: JobOutcome) -> JobOutcome:
        state = outcome.state if outcome.state != "Missing" else "Pending"
        entry = StepStatus(
            name=name, job=job, state=state, reason=outcome.reason or None, message=outcome.message or None
        )
        steps = [s for s in self.status.steps or [] if s.name != name]
        steps.append(entry)
        self.status.steps = sorted(steps, key=lambda s: s.name)
        return outcome

    def drop_step(self, name: str) -> None:
        """The spec no longer has this step: forget it, and stop its Job if one still runs."""
        dropped = self.step(name)
        if dropped is not None and dropped.state not in ("Succeeded", "Failed"):
            stop_superseded(self.ctx.kube, self.owner, name)
        if self.status.steps:
            self.status.steps = [s for s in self.status.steps if s.name != name] or None

    def finish(self, requeue: bool = False) -> Outcome:
        """Write the status if (and only if) it changed; emit an Event when Ready's status or reason moves.

        `requeue` asks the caller to look again after the poll interval (a step is still in progress)."""
        self.status.observed_generation = self.generation
        waited_long = self._note_long_wait()
        self.status.phase = derive_phase(self.status.conditions)
        new = self.status.wire()
        old = self.before.wire()
        ready = find(self.status.conditions, READY)
        out = Outcome(
            ready=bool(ready and ready.status == "True"),
            reason=ready.reason if ready else "",
            message=ready.message if ready else "",
            requeue_after=self.ctx.poll_seconds if requeue else None,
        )
        if new == old:
            return out
        meta = self.obj["metadata"]
        rtype = k.TYPES[(self.obj["apiVersion"], self.obj["kind"])]
        # Fields that disappeared must be nulled explicitly in a merge patch.
        patch: dict[str, Any] = {key: None for key in old if key not in new}
        patch.update(new)
        self.ctx.kube.patch_status(rtype, meta["namespace"], meta["name"], patch)
        out.wrote_status = True
        before = find(self.before.conditions, READY)
        moved = (
            before is None or (before.status, before.reason) != (ready.status, ready.reason)
            if ready
            else False
        )
        first_long_wait = waited_long and not (before is not None and WAITING_NOTE in before.message)
        if ready and (moved or first_long_wait):
            warn = (
                first_long_wait
                or (ready.status == "False" and ready.reason in TERMINAL_REASONS | STUCK_REASONS)
                or (ready.status == "True" and ready.reason in SERVING_DEGRADED_REASONS)
            )
            self.ctx.kube.event(
                self.obj, "Warning" if warn else "Normal", ready.reason, ready.message or ready.reason
            )
            out.events.append(ready.reason)
        return out

    def _note_long_wait(self) -> bool:
        """Ready=False/WaitingForSource for longer than the config's waitingWarningSeconds: Ready's message
        says so and what to check (finish then writes one Warning Event). True when that is the case."""
        limit = self.ctx.config.waiting_warning_seconds
        ready = find(self.status.conditions, READY)
        if not limit or ready is None or ready.status != "False" or ready.reason != Reason.WAITING_FOR_SOURCE:
            return False
        waited = _seconds_between(ready.last_transition_time, self.ctx.clock())
        if waited is None or waited < limit:
            return False
        if WAITING_NOTE not in ready.message:
            note = (
                f"{WAITING_NOTE} {limit}s: check that the referenced resource exists in this namespace under "
                "that name (kubectl get ftm,qjob), and see its own Ready condition"
            )
            self.condition(READY, False, ready.reason, f"{ready.message}; {note}")
        return True


WAITING_NOTE = "still waiting after"


def _seconds_between(earlier: str | None, later: str) -> float | None:
    try:
        start = dt.datetime.strptime(str(earlier), "%Y-%m-%dT%H:%M:%SZ")
        end = dt.datetime.strptime(later, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return (end - start).total_seconds()


Body = Callable[[StatusBuilder[SpecT, StatusT], SpecT], Outcome]


def reconciler(info: KindInfo[SpecT, StatusT]) -> Callable[[Body[SpecT, StatusT]], Reconcile]:
    """Make `body(status builder, typed spec)` a reconciler of `info`'s kind. A spec that does not validate
    sets Ready=False/InvalidSpec with every offending field named (the API server may not run the CRD's CEL
    rules; a malformed object must never crash the operator)."""

    def wrap(body: Body[SpecT, StatusT]) -> Reconcile:
        @functools.wraps(body)
        def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
            sb = StatusBuilder(ctx, obj, info)
            try:
                spec = info.parse_spec(obj)
            except SpecError as err:
                return sb.conclude(
                    Verdict((Cond(READY, False, Reason.INVALID_SPEC, "; ".join(err.problems)),))
                )
            refused = check_pod_policy(spec, ctx.config)
            if refused:
                message = "; ".join(str(p) for p in refused)
                return sb.conclude(Verdict((Cond(READY, False, Reason.NOT_ALLOWED, message),)))
            return body(sb, spec)

        return reconcile

    return wrap


def run_step(sb: StatusBuilder[Any, Any], step: Step, job: dict[str, Any]) -> JobOutcome:
    """Make sure the step's Job exists and report how it is doing.

    A step recorded as finished for this exact Job name is not looked at again: its result is already in
    status, and a failed Job is not re-created (no hot loop) until its inputs change, which changes its name.
    A Job of that name that this resource does not control (another resource's, or one a person made) is
    neither written nor observed: the step stays Pending with reason NameConflict naming both, looked at again
    on every poll until that Job is gone.
    When the name moves on from the one recorded, the step's earlier Jobs still running are deleted: only the
    Job of the current inputs writes the step's output.

    Retry: a step that failed is run again, without a spec change, when the resource's tuneops.io/refresh
    annotation has a value this step's Job did not run under. The retry is the same Job under the name
    `<cr>-<step>-<hash of (Job name, refresh)>` (`retry_job`); `job` is renamed in place, so the caller's
    messages name the Job that runs. A step that succeeded is not re-run by a refresh (except where the
    renderer makes refresh part of the Job itself, as the FineTunedModel's inspect step does).
    """
    kube = sb.ctx.kube
    recorded = sb.step(step.name)
    _retry_if_refreshed(sb, step, job, recorded)
    name = job["metadata"]["name"]
    ns = job["metadata"]["namespace"]
    if recorded is not None and recorded.job == name and recorded.state in ("Succeeded", "Failed"):
        return JobOutcome(recorded.state, recorded.reason or "", recorded.message or "", {})
    existing = read_child(kube, k.JOB, ns, name)
    conflict = name_conflict(sb.owner, k.JOB.kind, existing) if existing is not None else None
    if conflict is not None:
        # Not our Job: neither written nor read (its Pods' results are not this step's), and looked at again
        # until it is gone.
        outcome = JobOutcome("Pending", Reason.NAME_CONFLICT, conflict)
    elif existing is None:
        kube.apply(job)
        outcome = JobOutcome("Pending", Reason.JOB_PENDING)
    else:
        # Only the Pods proven to be this Job's (its controller, running its template): a Pod anyone labels
        # `job-name=<name>` and points at the Job is not its result.
        pods = job_pods(existing, kube.list(k.POD, ns, {"job-name": name}))
        outcome = observe_job(existing, pods, pod_events(kube, ns, pods))
    if recorded is not None and recorded.job != name:
        stop_superseded(kube, sb.owner, step.name, keep=name)
    if outcome.state == "Succeeded" and outcome.result.get("error"):
        outcome = JobOutcome("Failed", Reason.JOB_FAILED, str(outcome.result["error"]), outcome.result)
    return sb.record_step(step.name, name, outcome)


RETRY_OF = f"{GROUP}/retry-of"


def retry_name(owner: Owner, step: str, job: str, refresh: str) -> str:
    """The name of the retry of Job `job` under refresh value `refresh` (same form as every step Job name)."""
    return step_name(owner.name, step, content_hash({"job": job, "refresh": refresh}))


def retry_job(job: dict[str, Any], name: str, refresh: str) -> None:
    """Rename the rendered `job` (in place) to its retry `name`: metadata, the worker's TUNEOPS_JOB_NAME (its
    staging folder), and annotations that say what it retries and under which refresh value."""
    meta = job["metadata"]
    annotations = dict(meta.get("annotations") or {})
    annotations[RETRY_OF] = meta["name"]
    annotations[labels.REFRESH] = refresh
    meta["annotations"] = dict(sorted(annotations.items()))
    meta["name"] = name
    for container in job["spec"]["template"]["spec"].get("containers") or []:
        for env in container.get("env") or []:
            if env.get("name") == JOB_NAME_ENV:
                env["value"] = name


def _retry_if_refreshed(sb: StatusBuilder[Any, Any], step: Step, job: dict[str, Any], recorded: Any) -> None:
    refresh = (sb.obj["metadata"].get("annotations") or {}).get(labels.REFRESH)
    meta = job["metadata"]
    if not refresh or recorded is None or (meta.get("annotations") or {}).get(labels.REFRESH) == refresh:
        return  # no refresh asked, nothing run yet, or refresh already part of this Job's identity
    retry = retry_name(sb.owner, step.name, meta["name"], refresh)
    if recorded.job == retry or (recorded.job == meta["name"] and recorded.state == "Failed"):
        retry_job(job, retry, str(refresh))
    elif recorded.state == "Succeeded" and recorded.job != meta["name"]:
        # A retry under an earlier refresh value that succeeded stays this step's result (while its Job is
        # there to say what it retried): a new refresh value re-runs only what failed.
        prior = read_child(sb.ctx.kube, k.JOB, meta["namespace"], recorded.job)
        said = ((prior or {}).get("metadata") or {}).get("annotations") or {}
        if prior is not None and controlled_by(prior, sb.owner.uid) and said.get(RETRY_OF) == meta["name"]:
            retry_job(job, recorded.job, str(said.get(labels.REFRESH) or ""))


def stop_superseded(kube: k.Kube, owner: Owner, step: str, keep: str | None = None) -> list[str]:
    """Delete the owner's Jobs of `step` that have not finished, except `keep`: their inputs are no longer the
    spec's and they would write the same output. Finished ones stay until their TTL (their logs may be read).
    Returns the names deleted."""
    selector = {labels.OWNER: owner.uid, labels.COMPONENT: step}
    stopped = []
    for job in kube.list(k.JOB, owner.namespace, selector):
        meta = job["metadata"]
        if meta["name"] == keep or meta.get("deletionTimestamp") or job_finished(job):
            continue
        kube.delete(k.JOB, owner.namespace, meta["name"], propagation="Background", uid=meta.get("uid"))
        log.info("deleted Job %s/%s of %s: superseded by %s", owner.namespace, meta["name"], owner.name, keep)
        stopped.append(meta["name"])
    return stopped


__all__ = [
    "Cond",
    "Context",
    "Invalid",
    "Outcome",
    "Reconcile",
    "SpecError",
    "StatusBuilder",
    "Step",
    "Verdict",
    "Waiting",
    "blocked",
    "controlled_by",
    "controller_ref",
    "judge_step",
    "name_conflict",
    "owner_of",
    "read_child",
    "reconciler",
    "retry_hint",
    "retry_job",
    "retry_name",
    "run_step",
    "stop_superseded",
    "utcnow",
]
