"""Pods as containers: the local node runs each container with podman from the image `make images` built, and
honours what a kubelet honours (user, read-only root, dropped capabilities, volumes, env from Secrets, the
termination message, the ServiceAccount token). These tests need the images (`make test` builds them)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.local_node_support import ensure_images, in_phase, make_claim, read_pod, running_node
from tuneops.local.cli import container_images
from tuneops.local.controlplane import ControlPlane
from tuneops.local.engine import Engine
from tuneops.local.node import LocalNode
from tuneops.render.pod import RUN_AS_USER, container_defaults, empty_dir, pod_security_context

WORKER = container_images()["worker"]
OPERATOR = "ghcr.io/tuneops/operator:0.1.0"

# What every worker Pod does first: say who it is, try the root filesystem, and use its volumes.
PROBE = r"""
import json, os, pathlib
out = {"uid": os.getuid(), "gid": os.getgid(), "groups": sorted(os.getgroups())}
try:
    pathlib.Path("/written-to-root").write_text("x")
    out["root_write"] = "allowed"
except OSError as err:
    out["root_write"] = err.strerror
pathlib.Path("/scratch/tuneops").mkdir(parents=True, exist_ok=True)
pathlib.Path("/scratch/tuneops/x").write_text("scratch ok")
pathlib.Path("/mnt/pvc/models/result.txt").write_text("written by the container")
out["token"] = os.environ.get("HF_TOKEN")
out["config"] = pathlib.Path("/etc/cfg/mode").read_text()
out["sa_token"] = os.path.exists("/var/run/secrets/kubernetes.io/serviceaccount/token")
out["cap_eff"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("CapEff")][0]
out["no_new_privs"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
print(json.dumps(out))
pathlib.Path("/dev/termination-log").write_text(json.dumps({"artifact": "pvc://models/result.txt"}))
"""


@pytest.fixture(scope="session")
def engine() -> Engine:
    """podman with the project's image storage, holding the images of this tree (`make images`)."""
    ensure_images()
    eng = Engine.default()
    missing = [i for i in (OPERATOR, WORKER) if eng.image_id(i) is None]
    assert not missing, f"make images did not tag {missing}"
    return eng


@pytest.fixture(scope="module")
def node(
    control_plane: ControlPlane, engine: Engine, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalNode]:
    with running_node(control_plane, tmp_path_factory.mktemp("cnode"), engine=engine) as n:
        yield n


def worker_pod(name: str, script: str, image: str = WORKER, **extra: Any) -> dict[str, Any]:
    """A Pod shaped like the operator's worker Pods: its security contexts, emptyDirs and claim mount."""
    container = {
        **container_defaults(),
        "name": "worker",
        "image": image,
        "command": ["python", "-c", script],
        "env": [{"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hub", "key": "token"}}}],
        "volumeMounts": [
            {"name": "scratch", "mountPath": "/scratch"},
            {"name": "models", "mountPath": "/mnt/pvc/models"},
            {"name": "cfg", "mountPath": "/etc/cfg", "readOnly": True},
        ],
        "resources": {"limits": {"memory": "2Gi", "cpu": "1"}},
        **extra,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": pod_security_context(),
            "containers": [container],
            "volumes": [
                empty_dir("scratch", "1Gi"),
                {"name": "models", "persistentVolumeClaim": {"claimName": "models"}},
                {"name": "cfg", "configMap": {"name": "cfg"}},
            ],
        },
    }


def _objects(core: client.CoreV1Api, ns: str) -> None:
    make_claim(core, ns, "models")
    core.create_namespaced_secret(ns, {"metadata": {"name": "hub"}, "stringData": {"token": "hf_secret"}})
    core.create_namespaced_config_map(ns, {"metadata": {"name": "cfg"}, "data": {"mode": "container"}})


def _log(node: LocalNode, ns: str, pod: dict[str, Any], container: str = "worker") -> str:
    folder = node.config.root / "pods" / f"{ns}_{pod['metadata']['name']}_{pod['metadata']['uid'][:8]}"
    return "".join(p.read_text(errors="replace") for p in sorted((folder / "logs" / container).glob("*.log")))


def test_a_worker_pod_runs_as_its_image_under_its_security_context(
    node: LocalNode, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    core = client.CoreV1Api(kube_api)
    _objects(core, namespace)
    core.create_namespaced_pod(namespace, worker_pod("probe", PROBE))
    pod = wait_until(
        in_phase(core, namespace, "probe", "Succeeded", "Failed"), timeout=120, what="probe done"
    )
    status = pod["status"]["containerStatuses"][0]
    log = _log(node, namespace, pod)
    assert pod["status"]["phase"] == "Succeeded", (status, log)
    seen = json.loads(log.strip().splitlines()[-1])
    # The rendered user and group, the fsGroup as a supplementary group; the root filesystem refuses writes.
    assert (seen["uid"], seen["gid"]) == (RUN_AS_USER, RUN_AS_USER)
    assert RUN_AS_USER in seen["groups"]
    assert seen["root_write"] == "Read-only file system"
    # capabilities: drop ALL leaves none; allowPrivilegeEscalation: false sets no_new_privs.
    assert int(seen["cap_eff"], 16) == 0
    assert seen["no_new_privs"] == "1"
    # env from a Secret, a ConfigMap volume, the claim written through fsGroup, the API token mounted.
    assert seen["token"] == "hf_secret"
    assert seen["config"] == "container"
    assert seen["sa_token"] is True
    result = node.config.root / "pvc" / "models" / "result.txt"
    assert result.read_text() == "written by the container"
    term = status["state"]["terminated"]
    assert json.loads(term["message"]) == {"artifact": "pvc://models/result.txt"}
    # The runtime in the IDs, as a kubelet reports them.
    assert term["containerID"].startswith("podman://") and len(term["containerID"]) > len("podman://") + 12
    assert status["imageID"].startswith(WORKER + "@")


def test_an_image_that_lacks_what_the_pod_needs_fails_the_pod(
    node: LocalNode, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """The class of bug container mode exists to catch: process mode runs the host's Python and never
    notices. The operator image has no worker dependencies, and a worker run as another user than the
    one the claim is shared with cannot write its output."""
    core = client.CoreV1Api(kube_api)
    _objects(core, namespace)
    wrong_image = worker_pod("wrong-image", "import transformers", image=OPERATOR)
    core.create_namespaced_pod(namespace, wrong_image)
    wrong_user = worker_pod("wrong-user", PROBE)
    # A user outside the fsGroup and a read-only claim: the write into the claim fails.
    pod_sc = {k: v for k, v in pod_security_context().items() if k != "fsGroup"}
    wrong_user["spec"]["securityContext"] = {**pod_sc, "runAsGroup": 4242}
    wrong_user["spec"]["containers"][0]["securityContext"] = {
        **wrong_user["spec"]["containers"][0]["securityContext"], "runAsUser": 4242,
    }  # fmt: skip
    claim_dir = node.config.root / "pvc" / "models"
    claim_dir.mkdir(parents=True, exist_ok=True)
    claim_dir.chmod(0o755)
    core.create_namespaced_pod(namespace, wrong_user)
    for name, needle in (
        ("wrong-image", "No module named 'transformers'"),
        ("wrong-user", "Permission denied"),
    ):
        pod = wait_until(in_phase(core, namespace, name, "Succeeded", "Failed"), timeout=120, what=name)
        assert pod["status"]["phase"] == "Failed", name
        term = pod["status"]["containerStatuses"][0]["state"]["terminated"]
        assert term["exitCode"] == 1
        assert needle in term.get("message", ""), term  # FallbackToLogsOnError: the traceback's tail


def test_a_missing_image_waits_in_image_pull_back_off(
    node: LocalNode, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    core = client.CoreV1Api(kube_api)
    _objects(core, namespace)
    core.create_namespaced_pod(namespace, worker_pod("absent", "pass", image="ghcr.io/tuneops/absent:0.0.0"))

    def waiting() -> dict[str, Any] | None:
        st = (read_pod(core, namespace, "absent").get("status") or {}).get("containerStatuses") or []
        reason = ((st[0].get("state") or {}).get("waiting") or {}).get("reason") if st else None
        return st[0] if reason in ("ErrImagePull", "ImagePullBackOff") else None

    wait_until(waiting, timeout=30, what="ErrImagePull")
    messages = [e.message for e in core.list_namespaced_event(namespace).items if e.reason == "Failed"]
    assert any("make images" in m for m in messages), messages


def test_deletion_stops_the_container_within_its_grace_period(
    node: LocalNode, engine: Engine, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    core = client.CoreV1Api(kube_api)
    _objects(core, namespace)
    pod = worker_pod("sleeper", "import time; print('up', flush=True); time.sleep(600)")
    pod["spec"]["terminationGracePeriodSeconds"] = 3
    core.create_namespaced_pod(namespace, pod)

    def running_id() -> str | None:
        st = (read_pod(core, namespace, "sleeper").get("status") or {}).get("containerStatuses") or []
        cid = str(st[0].get("containerID") or "") if st and "running" in (st[0].get("state") or {}) else ""
        return cid if cid.startswith("podman://") else None

    cid = wait_until(running_id, timeout=60, what="sleeper running with a container ID")
    assert engine.call("container", "exists", cid.removeprefix("podman://")).returncode == 0
    core.delete_namespaced_pod("sleeper", namespace)

    def gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_until(gone, timeout=30, what="Pod deleted")
    # Python ignores nothing here: SIGTERM ends it at once, and the container is removed with the Pod.
    assert engine.call("container", "exists", cid.removeprefix("podman://")).returncode != 0


def test_claims_keep_their_files_readable_to_the_next_pod(tmp_path: Path) -> None:
    """fsGroup on a claim: group-owned, group-writable, setgid folders (what the next step's Pod relies on)."""
    from tuneops.local.volumes import own_by_group

    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "f").write_text("x")
    own_by_group(tmp_path / "a", 4321)
    for p in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "f"):
        st = p.stat()
        assert st.st_gid == 4321
        assert st.st_mode & 0o060 == 0o060
    assert (tmp_path / "a" / "b").stat().st_mode & 0o2000


def test_a_command_the_image_lacks_is_a_start_error(
    node: LocalNode, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """As a kubelet reports it: the runtime could not start the process, exit code 128, reason StartError with
    the runtime's message (a server image without the entrypoint a rendered Pod relies on fails this way)."""
    core = client.CoreV1Api(kube_api)
    _objects(core, namespace)
    pod = worker_pod("no-such-command", "")
    pod["spec"]["containers"][0]["command"] = ["--model", "/mnt/pvc/models/x.gguf"]
    core.create_namespaced_pod(namespace, pod)
    done = wait_until(in_phase(core, namespace, "no-such-command", "Failed"), timeout=60, what="Failed")
    term = done["status"]["containerStatuses"][0]["state"]["terminated"]
    assert (term["reason"], term["exitCode"]) == ("StartError", 128), term
    assert "executable file not found" in term["message"], term


def test_an_emptydir_over_its_size_limit_evicts_the_pod(
    node: LocalNode, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """A worker that writes more scratch than its sizeLimit is evicted, as the kubelet's local-storage
    eviction does: the bound the operator renders on every emptyDir is real here too."""
    core = client.CoreV1Api(kube_api)
    _objects(core, namespace)
    script = "import os, time; open('/scratch/big', 'wb').write(os.urandom(3 << 20)); time.sleep(600)"
    pod = worker_pod("hog", script)
    pod["spec"]["volumes"][0] = empty_dir("scratch", "1Mi")
    core.create_namespaced_pod(namespace, pod)
    failed = wait_until(in_phase(core, namespace, "hog", "Failed"), timeout=60, what="evicted")
    assert failed["status"]["reason"] == "Evicted"
    assert failed["status"]["message"].startswith(
        'Usage of EmptyDir volume "scratch" exceeds the limit "1Mi"'
    )
    term = failed["status"]["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 137, term  # stopped at once, not restarted
