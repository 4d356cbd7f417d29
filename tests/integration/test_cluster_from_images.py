"""What a cluster runs, run here: the chart installed by Helm, the operator Pod from its image under the chart's
ServiceAccount and RBAC, and the quickstart reconciled to Ready with every Job and serving Pod a container from
the project's images (the local node's container mode), built from this tree first (`make images`, cached)."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.integration.conftest import _data_root
from tests.integration.local_node_support import ensure_images, running_node
from tests.unit.chart_support import CHART, helm, values_args
from tuneops.kube.client import CUSTOM, POD, Kube
from tuneops.local.cli import ARTIFACT_CLAIM, container_images
from tuneops.local.controlplane import ControlPlane, binaries_missing
from tuneops.local.demo import (
    apply,
    chat_when_serving,
    claims_of,
    ensure_claims,
    load_manifests,
    make_models,
    served_names,
    wait_ready,
)
from tuneops.local.engine import Engine
from tuneops.local.node import LocalNode
from tuneops.local.proxy import ServiceProxy, read_endpoints
from tuneops.render.pod import RUN_AS_USER
from tuneops.serving.process import free_port

RELEASE = "tuneops"
RELEASE_NS = "tuneops-system"
APP_NS = "quickstart"
OPERATOR_IMAGE = "ghcr.io/tuneops/operator:0.1.0"
SA_USER = f"system:serviceaccount:{RELEASE_NS}:{RELEASE}"
PROJECT_IMAGES = {OPERATOR_IMAGE, *container_images().values()}


@dataclass
class Bed:
    cp: ControlPlane
    node: LocalNode
    api: Kube
    took: dict[str, float]


def _pods(api: Kube, namespace: str) -> list[dict[str, Any]]:
    return api.list(POD, namespace)


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bed]:
    missing = binaries_missing()
    if missing:
        pytest.fail("missing " + ", ".join(missing) + "; run `make kube`", pytrace=False)
    ensure_images()
    engine = Engine.default()
    absent = [i for i in sorted(PROJECT_IMAGES) if engine.image_id(i) is None]
    assert not absent, f"make images did not tag {absent}"
    cp = ControlPlane(
        data_dir=Path(tempfile.mkdtemp(prefix="tuneops-images-", dir=_data_root())),
        keep_data=False,
        authorization_mode="RBAC",
        audit=True,
        die_with_parent=True,
    )
    cp.start()
    work = tmp_path_factory.mktemp("images")
    proxy: ServiceProxy | None = None
    try:
        node_settings = {"name": "tuneops-local", "backoff_base_s": 2.0, "backoff_max_s": 10.0}
        with running_node(cp, work / "node", engine=engine, **node_settings) as node:
            proxy = ServiceProxy(node)
            proxy.start()
            api = Kube.from_kubeconfig(cp.kubeconfig_path, user_agent="tuneops-test")
            with config.new_client_from_config(config_file=str(cp.kubeconfig_path)) as raw:
                client.CoreV1Api(raw).create_namespace({"metadata": {"name": APP_NS}})
            values = {
                "image": {"repository": OPERATOR_IMAGE.split(":")[0], "tag": OPERATOR_IMAGE.split(":")[1]},
                "watchNamespaces": [APP_NS],
                # The claims the demo's manifests and default outputs use (tuneops.local.demo.ensure_claims).
                "config": {"images": container_images(), "artifactRoot": f"pvc://{ARTIFACT_CLAIM}"},
                "operator": {"pollSeconds": 1, "resyncSeconds": 15, "livenessPort": free_port()},
                "metrics": {"port": free_port()},
            }
            # A 1.20 server knows no x-kubernetes-validations: the classic create drops the field (docs/helm.md).
            helm(
                "install", RELEASE, str(CHART), "--namespace", RELEASE_NS, "--create-namespace",
                "--server-side=false", f"--kubeconfig={cp.kubeconfig_path}", *values_args(values, work),
                timeout=180,
            )  # fmt: skip
            pvc_root = node.config.root / "pvc"
            make_models(pvc_root)
            manifests = load_manifests()
            ensure_claims(api, claims_of(manifests), APP_NS, pvc_root)
            apply(api, manifests, APP_NS)
            took = wait_ready(api, manifests, APP_NS, 1200.0, lambda _: None, live=False)
            yield Bed(cp, node, api, took)
    finally:
        if proxy is not None:
            proxy.stop()
        cp.stop()


def test_the_operator_runs_from_its_image_under_the_charts_service_account(bed: Bed) -> None:
    pods = _pods(bed.api, RELEASE_NS)
    assert len(pods) == 1, [p["metadata"]["name"] for p in pods]
    pod = pods[0]
    assert pod["spec"]["serviceAccountName"] == RELEASE
    status = pod["status"]["containerStatuses"][0]
    assert status["image"] == OPERATOR_IMAGE
    assert status["containerID"].startswith("podman://")
    assert status["ready"] is True and status["restartCount"] == 0, status
    # Every write of the quickstart's status was made with the chart's ServiceAccount token (in-cluster config
    # from the mounted token), which the chart's Role allows.
    writers = {
        e.user
        for e in bed.cp.audit_log.events()
        if e.verb == "patch" and e.resource == "finetunedmodels" and e.subresource == "status"
    }
    assert writers == {SA_USER}, writers


def test_the_quickstart_is_ready_and_every_pod_was_a_container_of_the_projects_images(bed: Bed) -> None:
    for kind in ("FineTunedModel", "QuantizationJob", "InferenceService"):
        for obj in bed.api.list(CUSTOM[kind], APP_NS):
            ready = [c for c in obj["status"]["conditions"] if c["type"] == "Ready"]
            assert ready and ready[0]["status"] == "True", (kind, obj["metadata"]["name"], ready)
    pods = _pods(bed.api, APP_NS)
    jobs = [p for p in pods if (p["metadata"].get("labels") or {}).get("job-name")]
    servers = [p for p in pods if p not in jobs]
    assert jobs and servers, [p["metadata"]["name"] for p in pods]
    for pod in servers:
        ready = next(c for c in pod["status"]["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True" and not ready.get("message"), ready  # no stale "unready" message
    for pod in pods:
        statuses = [*(pod["status"].get("initContainerStatuses") or []), *pod["status"]["containerStatuses"]]
        for st in statuses:
            assert st["image"] in PROJECT_IMAGES, (pod["metadata"]["name"], st["image"])
            state = st["state"].get("running") or st["state"].get("terminated") or {}
            cid = state.get("containerID") or st.get("containerID") or ""
            assert cid.startswith("podman://"), (pod["metadata"]["name"], st)


def test_each_container_ran_with_its_rendered_security_context(bed: Bed) -> None:
    """uid and gid as rendered, the root filesystem read-only, no capabilities: from what the runtime recorded
    for every exited container, and from inside every running one."""
    root = bed.node.config.root / "pods"
    records = [json.loads(p.read_text()) for p in root.glob(f"{APP_NS}_*/containers/*/container-*.json")]
    assert records, "no exited containers recorded"
    for rec in records:
        assert rec["Config"]["User"] == f"{RUN_AS_USER}:{RUN_AS_USER}", rec["Name"]
        assert rec["HostConfig"]["ReadonlyRootfs"] is True, rec["Name"]
        assert rec["State"]["ExitCode"] == 0, rec["Name"]
    engine = Engine.default()
    running = []
    for pod in _pods(bed.api, APP_NS):
        for st in pod["status"]["containerStatuses"]:
            if "running" in st["state"]:
                running.append(st["containerID"].removeprefix("podman://"))
    assert running
    probe = "import os; print(os.getuid(), os.getgid()); open('/written-to-root', 'w')"
    for cid in running:
        done = engine.call("exec", cid, "python", "-c", probe)
        assert done.stdout.split() == [str(RUN_AS_USER), str(RUN_AS_USER)], done
        assert "Read-only file system" in done.stderr, done.stderr


def test_chat_completions_answer_from_the_containers(bed: Bed) -> None:
    endpoints = read_endpoints(bed.node.config.root)
    answered = []
    for obj in bed.api.list(CUSTOM["InferenceService"], APP_NS):
        name = obj["metadata"]["name"]
        url = endpoints[f"{APP_NS}/{name}/8000"]
        for model in served_names(bed.api, APP_NS, name):
            answer = chat_when_serving(url, model, "Say hello.", time.monotonic() + 120, lambda _: None)
            assert answer.strip(), (name, model)
            answered.append(model)
    assert len(answered) >= 2, answered
