"""Stuck and failing Pods on the local node, written as the kubelet, the scheduler and the controllers write them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.integration.local_node_support import (
    IMAGE,
    OTHER_IMAGE,
    deployment_manifest,
    events,
    in_phase,
    make_claim,
    pod_manifest,
    read_pod,
    running_node,
    waiting,
    watch_pod,
)
from tuneops.local.controlplane import ControlPlane
from tuneops.local.node import LocalNode

# Back-off 2 s doubling to 8 s: short enough for a test, long enough to see each state between retries.
BASE_S, MAX_S = 2.0, 8.0


@pytest.fixture(scope="module")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    with running_node(
        control_plane, tmp_path_factory.mktemp("node"), backoff_base_s=BASE_S, backoff_max_s=MAX_S
    ) as n:
        yield n


@pytest.fixture
def core(kube_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


def _rv(core: client.CoreV1Api, ns: str) -> str:
    return str(core.list_namespaced_pod(ns).metadata.resource_version)


def _messages(core: client.CoreV1Api, ns: str, name: str) -> list[tuple[str, str, str]]:
    return [(e.type, e.reason, e.message) for e in events(core, ns, name)]


def _container(pod: dict[str, Any], init: bool = False) -> dict[str, Any]:
    key = "initContainerStatuses" if init else "containerStatuses"
    statuses = (pod.get("status") or {}).get(key) or [{}]
    return dict(statuses[0])


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in pod["status"]["conditions"] if c["type"] == type_)


def _mounting(name: str, script: str, path: str, volume: dict[str, Any]) -> dict[str, Any]:
    mounts = [{"name": volume["name"], "mountPath": path}]
    return pod_manifest(name, script, container={"volumeMounts": mounts}, volumes=[volume])


def test_unknown_image_fails_to_pull_then_backs_off(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    since = _rv(core, namespace)
    core.create_namespaced_pod(namespace, pod_manifest("pull", "print(1)", container={"image": OTHER_IMAGE}))

    reasons: list[str] = []

    def second_pull(pod: dict[str, Any]) -> bool:
        reason = waiting(_container(pod)).get("reason")
        if reason and (not reasons or reasons[-1] != reason):
            reasons.append(reason)
        return reasons.count("ErrImagePull") == 2

    seen = watch_pod(core, namespace, "pull", since, second_pull, timeout=60)
    # ErrImagePull on each attempt, ImagePullBackOff while waiting for the next one, as `kubectl get` shows.
    assert [r for r in reasons if r != "ContainerCreating"] == [
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImagePull",
    ]
    pulled = waiting(_container(seen[-1]))
    assert pulled["message"].startswith(
        f'rpc error: code = NotFound desc = failed to pull and unpack image "{OTHER_IMAGE}"'
    )
    backoff = next(
        waiting(_container(p)) for p in seen if waiting(_container(p)).get("reason") == "ImagePullBackOff"
    )
    assert backoff == {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{OTHER_IMAGE}"'}
    assert seen[-1]["status"]["phase"] == "Pending"

    found = _messages(core, namespace, "pull")
    assert ("Normal", "Pulling", f'Pulling image "{OTHER_IMAGE}"') in found
    assert ("Warning", "Failed", f'Failed to pull image "{OTHER_IMAGE}": {pulled["message"]}') in found
    assert ("Warning", "Failed", "Error: ErrImagePull") in found
    assert ("Normal", "BackOff", f'Back-off pulling image "{OTHER_IMAGE}"') in found
    assert ("Warning", "Failed", "Error: ImagePullBackOff") in found


def test_gpu_pod_is_unschedulable_with_the_schedulers_message(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    gpu = pod_manifest("gpu", "print(1)", container={"resources": {"limits": {"nvidia.com/gpu": "1"}}})
    core.create_namespaced_pod(namespace, gpu)
    message = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."

    found = wait_until(lambda: events(core, namespace, "gpu", "FailedScheduling"), timeout=20, what="event")
    assert (found[0].type, found[0].message, found[0].source.component) == (
        "Warning",
        message,
        "default-scheduler",
    )
    pod = read_pod(core, namespace, "gpu")
    assert pod["status"]["phase"] == "Pending" and not pod["spec"].get("nodeName")
    cond = _condition(pod, "PodScheduled")
    assert {k: cond[k] for k in ("status", "reason", "message")} == {
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
    }


def test_missing_secret_or_key_for_env_waits_and_recovers(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    script = "import os, pathlib; pathlib.Path('/dev/termination-log').write_text(os.environ['HF_TOKEN'])"
    env = [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf-token", "key": "HF_TOKEN"}}}]
    core.create_namespaced_pod(namespace, pod_manifest("env", script, container={"env": env}))

    def waiting_with(message: str) -> Callable[[], Any]:
        def check() -> Any:
            w = waiting(_container(read_pod(core, namespace, "env")))
            return w == {"reason": "CreateContainerConfigError", "message": message} and w

        return check

    wait_until(waiting_with('secret "hf-token" not found'), timeout=20, what="missing Secret")
    assert ("Warning", "Failed", 'Error: secret "hf-token" not found') in _messages(core, namespace, "env")

    core.create_namespaced_secret(namespace, {"metadata": {"name": "hf-token"}, "stringData": {"OTHER": "x"}})
    wait_until(
        waiting_with(f"couldn't find key HF_TOKEN in Secret {namespace}/hf-token"), timeout=20, what="key"
    )

    # As the kubelet does, the container starts once the Secret holds the key; nothing else changes.
    core.patch_namespaced_secret("hf-token", namespace, {"stringData": {"HF_TOKEN": "hf_abc"}})
    done = wait_until(in_phase(core, namespace, "env", "Succeeded"), timeout=30, what="Succeeded")
    assert _container(done)["state"]["terminated"]["message"] == "hf_abc"


def test_missing_configmap_volume_stays_container_creating_with_failed_mount(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    pod = _mounting(
        "mount",
        "print(open('/etc/cfg/k').read())",
        "/etc/cfg",
        {"name": "cfg", "configMap": {"name": "settings"}},
    )
    core.create_namespaced_pod(namespace, pod)
    found = wait_until(
        lambda: events(core, namespace, "mount", "FailedMount"), timeout=20, what="FailedMount"
    )
    assert (found[0].type, found[0].message) == (
        "Warning",
        'MountVolume.SetUp failed for volume "cfg" : configmap "settings" not found',
    )
    current = read_pod(core, namespace, "mount")
    assert current["status"]["phase"] == "Pending"
    assert _container(current)["state"] == {"waiting": {"reason": "ContainerCreating"}}

    core.create_namespaced_config_map(namespace, {"metadata": {"name": "settings"}, "data": {"k": "v"}})
    wait_until(in_phase(core, namespace, "mount", "Succeeded"), timeout=30, what="mounted and Succeeded")


def test_missing_claim_is_unschedulable_until_it_exists(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    volume = {"name": "data", "persistentVolumeClaim": {"claimName": "models"}}
    pod = _mounting("claim", "open('/data/x', 'w').write('ok')", "/data", volume)
    core.create_namespaced_pod(namespace, pod)
    message = '0/1 nodes are available: 1 persistentvolumeclaim "models" not found.'
    found = wait_until(lambda: events(core, namespace, "claim", "FailedScheduling"), timeout=20, what="event")
    assert (found[0].type, found[0].message) == ("Warning", message)
    cond = _condition(read_pod(core, namespace, "claim"), "PodScheduled")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "Unschedulable", message)

    make_claim(core, namespace, "models")
    wait_until(in_phase(core, namespace, "claim", "Succeeded"), timeout=30, what="scheduled and Succeeded")
    assert (node.config.root / "pvc" / "models" / "x").read_text() == "ok"


def test_crashing_container_loops_with_doubling_back_off(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    script = "print('loading config'); print('boom: bad config', flush=True); raise SystemExit(3)"
    pod = pod_manifest(
        "crash",
        script,
        restartPolicy="Always",
        container={"terminationMessagePolicy": "FallbackToLogsOnError"},
    )
    since = _rv(core, namespace)
    uid = core.create_namespaced_pod(namespace, pod).metadata.uid

    def looping(p: dict[str, Any]) -> bool:
        return _container(p).get("restartCount", 0) >= 4 and bool(waiting(_container(p)))

    seen = watch_pod(core, namespace, "crash", since, looping, timeout=90)
    messages = []
    for p in seen:
        w = waiting(_container(p))
        if w.get("reason") == "CrashLoopBackOff" and w["message"] not in messages:
            messages.append(w["message"])
    # The first restart is immediate; then 2 s, 4 s, 8 s (the cap here; 10 s doubling to 5m0s by default).
    assert messages[:3] == [
        f"back-off {d} restarting failed container=main pod=crash_{namespace}({uid})"
        for d in ("2s", "4s", "8s")
    ]
    last = _container(seen[-1])
    assert last["restartCount"] >= 4 and seen[-1]["status"]["phase"] == "Running"
    term = last["lastState"]["terminated"]
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    assert term["message"] == "loading config\nboom: bad config"
    assert any(r == "BackOff" and t == "Warning" for t, r, _ in _messages(core, namespace, "crash"))


def test_failing_init_container_keeps_the_pod_pending(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    fetch = {
        "name": "fetch",
        "image": IMAGE,
        "command": ["python3", "-c", "open('/dev/termination-log', 'w').write('403 Forbidden'); exit(1)"],
    }
    pod = pod_manifest("init", "print(1)", restartPolicy="Always", initContainers=[fetch])
    core.create_namespaced_pod(namespace, pod)

    def looping() -> Any:
        p = read_pod(core, namespace, "init")
        init = _container(p, init=True)
        return init.get("restartCount", 0) >= 2 and waiting(init).get("reason") == "CrashLoopBackOff" and p

    pod_now = wait_until(looping, timeout=60, what="Init:CrashLoopBackOff")
    init = _container(pod_now, init=True)
    assert init["lastState"]["terminated"]["exitCode"] == 1
    assert init["lastState"]["terminated"]["message"] == "403 Forbidden"
    assert pod_now["status"]["phase"] == "Pending"
    assert _container(pod_now)["state"] == {"waiting": {"reason": "PodInitializing"}}
    cond = _condition(pod_now, "Initialized")
    assert (cond["status"], cond["reason"], cond["message"]) == (
        "False",
        "ContainersNotInitialized",
        "containers with incomplete status: [fetch]",
    )


def test_deployment_that_never_becomes_ready_exceeds_its_progress_deadline(
    node: LocalNode, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    apps = client.AppsV1Api(kube_api)
    never_ready = {"exec": {"command": ["python3", "-c", "exit(1)"]}, "periodSeconds": 1}
    template = pod_manifest(
        "slow",
        "import time\nwhile True: time.sleep(1)",
        restartPolicy="Always",
        container={"readinessProbe": never_ready},
        terminationGracePeriodSeconds=1,
    )
    deployment = deployment_manifest("slow", 1, template["spec"], progressDeadlineSeconds=5)
    apps.create_namespaced_deployment(namespace, deployment)

    def stalled() -> Any:
        status = apps.read_namespaced_deployment_status("slow", namespace).status
        cond = next((c for c in status.conditions or [] if c.type == "Progressing"), None)
        return cond is not None and cond.status == "False" and cond

    cond = wait_until(stalled, timeout=90, what="ProgressDeadlineExceeded")
    assert cond.reason == "ProgressDeadlineExceeded"
    assert cond.message.startswith('ReplicaSet "slow-') and cond.message.endswith(
        '" has timed out progressing.'
    )
