"""What the local node's tests share: a node on the test control plane, small Python Pods, and status reads."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kubernetes import client

from tuneops.local.controlplane import ControlPlane
from tuneops.local.node import LocalNode, NodeConfig
from tuneops.local.runtimes import Runtime, default_runtimes

# Images no registry serves: the node's mapping is the only thing that makes them runnable.
IMAGE = "registry.example/test/python:1"
OTHER_IMAGE = "registry.example/test/unmapped:1"

TEST_RUNTIME = Runtime(
    name="test-python",
    images=(r"^registry\.example/test/python:",),
    commands={"python3": sys.executable, "python": sys.executable},
    entrypoint=(sys.executable,),
    env={"PYTHONUNBUFFERED": "1"},
)


@contextmanager
def running_node(control_plane: ControlPlane, root: Path, **settings: Any) -> Iterator[LocalNode]:
    """A node with the test runtime and short timings: back-off 0.5 s doubling to 2 s unless `settings` say."""
    defaults: dict[str, Any] = {
        "name": "test-local-node",
        "backoff_base_s": 0.5,
        "backoff_max_s": 2.0,
        "probe_period_cap_s": 1.0,
        "sync_s": 0.1,
        "config_refresh_s": 0.5,
    }
    config = NodeConfig(
        root=root,
        kubeconfig=control_plane.kubeconfig_path,
        runtimes=[TEST_RUNTIME, *default_runtimes()],
        **{**defaults, **settings},
    )
    n = LocalNode(config)
    n.start()
    try:
        yield n
    finally:
        n.stop(grace=2.0)


def pod_manifest(name: str, script: str, **spec: Any) -> dict[str, Any]:
    """A Pod whose one container `main` runs `script` with the test runtime's Python."""
    container = {
        "name": "main",
        "image": IMAGE,
        "command": ["python3", "-c", textwrap.dedent(script)],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": spec.pop("labels", {"app": name})},
        "spec": {"containers": [container], "restartPolicy": spec.pop("restartPolicy", "Never"), **spec},
    }


def deployment_manifest(name: str, replicas: int, pod_spec: dict[str, Any], **spec: Any) -> dict[str, Any]:
    """A Deployment of Pods labelled app=<name>."""
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            **spec,
        },
    }


def make_claim(core: client.CoreV1Api, ns: str, name: str) -> None:
    """A PersistentVolumeClaim object: the node schedules a Pod only when its claims exist, as a scheduler does."""
    spec = {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}
    core.create_namespaced_persistent_volume_claim(ns, {"metadata": {"name": name}, "spec": spec})


def read_pod(core: client.CoreV1Api, ns: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = core.api_client.sanitize_for_serialization(core.read_namespaced_pod(name, ns))
    return pod


def in_phase(core: client.CoreV1Api, ns: str, name: str, *phases: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        pod = read_pod(core, ns, name)
        return pod if pod.get("status", {}).get("phase") in phases else None

    return check


def events(core: client.CoreV1Api, ns: str, name: str, reason: str | None = None) -> list[Any]:
    """The Events about Pod `name`, oldest first (optionally only those with `reason`)."""
    found = [
        e
        for e in core.list_namespaced_event(ns).items
        if e.involved_object.name == name and (reason is None or e.reason == reason)
    ]
    return sorted(
        found, key=lambda e: (e.first_timestamp or e.event_time or 0, e.metadata.creation_timestamp)
    )


def watch_pod(
    core: client.CoreV1Api,
    ns: str,
    name: str,
    since: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float,
) -> list[dict[str, Any]]:
    """Every version of Pod `name` from resourceVersion `since` on, up to the first for which `until` holds."""
    from kubernetes import watch

    seen: list[dict[str, Any]] = []
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_pod,
        ns,
        field_selector=f"metadata.name={name}",
        resource_version=since,
        timeout_seconds=int(timeout),
    ):
        pod: dict[str, Any] = core.api_client.sanitize_for_serialization(event["object"])
        seen.append(pod)
        if until(pod):
            stream.stop()
            return seen
    raise AssertionError(f"pod {ns}/{name}: condition not reached in {timeout}s; last status {seen[-1:]}")


def waiting(status: dict[str, Any]) -> dict[str, Any]:
    """A container status's `waiting` state ({} when it is not waiting)."""
    return dict((status.get("state") or {}).get("waiting") or {})


_IMAGES_BUILT: list[str] = []


def ensure_images() -> str:
    """The project's images built from this tree (`make images`; seconds when every image is current, since
    each is keyed by the files it is built from). Returns the build's summary; fails the test when it fails."""
    import subprocess

    import pytest

    if _IMAGES_BUILT:
        return _IMAGES_BUILT[0]
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [str(root / "scripts" / "build-images.sh")], capture_output=True, text=True, timeout=3600, check=False
    )
    if done.returncode != 0:
        pytest.fail(f"make images failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    _IMAGES_BUILT.append(done.stdout)
    return done.stdout
