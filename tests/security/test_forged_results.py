"""A step's result comes only from a Pod proven to be its Job's own: a Pod a tenant makes, with the Job's labels and
an ownerReference to it, that exits 0 first with a result of its choosing, changes nothing."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneops.reconcile.jobs import job_pod, job_pods, observe_job

GOLDEN = Path(__file__).parent.parent / "unit" / "golden" / "finetunedmodel-default.yaml"
FORGED = json.dumps({"artifact": {"uri": "pvc://evil/x", "digest": "sha256:" + "0" * 64}})


def _job() -> dict[str, Any]:
    job = next(d for d in yaml.safe_load_all(GOLDEN.read_text()) if d and d["kind"] == "Job")
    job["metadata"]["uid"] = "job-uid"
    return dict(job)


def _pod_of(job: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A Pod as the Job controller makes it: the template, its controller reference, and what admission adds."""
    pod_spec = copy.deepcopy(job["spec"]["template"]["spec"])
    pod_spec.update(spec)
    pod_spec.setdefault("serviceAccountName", "default")
    pod_spec["nodeName"] = "node-1"
    for c in pod_spec["containers"]:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("imagePullPolicy", "IfNotPresent")
    return {
        "metadata": {
            "name": f"{job['metadata']['name']}-abcde",
            "labels": {"job-name": job["metadata"]["name"], "controller-uid": "job-uid"},
            "ownerReferences": [
                {"kind": "Job", "name": job["metadata"]["name"], "uid": "job-uid", "controller": True}
            ],
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": pod_spec,
        "status": {
            "phase": "Succeeded",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 0, "message": FORGED}}}],
        },
    }


def _edit(pod: dict[str, Any], what: str) -> dict[str, Any]:
    c = pod["spec"]["containers"][0]
    if what == "image":
        c["image"] = "evil.example/worker:1"
    elif what == "args":
        c["args"] = [*c.get("args", []), "--output", "pvc://evil/x"]
    elif what == "command":
        c["command"] = ["sh", "-c", f"echo '{FORGED}' > /dev/termination-log"]
    elif what == "env":
        c["env"] = [*c.get("env", []), {"name": "EXTRA", "value": "1"}]
    elif what == "mount":
        c["volumeMounts"] = [*c.get("volumeMounts", []), {"name": "evil", "mountPath": "/scratch/evil"}]
        pod["spec"]["volumes"] = [*pod["spec"].get("volumes", []), {"name": "evil", "emptyDir": {}}]
    elif what == "volume":
        name = c["volumeMounts"][0]["name"]
        pod["spec"]["volumes"] = [
            {"name": name, "persistentVolumeClaim": {"claimName": "evil"}} if v["name"] == name else v
            for v in pod["spec"]["volumes"]
        ]
    elif what == "sidecar":
        pod["spec"]["containers"].append({"name": "x", "image": "evil.example/x"})
    elif what == "service-account":
        pod["spec"]["serviceAccountName"] = "builder"
    elif what == "owner":
        pod["metadata"]["ownerReferences"][0]["uid"] = "other"
    elif what == "not-controller":
        pod["metadata"]["ownerReferences"][0]["controller"] = False
    return pod


def test_the_job_controllers_own_pod_is_proven() -> None:
    job = _job()
    assert job_pod(job, _pod_of(job))
    token = {
        "name": "kube-api-access-x1y2z",
        "projected": {
            "sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt"}},
            ]
        },
    }
    with_token = _pod_of(job)
    with_token["spec"]["volumes"].append(token)
    for c in with_token["spec"]["containers"]:
        c["volumeMounts"].append(
            {"name": token["name"], "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}
        )
    assert job_pod(job, with_token), "the token the API server mounts is not a difference"


@pytest.mark.parametrize(
    "what",
    [
        "image",
        "args",
        "command",
        "env",
        "mount",
        "volume",
        "sidecar",
        "service-account",
        "owner",
        "not-controller",
    ],
)
def test_a_forged_pod_is_not_the_jobs_result(what: str) -> None:
    job = _job()
    forged = _edit(_pod_of(job), what)
    assert not job_pod(job, forged)
    running = {**job, "status": {"active": 1}}
    outcome = observe_job(running, job_pods(running, [forged]))
    assert outcome.state != "Succeeded" and "evil" not in json.dumps(outcome.result)
    # Even once the Job controller (which counts what claims it) calls the Job Complete, the forged message is
    # not its result.
    complete = {**job, "status": {"conditions": [{"type": "Complete", "status": "True"}]}}
    outcome = observe_job(complete, job_pods(complete, [forged]))
    assert "evil" not in json.dumps(outcome.result)
