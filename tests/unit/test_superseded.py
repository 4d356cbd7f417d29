"""Which of a step's Jobs are deleted when the step moves on to a new Job (the API calls, against a recording
fake): only the owner's Jobs of that step that still run, never the current one."""

from __future__ import annotations

from typing import Any

import pytest

from tuneops import labels
from tuneops.kube import client as k
from tuneops.reconcile.base import stop_superseded
from tuneops.render.types import Owner

OWNER = Owner("tuneops.io/v1alpha1", "FineTunedModel", "m", "team-a", "uid-1")


class FakeKube:
    """Answers the Job list by selector and records deletions."""

    def __init__(self, jobs: list[dict[str, Any]]):
        self.jobs = jobs
        self.deleted: list[tuple[str, str | None, str]] = []
        self.selectors: list[dict[str, str]] = []

    def list(self, rtype: k.ResourceType, namespace: str, selector: dict[str, str]) -> list[dict[str, Any]]:
        assert rtype == k.JOB and namespace == OWNER.namespace
        self.selectors.append(selector)
        return [j for j in self.jobs if all(j["metadata"]["labels"].get(a) == b for a, b in selector.items())]

    def delete(
        self, rtype: k.ResourceType, namespace: str, name: str, propagation: str, uid: str | None
    ) -> None:
        self.deleted.append((name, uid, propagation))


def _job(
    name: str, step: str = "merge", state: str = "", owner: str = "uid-1", deleting: bool = False
) -> Any:
    meta: dict[str, Any] = {"name": name, "uid": f"u-{name}",
                            "labels": {labels.OWNER: owner, labels.COMPONENT: step}}  # fmt: skip
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    conds = [{"type": state, "status": "True"}] if state else []
    return {"metadata": meta, "status": {"conditions": conds}}


@pytest.mark.parametrize(
    ("jobs", "keep", "deleted"),
    [
        ([_job("m-merge-old"), _job("m-merge-new")], "m-merge-new", ["m-merge-old"]),
        (
            [_job("m-merge-a"), _job("m-merge-b"), _job("m-merge-new")],
            "m-merge-new",
            ["m-merge-a", "m-merge-b"],
        ),
        ([_job("m-merge-done", state="Complete"), _job("m-merge-failed", state="Failed")], "m-merge-new", []),
        ([_job("m-merge-going", deleting=True)], "m-merge-new", []),
        ([_job("m-inspect-x", step="inspect")], "m-merge-new", []),
        ([_job("other-merge-x", owner="uid-2")], "m-merge-new", []),
        ([_job("m-merge-old")], None, ["m-merge-old"]),
    ],
    ids=[
        "superseded",
        "several",
        "finished-stay",
        "already-going",
        "other-step",
        "other-owner",
        "step-dropped",
    ],
)
def test_only_the_steps_running_jobs_other_than_the_current_one_are_deleted(
    jobs: list[dict[str, Any]], keep: str | None, deleted: list[str]
) -> None:
    kube = FakeKube(jobs)
    assert stop_superseded(kube, OWNER, "merge", keep=keep) == deleted  # type: ignore[arg-type]
    assert kube.selectors == [{labels.OWNER: "uid-1", labels.COMPONENT: "merge"}]
    # Background: the Pods go with the Job; the uid: never a Job re-created under that name meanwhile.
    assert kube.deleted == [(name, f"u-{name}", "Background") for name in deleted]
