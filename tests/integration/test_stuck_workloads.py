"""Stuck and failing workloads against a real API server: the test plays kubelet and the scheduler (Pod status
patches and Events as they write them) and the operator must report the cause as Ready's reason and message,
with an Event on the resource, and turn back when the Pod recovers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.helpers import ftm, job_named
from tests.integration.operator_bed import Cluster, OperatorProcess
from tuneops.kube import client as k
from tuneops.local.controlplane import ControlPlane

GPU = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
Wait = Callable[..., Any]


@pytest.fixture
def kube(control_plane: ControlPlane) -> Iterator[k.Kube]:
    """A client that merge-patches Pod status (lists and container states replaced whole, as a kubelet sends)."""
    yield k.Kube.from_kubeconfig(control_plane.kubeconfig_path, user_agent="kubelet-in-a-test")


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def set_pod_status(kube: k.Kube, ns: str, pod: str, status: dict[str, Any]) -> None:
    kube.patch(k.POD, ns, pod, {"status": status}, subresource="status")


def pod_event(kube: k.Kube, ns: str, pod: dict[str, Any], reason: str, message: str, component: str) -> None:
    """An Event about a Pod, from the scheduler or kubelet."""
    body = k.event_body(
        pod, "Warning", reason, message, source={"component": component}, reporting=(component, None)
    )
    kube.create(k.EVENT, ns, body)


def scheduled(value: str, message: str = "") -> list[dict[str, Any]]:
    cond = {"type": "PodScheduled", "status": value, "lastTransitionTime": now()}
    if value == "False":
        cond |= {"reason": "Unschedulable", "message": message}
    return [cond]


def waiting(name: str, image: str, reason: str, message: str = "", restarts: int = 0,
            last: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    cs: dict[str, Any] = {"name": name, "image": image, "imageID": "", "ready": False, "restartCount": restarts,
                          "state": {"waiting": {"reason": reason, "message": message}}}  # fmt: skip
    if last is not None:
        cs["lastState"] = {"terminated": {"startedAt": now(), "finishedAt": now(), **last}}
    return cs


def ready_of(cluster: Cluster, plural: str, ns: str, name: str) -> dict[str, Any]:
    return cluster.ready(plural, ns, name) or {}


def wait_reason(cluster: Cluster, plural: str, ns: str, name: str, reason: str, wait: Wait) -> dict[str, Any]:
    """Wait for Ready=False with `reason`; returns the whole status."""
    wait(lambda: ready_of(cluster, plural, ns, name).get("reason") == reason, timeout=30,
         what=f"{plural}/{name} Ready reason {reason} (now {ready_of(cluster, plural, ns, name)})")  # fmt: skip
    obj = cluster.get(plural, ns, name)
    assert obj is not None
    status: dict[str, Any] = obj["status"]
    return status


def event_of(cluster: Cluster, ns: str, name: str, reason: str, wait: Wait) -> Any:
    return wait(
        lambda: next((e for e in cluster.events(ns, name) if e.reason == reason and e.source.component == "tuneops"), None),
        timeout=15,
        what=f"a {reason} Event on {name}",
    )  # fmt: skip


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_a_stuck_step_names_its_cause_and_recovers(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, kube: k.Kube, namespace: str, wait_until: Wait
) -> None:
    """One inspect Pod through what a real cluster reports on day 2: no GPU, the image, a Secret, a volume."""
    ns = namespace
    kubectl.apply(ftm("m"), namespace=ns)
    job = job_named(cluster, ns, "inspect", wait_until)
    pod = wait_until(lambda: kube.list(k.POD, ns, {"job-name": job.metadata.name}), what="the inspect Pod")[0]
    name, image = pod["metadata"]["name"], pod["spec"]["containers"][0]["image"]
    container = pod["spec"]["containers"][0]["name"]

    # The scheduler finds no node with a free GPU.
    set_pod_status(kube, ns, name, {"phase": "Pending", "conditions": scheduled("False", GPU)})
    pod_event(kube, ns, pod, "FailedScheduling", GPU, "default-scheduler")
    status = wait_reason(cluster, "finetunedmodels", ns, "m", "Unschedulable", wait_until)
    ready = conditions(status)["Ready"]
    assert ready["status"] == "False" and status["phase"] == "Pending"
    assert (
        f"pod {name} cannot be scheduled" in ready["message"]
        and "Insufficient nvidia.com/gpu" in ready["message"]
    )
    assert conditions(status)["Inspected"]["reason"] == "Unschedulable"
    event = event_of(cluster, ns, "m", "Unschedulable", wait_until)
    assert event.type == "Warning" and "Insufficient nvidia.com/gpu" in event.message

    # Placed on a node whose registry does not have the image.
    pulled = f'rpc error: code = NotFound desc = failed to pull and unpack image "{image}": not found'
    set_pod_status(kube, ns, name, {"phase": "Pending", "conditions": scheduled("True"),
                                    "containerStatuses": [waiting(container, image, "ErrImagePull", pulled)]})  # fmt: skip
    status = wait_reason(cluster, "finetunedmodels", ns, "m", "ImagePullBackOff", wait_until)
    message = conditions(status)["Ready"]["message"]
    assert f'container "{container}": image "{image}" cannot be pulled (ErrImagePull)' in message
    assert status["phase"] == "Pending" and len(message) < 400
    assert event_of(cluster, ns, "m", "ImagePullBackOff", wait_until).type == "Warning"
    steps = {s["name"]: s for s in status["steps"]}
    assert steps["inspect"]["reason"] == "ImagePullBackOff" and steps["inspect"]["state"] == "Pending"

    # The image is there now, but the token Secret is not.
    missing = 'secret "hf-token" not found'
    set_pod_status(kube, ns, name, {"phase": "Pending", "conditions": scheduled("True"), "containerStatuses": [
        waiting(container, image, "CreateContainerConfigError", missing)]})  # fmt: skip
    status = wait_reason(cluster, "finetunedmodels", ns, "m", "CreateContainerConfigError", wait_until)
    assert missing in conditions(status)["Ready"]["message"]
    assert event_of(cluster, ns, "m", "CreateContainerConfigError", wait_until).type == "Warning"

    # A volume's Secret is missing: kubelet says so only in a FailedMount Event.
    mount = 'MountVolume.SetUp failed for volume "creds" : secret "s3-creds" not found'
    set_pod_status(kube, ns, name, {"phase": "Pending", "conditions": scheduled("True"), "containerStatuses": [
        waiting(container, image, "ContainerCreating")]})  # fmt: skip
    pod_event(kube, ns, pod, "FailedMount", mount, "kubelet")
    status = wait_reason(cluster, "finetunedmodels", ns, "m", "VolumeMountFailed", wait_until)
    assert 'secret "s3-creds" not found' in conditions(status)["Ready"]["message"]

    # Everything fixed: the Pod runs, and the resource says so.
    set_pod_status(kube, ns, name, {"phase": "Running", "conditions": scheduled("True"), "containerStatuses": [
        {"name": container, "image": image, "imageID": "", "ready": True, "restartCount": 0,
         "state": {"running": {"startedAt": now()}}}]})  # fmt: skip
    status = wait_reason(cluster, "finetunedmodels", ns, "m", "JobRunning", wait_until)
    assert status["phase"] == "Running"
    assert event_of(cluster, ns, "m", "JobRunning", wait_until).type == "Normal"


def s3_isvc() -> dict[str, Any]:
    """llama.cpp on a GGUF file in S3: the Deployment is made at once, with the `fetch-model` init container."""
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "edge"},
        "spec": {"model": {"uri": "s3://models/tiny", "file": "model-Q4_K_M.gguf", "tokenSecretRef": {"name": "aws"}},
                 "runtime": "llamacpp",
                 "resources": {"cpu": 1, "memory": "2Gi"}},
    }  # fmt: skip


def test_a_failing_serving_pod_names_its_cause(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, kube: k.Kube, namespace: str, wait_until: Wait
) -> None:
    """The fetch init container fails, then the server crash-loops, then the Deployment passes its deadline."""
    ns = namespace
    kubectl.apply(s3_isvc(), namespace=ns)
    deployment = wait_until(lambda: kube.get(k.DEPLOYMENT, ns, "edge"), what="the Deployment")
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod = wait_until(lambda: kube.list(k.POD, ns, selector), what="a serving Pod")[0]
    name = pod["metadata"]["name"]
    server, fetch = pod["spec"]["containers"][0], pod["spec"]["initContainers"][0]
    assert fetch["name"] == "fetch-model"

    # The init container cannot read the model: Init:CrashLoopBackOff with the worker's error.
    error = json.dumps({"error": "s3://models/tiny: AccessDenied (check the Secret's AWS_ACCESS_KEY_ID)"})
    set_pod_status(kube, ns, name, {"phase": "Pending", "conditions": scheduled("True"),
        "initContainerStatuses": [waiting(fetch["name"], fetch["image"], "CrashLoopBackOff", "back-off 20s restarting",
                                          restarts=2, last={"exitCode": 1, "reason": "Error", "message": error})],
        "containerStatuses": [waiting(server["name"], server["image"], "PodInitializing")]})  # fmt: skip
    status = wait_reason(cluster, "inferenceservices", ns, "edge", "InitContainerFailed", wait_until)
    conds = conditions(status)
    message = conds["Ready"]["message"]
    assert (
        f'pod {name} init container "fetch-model" failed (restarted 2 times; exit code 1, Error)' in message
    )
    assert "AccessDenied" in message and "0/1 replicas ready" in message
    assert (conds["Available"]["status"], conds["Available"]["reason"]) == ("False", "InitContainerFailed")
    assert status["phase"] == "Failed"
    assert event_of(cluster, ns, "edge", "InitContainerFailed", wait_until).type == "Warning"

    # The model is fetched; the server crash-loops with its log tail as termination message.
    tail = "llama_model_load: error loading model: tensor 'blk.0.attn_q.weight' has wrong shape"
    set_pod_status(kube, ns, name, {"phase": "Running", "conditions": scheduled("True"),
        "initContainerStatuses": [{"name": fetch["name"], "image": fetch["image"], "imageID": "", "ready": True,
                                   "restartCount": 2, "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                                               "startedAt": now(), "finishedAt": now()}}}],
        "containerStatuses": [waiting(server["name"], server["image"], "CrashLoopBackOff",
                                      f"back-off 40s restarting failed container={server['name']} pod={name}",
                                      restarts=4, last={"exitCode": 1, "reason": "Error", "message": tail})]})  # fmt: skip
    status = wait_reason(cluster, "inferenceservices", ns, "edge", "CrashLoopBackOff", wait_until)
    message = conditions(status)["Ready"]["message"]
    assert f'container "{server["name"]}" keeps crashing (restarted 4 times; exit code 1, Error)' in message
    assert "has wrong shape" in message
    assert event_of(cluster, ns, "edge", "CrashLoopBackOff", wait_until).type == "Warning"

    # The deployment controller gives up on progress.
    deadline = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "edge-1" has timed out progressing.', "lastUpdateTime": now(),
                "lastTransitionTime": now()}  # fmt: skip
    current = kube.get(k.DEPLOYMENT, ns, "edge") or {}
    others = [c for c in (current.get("status") or {}).get("conditions") or [] if c["type"] != "Progressing"]
    kube.patch(
        k.DEPLOYMENT, ns, "edge", {"status": {"conditions": [*others, deadline]}}, subresource="status"
    )
    status = wait_reason(cluster, "inferenceservices", ns, "edge", "ProgressDeadlineExceeded", wait_until)
    message = conditions(status)["Ready"]["message"]
    assert "Deployment edge: ReplicaSet" in message and "keeps crashing" in message
    assert event_of(cluster, ns, "edge", "ProgressDeadlineExceeded", wait_until).type == "Warning"
