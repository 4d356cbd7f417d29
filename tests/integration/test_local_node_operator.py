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


def _gpu_service() -> dict[str, Any]:
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "m"},
        "spec": {"model": {"uri": "pvc://models/tiny-llama"}, "runtime": "vllm", "resources": {"gpus": 1}},
    }


def _model_with_missing_secret() -> dict[str, Any]:
    model = ftm("m")
    model["spec"]["adapter"] = {
        "uri": "hf://example/tiny-adapter",
        "tokenSecretRef": {"name": "hf-token", "key": "HF_TOKEN"},
    }
    return model


CASES = {
    # A Job whose image no registry (here: the node's image mapping) has.
    "image": (lambda: ftm("m"), {"TUNEOPS_IMAGE_WORKER": MISSING_IMAGE}, "ImagePullBackOff", MISSING_IMAGE),
    # A serving Pod asking for a GPU on a cluster without one.
    "gpu": (_gpu_service, {}, "Unschedulable", "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
    # A Job reading credentials from a Secret that does not exist.
    "secret": (_model_with_missing_secret, {}, "CreateContainerConfigError", 'secret "hf-token" not found'),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_stuck_workload_reaches_ready_with_its_cause(
    case: str,
    node: LocalNode,
    claims: None,
    start_operator: Callable[..., OperatorProcess],
    api: Kube,
    kubectl: Any,
    namespace: str,
    wait_until: Callable[..., Any],
) -> None:
    make, env, reason, words = CASES[case]
    resource = make()
    start_operator(**env)
    kubectl.apply(resource, namespace=namespace)
    ready = wait_until(_ready_with(api, resource["kind"], namespace, "m", reason), timeout=90, what=reason)
    assert ready["status"] == "False"
    assert words in ready["message"], ready
