"""The operator on the local node: a workload stuck for a real reason (the node plays kubelet and scheduler, nothing
is patched by hand) reaches the resource's Ready condition with the cause's own words."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kubernetes import client

from tests.integration.helpers import ftm
from tests.integration.local_node_support import make_claim, running_node
from tests.integration.operator_bed import OperatorProcess
from tuneops.kube.client import CUSTOM, Kube
from tuneops.local.controlplane import ControlPlane
from tuneops.local.node import LocalNode

MISSING_IMAGE = "registry.example/missing/worker:1"


@pytest.fixture(scope="module")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    with running_node(control_plane, tmp_path_factory.mktemp("node")) as n:
        yield n


@pytest.fixture
def api(control_plane: ControlPlane) -> Kube:
    return Kube.from_kubeconfig(control_plane.kubeconfig_path, user_agent="tuneops-test")


@pytest.fixture
def claims(kube_api: Any, namespace: str) -> None:
    """The claims the sample resources and the operator's artifact root name."""
    core = client.CoreV1Api(kube_api)
    for name in ("models", "artifacts"):
        make_claim(core, namespace, name)


def _ready_with(api: Kube, kind: str, ns: str, name: str, reason: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        obj = api.get(CUSTOM[kind], ns, name) or {}
        ready = next(
            (c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Ready"), {}
        )
        return ready if ready.get("reason") == reason else None

    return check


def test_job_with_an_image_no_registry_has_reports_image_pull_back_off(
    node: LocalNode,
    claims: None,
    start_operator: Callable[..., OperatorProcess],
    api: Kube,
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
) -> None:
    start_operator(TUNEOPS_IMAGE_WORKER=MISSING_IMAGE)
    kubectl.apply(ftm("m"), namespace=namespace)
    ready = wait_until(_ready_with(api, "FineTunedModel", namespace, "m", "ImagePullBackOff"), timeout=90)
    assert ready["status"] == "False"
    assert MISSING_IMAGE in ready["message"], ready


def test_serving_pod_asking_for_a_gpu_reports_the_schedulers_message(
    node: LocalNode,
    claims: None,
    start_operator: Callable[..., OperatorProcess],
    api: Kube,
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
) -> None:
    start_operator()
    tisvc = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "gpu"},
        "spec": {"model": {"uri": "pvc://models/tiny-llama"}, "runtime": "vllm", "resources": {"gpus": 1}},
    }
    kubectl.apply(tisvc, namespace=namespace)
    ready = wait_until(_ready_with(api, "InferenceService", namespace, "gpu", "Unschedulable"), timeout=90)
    assert ready["status"] == "False"
    assert "0/1 nodes are available: 1 Insufficient nvidia.com/gpu." in ready["message"], ready


def test_job_reading_a_missing_secret_reports_create_container_config_error(
    node: LocalNode,
    claims: None,
    start_operator: Callable[..., OperatorProcess],
    api: Kube,
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
) -> None:
    start_operator()
    model = ftm("m")
    model["spec"]["adapter"] = {
        "uri": "hf://example/tiny-adapter",
        "tokenSecretRef": {"name": "hf-token", "key": "HF_TOKEN"},
    }
    kubectl.apply(model, namespace=namespace)
    reason = "CreateContainerConfigError"
    ready = wait_until(_ready_with(api, "FineTunedModel", namespace, "m", reason), timeout=90)
    assert ready["status"] == "False"
    assert 'secret "hf-token" not found' in ready["message"], ready
