"""The local control plane behaves like a real cluster where the operator depends on it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from tuneops.local.controlplane import ControlPlane, ControlPlaneError

GROUP = "bed.tuneops.test"
PLURAL = "widgets"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": "Widget", "listKind": "WidgetList"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["size"],
                                "properties": {
                                    "size": {"type": "integer", "minimum": 1, "maximum": 10},
                                    "color": {"type": "string", "enum": ["red", "blue"]},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {"type": "string"},
                                    "observedGeneration": {"type": "integer"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, size: Any = 3, color: str = "red") -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "metadata": {"name": name},
        "spec": {"size": size, "color": color},
    }


@pytest.fixture(scope="module")
def widget_crd(kube_api: Any, wait_until: Callable[..., Any]) -> Iterator[None]:
    ext = client.ApiextensionsV1Api(kube_api)
    ext.create_custom_resource_definition(WIDGET_CRD)

    def established() -> bool:
        crd = ext.read_custom_resource_definition(WIDGET_CRD["metadata"]["name"])
        return any(c.type == "Established" and c.status == "True" for c in crd.status.conditions or [])

    wait_until(established, what="Widget CRD established")
    yield
    ext.delete_custom_resource_definition(WIDGET_CRD["metadata"]["name"])


def test_default_namespaces_and_service_account(
    kube_api: Any, wait_until: Callable[..., Any], namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    names = {ns.metadata.name for ns in core.list_namespace().items}
    assert {"default", "kube-system", "kube-public", namespace} <= names
    # The service-account controller (kube-controller-manager) fills every new namespace.
    wait_until(
        lambda: core.read_namespaced_service_account("default", namespace), what="default ServiceAccount"
    )


@pytest.mark.usefixtures("widget_crd")
def test_crd_schema_rejects_invalid_resource_naming_the_field(kubectl: Any, namespace: str) -> None:
    kubectl.apply(widget("good"), namespace=namespace)
    assert kubectl.get_json("widget", "good", namespace=namespace)["spec"]["size"] == 3

    bad_type = kubectl.apply(widget("bad-type", size="big"), namespace=namespace, check=False)
    assert bad_type.returncode != 0
    assert "spec.size" in bad_type.stderr

    bad_enum = kubectl.apply(widget("bad-enum", color="green"), namespace=namespace, check=False)
    assert bad_enum.returncode != 0
    assert "spec.color" in bad_enum.stderr

    too_big = kubectl.apply(widget("too-big", size=11), namespace=namespace, check=False)
    assert too_big.returncode != 0
    assert "spec.size" in too_big.stderr

    listed = kubectl("get", "widgets", "-o", "name", namespace=namespace).stdout.split()
    assert listed == ["widget.bed.tuneops.test/good"]


@pytest.mark.usefixtures("widget_crd")
def test_status_subresource_separates_spec_and_status(kube_api: Any, namespace: str) -> None:
    api = client.CustomObjectsApi(kube_api)
    created = api.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, widget("w"))
    assert created["metadata"]["generation"] == 1

    # Status written through the main resource is ignored.
    api.patch_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "w", {"status": {"phase": "Sneaky"}})
    assert "status" not in api.get_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "w")

    # Spec written through /status is ignored; status sticks; generation does not move.
    after = api.patch_namespaced_custom_object_status(
        GROUP,
        "v1",
        namespace,
        PLURAL,
        "w",
        {"spec": {"size": 9}, "status": {"phase": "Ready", "observedGeneration": 1}},
    )
    assert after["status"] == {"phase": "Ready", "observedGeneration": 1}
    assert after["spec"]["size"] == 3
    assert after["metadata"]["generation"] == 1

    # A spec change bumps generation and keeps status.
    changed = api.patch_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "w", {"spec": {"size": 4}})
    assert changed["metadata"]["generation"] == 2
    assert changed["status"]["phase"] == "Ready"


def _owned_by(obj: Any, owner_uid: str) -> bool:
    return any(ref.uid == owner_uid and ref.controller for ref in obj.metadata.owner_references or [])


def test_deployment_creates_replicaset_and_pods_and_cascade_delete(
    kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    apps, core = client.AppsV1Api(kube_api), client.CoreV1Api(kube_api)
    labels = {"app": "web"}
    dep = apps.create_namespaced_deployment(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "web", "image": "example.invalid/web:1"}]},
                },
            },
        },
    )
    rs = wait_until(
        lambda: [
            r for r in apps.list_namespaced_replica_set(namespace).items if _owned_by(r, dep.metadata.uid)
        ],
        what="ReplicaSet owned by the Deployment",
    )[0]
    pods = wait_until(
        lambda: (
            ps
            if len(
                ps := [p for p in core.list_namespaced_pod(namespace).items if _owned_by(p, rs.metadata.uid)]
            )
            == 2
            else None
        ),
        what="two Pods owned by the ReplicaSet",
    )
    # No scheduler and no kubelet: the Pods wait for the local node.
    assert all(p.status.phase == "Pending" and not p.spec.node_name for p in pods)

    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Background")
    wait_until(
        lambda: not apps.list_namespaced_replica_set(namespace).items, what="ReplicaSet garbage-collected"
    )
    wait_until(lambda: not core.list_namespaced_pod(namespace).items, what="Pods garbage-collected")


@pytest.mark.usefixtures("widget_crd")
def test_garbage_collector_follows_owner_references_to_custom_resources(
    kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    api, core = client.CustomObjectsApi(kube_api), client.CoreV1Api(kube_api)
    owner = api.create_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, widget("owner"))
    ref = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "Widget",
        "name": "owner",
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "child", "ownerReferences": [ref]}})
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "bystander"}})

    api.delete_namespaced_custom_object(GROUP, "v1", namespace, PLURAL, "owner")

    def child_gone() -> bool:
        try:
            core.read_namespaced_config_map("child", namespace)
        except ApiException as exc:
            return exc.status == 404
        return False

    # The garbage collector rediscovers resource types every 30 s; a CRD made moments ago may need that long.
    wait_until(child_gone, timeout=90, what="ConfigMap owned by the deleted Widget garbage-collected")
    assert core.read_namespaced_config_map("bystander", namespace).metadata.name == "bystander"


def test_job_completes_when_its_pod_is_marked_succeeded(
    kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    batch, core = client.BatchV1Api(kube_api), client.CoreV1Api(kube_api)
    job = batch.create_namespaced_job(
        namespace,
        {
            "metadata": {"name": "merge"},
            "spec": {
                "backoffLimit": 0,
                "ttlSecondsAfterFinished": 600,
                "template": {
                    "spec": {
                        "restartPolicy": "Never",
                        "containers": [{"name": "worker", "image": "example.invalid/worker:1"}],
                    }
                },
            },
        },
    )
    # The TTLAfterFinished gate is on, so the field survives admission on 1.20.
    assert job.spec.ttl_seconds_after_finished == 600
    pod = wait_until(
        lambda: [p for p in core.list_namespaced_pod(namespace).items if _owned_by(p, job.metadata.uid)],
        what="Pod created by the Job controller",
    )[0]

    message = json.dumps({"uri": "pvc://models/merged", "digest": "sha256:" + "ab" * 32, "size": 1234})
    core.patch_namespaced_pod_status(
        pod.metadata.name,
        namespace,
        {
            "status": {
                "phase": "Succeeded",
                "containerStatuses": [
                    {
                        "name": "worker",
                        "image": "example.invalid/worker:1",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}},
                    }
                ],
            }
        },
    )

    def complete() -> Any:
        status = batch.read_namespaced_job_status("merge", namespace).status
        done = [c for c in status.conditions or [] if c.type == "Complete" and c.status == "True"]
        return status if done else None

    status = wait_until(complete, what="Job Complete")
    assert status.succeeded == 1
    terminated = (
        core.read_namespaced_pod(pod.metadata.name, namespace).status.container_statuses[0].state.terminated
    )
    assert json.loads(terminated.message)["size"] == 1234


def test_audit_log_counts_requests_by_verb_resource_and_user(
    control_plane: ControlPlane, kube_api: Any, namespace: str, operator_user: str, operator_kubeconfig: Path
) -> None:
    log = control_plane.audit_log
    core = client.CoreV1Api(kube_api)
    mark = log.mark()
    for i in range(3):
        core.create_namespaced_config_map(namespace, {"metadata": {"name": f"cm-{i}"}, "data": {"i": str(i)}})
    core.patch_namespaced_config_map("cm-0", namespace, {"data": {"i": "zero"}})
    core.read_namespaced_config_map("cm-1", namespace)
    core.list_namespaced_config_map(namespace)

    operator = client.CoreV1Api(config.new_client_from_config(str(operator_kubeconfig)))
    operator.delete_namespaced_config_map("cm-2", namespace)

    # kube-controller-manager also writes here (kube-root-ca.crt); the user column tells them apart.
    counts = log.count(mark, namespace=namespace, resource="configmaps", by=("user", "verb"))
    ours = {key: n for key, n in counts.items() if key[0] in ("admin", operator_user)}
    assert ours == {
        ("admin", "create"): 3,
        ("admin", "patch"): 1,
        ("admin", "get"): 1,
        ("admin", "list"): 1,
        (operator_user, "delete"): 1,
    }
    writes = log.count(mark, namespace=namespace, user="admin", writes_only=True, by=("verb", "name"))
    assert writes == {
        ("create", "cm-0"): 1,
        ("create", "cm-1"): 1,
        ("create", "cm-2"): 1,
        ("patch", "cm-0"): 1,
    }
    assert all(e.code in (200, 201) for e in log.select(mark, namespace=namespace, user="admin"))


def test_apiserver_restart_keeps_data(
    control_plane: ControlPlane, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    core = client.CoreV1Api(kube_api)
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "survivor"}, "data": {"k": "v"}})
    old_pid = control_plane.pids()["kube-apiserver"]
    etcd_pid = control_plane.pids()["etcd"]

    control_plane.stop_apiserver()
    assert not control_plane.ready()
    control_plane.start_apiserver()

    assert control_plane.pids()["kube-apiserver"] != old_pid
    assert control_plane.pids()["etcd"] == etcd_pid
    assert core.read_namespaced_config_map("survivor", namespace).data == {"k": "v"}
    # The controllers reconnect: a namespace created after the restart still gets its ServiceAccount.
    core.create_namespace({"metadata": {"name": f"{namespace}-after"}})
    wait_until(
        lambda: core.read_namespaced_service_account("default", f"{namespace}-after"),
        timeout=60,
        what="ServiceAccount in a namespace created after the restart",
    )
    core.delete_namespace(f"{namespace}-after")


def test_rbac_mode_attach_and_stop_by_pid(tmp_path: Path) -> None:
    """A second, RBAC-enforcing control plane: the admin token is in system:masters, others are denied."""
    cp = ControlPlane(
        data_dir=tmp_path / "cp",
        authorization_mode="RBAC",
        controller_manager=False,
        users={"nobody": []},
        die_with_parent=True,
    )
    with cp:
        from kubernetes import config

        admin = client.CoreV1Api(config.new_client_from_config(str(cp.kubeconfig_path)))
        assert admin.read_namespace("default").metadata.name == "default"
        nobody = client.CoreV1Api(config.new_client_from_config(str(cp.kubeconfig_for("nobody"))))
        with pytest.raises(ApiException) as denied:
            nobody.list_namespace()
        assert denied.value.status == 403
        assert cp.apiserver_rss_bytes() > 50 * 2**20

        # Another process would do this: find the servers from state.json and stop them by PID.
        pids = cp.pids()
        other = ControlPlane.attach(tmp_path / "cp")
        assert other.running() and other.ready()
        assert other.pids() == pids
        other.stop(grace=15)
        assert not cp.running()  # also reaps the children of this process
        for pid in pids.values():
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    with pytest.raises(ControlPlaneError):
        ControlPlane.attach(tmp_path / "cp")
