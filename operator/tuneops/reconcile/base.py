"""What every reconciler shares: parse the spec, run steps as content-addressed Jobs, write status only on change."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from tuneops.api import KindInfo, SpecError, parse_spec
from tuneops.api.common import BaseStatus, ConditionStatus, StepStatus
from tuneops.api.conditions import READY, TERMINAL_REASONS, Reason, derive_phase, find, set_condition
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile.jobs import JobOutcome, observe_job

log = logging.getLogger(__name__)


def utcnow() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Context:
    """What a reconciler may use: the API client, the operator's config and a clock."""

    kube: k.Kube
    config: OperatorConfig
    clock: Callable[[], str] = utcnow
    poll_seconds: float = 5.0


@dataclass
class Outcome:
    """What the caller (a kopf handler) does next: nothing, or look again after a delay."""

    requeue_after: float | None = None
    ready: bool = False
    reason: str = ""
    message: str = ""
    wrote_status: bool = False
    events: list[str] = field(default_factory=list)


class Waiting(Exception):
    """The resource waits for something outside it (a source to become Ready)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Invalid(Exception):
    """The spec cannot work as written (beyond schema checks); the person must change it."""

    def __init__(self, message: str, reason: str = Reason.INVALID_SPEC):
        super().__init__(message)
        self.message = message
        self.reason = reason


def parse_status(info: KindInfo, raw: Any) -> BaseStatus:
    """The current status as the model; fields written by others (or garbage) are dropped, never fatal."""
    if not isinstance(raw, dict):
        return info.status()
    known = {f.alias or name for name, f in info.status.model_fields.items()}
    try:
        return info.status.model_validate({key: v for key, v in raw.items() if key in known}, by_alias=True)
    except ValidationError:
        return info.status()


class StatusBuilder:
    """Accumulates one reconcile's view of the status; conditions keep their transition times when unchanged."""

    def __init__(self, ctx: Context, obj: dict[str, Any], info: KindInfo):
        self.ctx = ctx
        self.obj = obj
        self.info = info
        self.generation = int((obj.get("metadata") or {}).get("generation") or 0) or None
        self.before = parse_status(info, obj.get("status"))
        self.status = self.before.model_copy(deep=True)

    def spec(self) -> BaseModel | None:
        """The validated spec, or None after setting Ready=False/InvalidSpec with every offending field named
        (the API server may not run the CRD's CEL rules; a malformed object must never crash the operator)."""
        try:
            return parse_spec(self.info.kind, self.obj)
        except SpecError as err:
            self.condition(READY, False, Reason.INVALID_SPEC, "; ".join(err.problems))
            return None

    def condition(self, type_: str, status: bool | None, reason: str, message: str = "") -> None:
        value: ConditionStatus = "Unknown" if status is None else ("True" if status else "False")
        self.status.conditions = set_condition(
            self.status.conditions, type_, value, reason, message, self.generation, self.ctx.clock()
        )

    def step(self, name: str) -> StepStatus | None:
        for s in self.status.steps or []:
            if s.name == name:
                return s
        return None

    def record_step(self, name: str, job: str, outcome: JobOutcome) -> None:
        state = outcome.state if outcome.state != "Missing" else "Pending"
        entry = StepStatus(
            name=name, job=job, state=state, reason=outcome.reason or None, message=outcome.message or None
        )
        steps = [s for s in self.status.steps or [] if s.name != name]
        steps.append(entry)
        self.status.steps = sorted(steps, key=lambda s: s.name)

    def drop_step(self, name: str) -> None:
        if self.status.steps:
            self.status.steps = [s for s in self.status.steps if s.name != name] or None

    def finish(self, requeue: bool = False) -> Outcome:
        """Write the status if (and only if) it changed; emit an Event when Ready's status or reason moves.

        `requeue` asks the caller to look again after the poll interval (a step is still in progress)."""
        self.status.observed_generation = self.generation
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
        if ready and (before is None or (before.status, before.reason) != (ready.status, ready.reason)):
            warn = ready.status == "False" and ready.reason in TERMINAL_REASONS
            self.ctx.kube.event(
                self.obj, "Warning" if warn else "Normal", ready.reason, ready.message or ready.reason
            )
            out.events.append(ready.reason)
        return out


def run_step(ctx: Context, sb: StatusBuilder, step: str, job: dict[str, Any]) -> JobOutcome:
    """Make sure the step's Job exists and report how it is doing.

    A step recorded as finished for this exact Job name is not looked at again: its result is already in
    status, and a failed Job is not re-created (no hot loop) until its inputs change, which changes its name.
    """
    name = job["metadata"]["name"]
    ns = job["metadata"]["namespace"]
    recorded = sb.step(step)
    if recorded is not None and recorded.job == name and recorded.state in ("Succeeded", "Failed"):
        return JobOutcome(recorded.state, recorded.reason or "", recorded.message or "", {})
    existing = ctx.kube.get(k.JOB, ns, name)
    if existing is None:
        ctx.kube.apply(job)
        outcome = JobOutcome("Pending", Reason.JOB_PENDING)
    else:
        pods = ctx.kube.list(k.POD, ns, {"job-name": name})
        outcome = observe_job(existing, pods)
    if outcome.state == "Succeeded" and outcome.result.get("error"):
        outcome = JobOutcome("Failed", Reason.JOB_FAILED, str(outcome.result["error"]), outcome.result)
    sb.record_step(step, name, outcome)
    return outcome


def parse(info: KindInfo, obj: dict[str, Any]) -> BaseModel:
    return parse_spec(info.kind, obj)


__all__ = [
    "Context",
    "Invalid",
    "Outcome",
    "SpecError",
    "StatusBuilder",
    "Waiting",
    "parse",
    "run_step",
    "utcnow",
]
