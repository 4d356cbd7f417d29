"""Conditions: transitions move lastTransitionTime only on a status flip; phase derives from Ready; every
step of a reconciler reports its outcome the same way."""

from __future__ import annotations

import pytest

from tuneops.api.common import check_uri
from tuneops.api.conditions import (
    AVAILABLE,
    DEGRADED,
    MERGED,
    READY,
    Reason,
    derive_phase,
    find,
    set_condition,
)
from tuneops.reconcile.base import Step, judge_step
from tuneops.reconcile.jobs import JobOutcome


def test_unchanged_condition_is_identical() -> None:
    first = set_condition(None, READY, "False", Reason.JOB_RUNNING, "merging", 1, "2026-01-01T00:00:00Z")
    again = set_condition(first, READY, "False", Reason.JOB_RUNNING, "merging", 1, "2026-01-01T00:05:00Z")
    assert again == first


def test_reason_change_keeps_transition_time_but_status_flip_moves_it() -> None:
    a = set_condition(None, READY, "False", Reason.JOB_PENDING, "", 1, "t1")
    b = set_condition(a, READY, "False", Reason.JOB_RUNNING, "", 1, "t2")
    assert find(b, READY).last_transition_time == "t1"  # type: ignore[union-attr]
    c = set_condition(b, READY, "True", Reason.SUCCEEDED, "", 1, "t3")
    assert find(c, READY).last_transition_time == "t3"  # type: ignore[union-attr]
    assert len(c) == 1


@pytest.mark.parametrize(
    ("status", "reason", "phase"),
    [
        ("True", Reason.SUCCEEDED, "Ready"),
        ("False", Reason.WAITING_FOR_SOURCE, "Waiting"),
        ("False", Reason.JOB_RUNNING, "Running"),
        ("False", Reason.OOM_KILLED, "Failed"),
        ("False", Reason.QUALITY_GATE_FAILED, "Failed"),
        ("False", Reason.INVALID_SPEC, "Failed"),
        ("Unknown", Reason.JOB_PENDING, "Pending"),
    ],
)
def test_phase_is_derived_from_ready(status: str, reason: str, phase: str) -> None:
    conds = set_condition(None, READY, status, reason, "", 1, "t")  # type: ignore[arg-type]
    assert derive_phase(conds) == phase


@pytest.mark.parametrize(
    ("ready", "available", "degraded", "phase"),
    [
        # serving but degraded: Ready=True reason Degraded, the Degraded condition names the cause
        (("True", Reason.DEGRADED), ("True", Reason.MINIMUM_REPLICAS_AVAILABLE), ("True", Reason.ADAPTER_LOAD_FAILED),
         "Ready"),
        # a terminal Ready reason written while a replica serves (older operators did): still not Failed
        (("False", Reason.ADAPTER_LOAD_FAILED), ("True", Reason.MINIMUM_REPLICAS_AVAILABLE), None, "Running"),
        (("False", Reason.PROGRESS_DEADLINE_EXCEEDED), ("True", Reason.MINIMUM_REPLICAS_AVAILABLE), None, "Running"),
        (("False", Reason.ADAPTERS_LOADING), ("True", Reason.MINIMUM_REPLICAS_AVAILABLE), None, "Running"),
        # nothing serves: the terminal reason is Failed, a Pod that never started Pending
        (("False", Reason.CRASH_LOOP_BACK_OFF), ("False", Reason.CRASH_LOOP_BACK_OFF), ("False", Reason.NOT_SERVING),
         "Failed"),
        (("False", Reason.IMAGE_PULL_BACK_OFF), ("False", Reason.IMAGE_PULL_BACK_OFF), None, "Pending"),
        (("False", Reason.DEPLOYING), ("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE), None, "Running"),
    ],
)  # fmt: skip
def test_phase_of_a_service_follows_what_serves(
    ready: tuple[str, str], available: tuple[str, str], degraded: tuple[str, str] | None, phase: str
) -> None:
    conds = set_condition(None, AVAILABLE, available[0], available[1], "", 1, "t")  # type: ignore[arg-type]
    if degraded is not None:
        conds = set_condition(conds, DEGRADED, degraded[0], degraded[1], "", 1, "t")  # type: ignore[arg-type]
    conds = set_condition(conds, READY, ready[0], ready[1], "", 1, "t")  # type: ignore[arg-type]
    assert derive_phase(conds) == phase


def test_phase_without_conditions_is_pending() -> None:
    assert derive_phase(None) == "Pending"


@pytest.mark.parametrize(
    "uri",
    [
        "pvc://claim/../../etc",
        "file:///models/../etc/passwd",
        "ftp://host/x",
        "http://example.com/m",
        "pvc://a/b\x00",
    ],
)
def test_hostile_uris_are_refused(uri: str) -> None:
    with pytest.raises(ValueError):
        check_uri(uri)


@pytest.mark.parametrize(
    "uri", ["pvc://models/mistral-7b", "s3://bucket/prefix/x", "hf://org/name@main", "file:///tmp/m"]
)
def test_good_uris_pass(uri: str) -> None:
    assert check_uri(uri) == uri


MERGE = Step("merge", MERGED, "merging", "merge failed")


@pytest.mark.parametrize(
    ("outcome", "step", "ready", "stop", "requeue", "message"),
    [
        (JobOutcome("Pending", Reason.JOB_PENDING), ("Unknown", Reason.JOB_PENDING), ("False", Reason.JOB_PENDING),
         True, True, "merge Job m-merge-1: Pending"),
        (JobOutcome("Running", Reason.JOB_RUNNING), ("Unknown", Reason.JOB_RUNNING), ("False", Reason.JOB_RUNNING),
         True, True, "merge Job m-merge-1: Running"),
        (JobOutcome("Failed", Reason.OOM_KILLED, "ran out of memory"), ("False", Reason.OOM_KILLED),
         ("False", Reason.OOM_KILLED), True, False, "merge failed: ran out of memory"),
        (JobOutcome("Failed"), ("False", Reason.JOB_FAILED), ("False", Reason.JOB_FAILED), True, False,
         "merge failed: JobFailed"),
        (JobOutcome("Succeeded"), ("True", Reason.SUCCEEDED), None, False, False, ""),
        (JobOutcome("Pending", Reason.IMAGE_PULL_BACK_OFF, 'pod m-merge-1-x: image "w:9" cannot be pulled'),
         ("Unknown", Reason.IMAGE_PULL_BACK_OFF), ("False", Reason.IMAGE_PULL_BACK_OFF), True, True,
         'merge Job m-merge-1: pod m-merge-1-x: image "w:9"'),
    ],
)  # fmt: skip
def test_every_step_reports_the_same_way(
    outcome: JobOutcome,
    step: tuple[str, str],
    ready: tuple[str, str] | None,
    stop: bool,
    requeue: bool,
    message: str,
) -> None:
    """A failed step stops until its inputs change; one in progress stops and looks again; success goes on."""
    verdict = judge_step(MERGE, "m-merge-1", outcome, "merged into pvc://x")
    status = {True: "True", False: "False", None: "Unknown"}
    got = {c.type: (status[c.status], c.reason) for c in verdict.conditions}
    assert got.pop(MERGED) == step
    assert got.get(READY) == ready
    assert (verdict.stop, verdict.requeue) == (stop, requeue)
    assert all(message in c.message for c in verdict.conditions if c.type == READY)
