"""Autoscaling and routing of an InferenceService: the KEDA ScaledObject or HPA, the InferencePool and HTTPRoute,
checked against the published schemas of KEDA, Gateway API and the Inference Extension."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.unit import published_schemas
from tests.unit.render_support import check_golden, owner, validate
from tests.unit.schema_tools import cel_errors
from tests.unit.test_render_inferenceservice import MODEL, spec
from tuneops.api import SpecError
from tuneops.api.conditions import Reason
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import Features, OperatorConfig
from tuneops.render import render_inferenceservice
from tuneops.render.serving.autoscaling import VLLM_METRICS, bounds, quantity
from tuneops.render.types import RenderError
from tuneops.runner import discover_features
from tuneops.validation.references import check_routing

OWNER = owner("InferenceService", "mistral")
CFG = OperatorConfig(prometheus_address="http://prometheus.monitoring.svc:9090")
ROUTING = {"gateway": {"name": "inference-gateway", "namespace": "gateways", "sectionName": "http"},
           "endpointPicker": {"name": "mistral-epp"}, "hostnames": ["llm.example.com"]}  # fmt: skip
# The same routing leaving the endpoint picker to the operator config, and a config that names one.
NO_PICKER = {key: value for key, value in ROUTING.items() if key != "endpointPicker"}
PICKER_CFG = OperatorConfig.model_validate(
    {"prometheusAddress": CFG.prometheus_address,
     "routing": {"endpointPicker": {"name": "shared-epp", "port": 9003, "failureMode": "FailOpen"}}}
)  # fmt: skip


def extras(s: InferenceServiceSpec, config: OperatorConfig = CFG) -> list[dict[str, Any]]:
    """What autoscaling and routing add to the service's manifests."""
    kinds = {"ScaledObject", "HorizontalPodAutoscaler", "InferencePool", "HTTPRoute"}
    return [m for m in render_inferenceservice(s, OWNER, config, model=MODEL).manifests if m["kind"] in kinds]


def assert_published_valid(manifests: list[dict[str, Any]]) -> None:
    third_party = [m for m in manifests if m["kind"] != "HorizontalPodAutoscaler"]
    assert published_schemas.errors(third_party) == [[] for _ in third_party]
    for m in manifests:
        if m["apiVersion"] == "autoscaling/v2":
            validate(m)
        elif m["apiVersion"] == "autoscaling/v2beta2":
            kubernetes_validate.validate(m, "1.25.0", strict=True)  # the last with v2beta2


CASES: dict[str, dict[str, Any]] = {
    "keda-scale-to-zero": {"autoscaling": {"engine": "keda", "minReplicas": 0, "maxReplicas": 8, "targetValue": 4,
                                           "activationValue": 1, "scaleDownStabilizationSeconds": 600}},
    "hpa-kv-cache": {"resources": {"gpus": 2}, "vllm": {"tensorParallelSize": 2},
                     "autoscaling": {"engine": "hpa", "maxReplicas": 4, "metric": "kvCacheUsage", "targetValue": 0.75}},
    "routing": {"routing": ROUTING,
                "autoscaling": {"engine": "hpa", "minReplicas": 2, "maxReplicas": 6, "metric": "requestsRunning",
                                "targetValue": 16}},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_and_valid_against_the_published_schemas(name: str) -> None:
    manifests = extras(spec(**CASES[name]))
    assert_published_valid(manifests)
    check_golden(f"inferenceservice-{name}", manifests)


def test_the_hpa_falls_back_to_v2beta2_on_servers_without_autoscaling_v2() -> None:
    old = CFG.model_copy(update={"features": Features(hpa_v2=False)})
    (hpa,) = extras(spec(**CASES["hpa-kv-cache"]), old)
    assert hpa["apiVersion"] == "autoscaling/v2beta2"
    assert_published_valid([hpa])


def test_autoscalers_scale_the_inferenceservice_not_its_deployment() -> None:
    for name in ("keda-scale-to-zero", "hpa-kv-cache"):
        (scaler,) = extras(spec(**CASES[name]))
        assert scaler["spec"]["scaleTargetRef"] == {
            "apiVersion": "tuneops.io/v1alpha1", "kind": "InferenceService", "name": "mistral"}  # fmt: skip


def test_keda_queries_the_served_model_in_the_namespace() -> None:
    (so,) = extras(spec(**CASES["keda-scale-to-zero"]))
    trigger = so["spec"]["triggers"][0]
    assert (
        trigger["metadata"]["query"]
        == 'sum(vllm:num_requests_waiting{namespace="team-a",model_name="mistral"})'
    )
    assert trigger["metadata"]["serverAddress"] == CFG.prometheus_address
    assert (trigger["metadata"]["threshold"], trigger["metadata"]["activationThreshold"]) == ("4", "1")


def test_the_routing_pool_selects_the_server_pods() -> None:
    rendered = render_inferenceservice(spec(routing=ROUTING), OWNER, CFG, model=MODEL)
    pool = next(m for m in rendered.manifests if m["kind"] == "InferencePool")
    assert pool["spec"]["selector"]["matchLabels"] == dict(rendered.selector)
    assert pool["spec"]["appProtocol"] == "http", "vLLM's OpenAI server speaks HTTP/1.1"
    route = next(m for m in rendered.manifests if m["kind"] == "HTTPRoute")
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == pool["metadata"]["name"]
    assert any(m["kind"] == "Service" for m in rendered.manifests), "the plain Service stays"


def test_the_endpoint_picker_comes_from_the_operator_config_when_the_spec_names_none() -> None:
    manifests = extras(spec(routing=NO_PICKER), PICKER_CFG)
    assert_published_valid(manifests)
    check_golden("inferenceservice-routing-picker-from-config", manifests)
    pool, _ = manifests
    assert pool["spec"]["endpointPickerRef"] == {
        "failureMode": "FailOpen", "kind": "Service", "name": "shared-epp", "port": {"number": 9003}}  # fmt: skip
    # A picker the spec names wins over the default, all of it (the default's port and failureMode too).
    pool, _ = extras(spec(routing=ROUTING), PICKER_CFG)
    assert pool["spec"]["endpointPickerRef"] == {
        "failureMode": "FailClose", "kind": "Service", "name": "mistral-epp", "port": {"number": 9002}}  # fmt: skip


def test_routing_with_no_endpoint_picker_anywhere_is_refused() -> None:
    """Refused before rendering (tests/unit/test_validate_equals_operator.py runs the operator and validate on
    it); the renderer will not make a pool without a picker either."""
    s = spec(routing=NO_PICKER)
    (problem,) = check_routing(s, CFG)
    assert (problem.reason, problem.field) == (Reason.INVALID_SPEC, "spec.routing.endpointPicker")
    assert "config.routing.endpointPicker" in problem.message
    assert check_routing(s, PICKER_CFG) == []
    assert check_routing(spec(routing=ROUTING), CFG) == []
    with pytest.raises(RenderError, match="endpointPicker"):
        extras(s)


def test_off_by_default() -> None:
    assert extras(spec()) == []


def test_a_field_the_published_schema_lacks_is_an_error() -> None:
    (so,) = extras(spec(**CASES["keda-scale-to-zero"]))
    so["spec"]["scaleTargetRef"]["replicas"] = 3
    pool, route = extras(spec(routing=ROUTING))
    pool["spec"]["targetPortNumber"] = 8000  # the field of the withdrawn v1alpha2 API
    route["spec"]["rules"][0]["backendRefs"][0]["pool"] = "x"
    found = published_schemas.errors([so, pool, route])
    for errors, field in zip(found, ("replicas", "targetPortNumber", "pool"), strict=True):
        assert len(errors) == 1 and field in errors[0], errors


def test_the_inference_pool_schema_knows_every_v1_spec_field() -> None:
    """The transcription is no stricter than the API: each optional v1 field is accepted with a legal value."""
    pool, _ = extras(spec(routing=ROUTING))
    pool["spec"]["appProtocol"] = "kubernetes.io/h2c"
    pool["spec"]["endpointPickerRef"].update({"group": "", "kind": "Service", "failureMode": "FailOpen"})
    assert published_schemas.errors([pool]) == [[]]
    pool["spec"]["appProtocol"] = "grpc"
    assert published_schemas.errors([pool]) != [[]]


@pytest.mark.parametrize(
    ("autoscaling", "refused"),
    [
        ({"engine": "hpa", "minReplicas": 0, "maxReplicas": 3, "targetValue": 2}, "needs engine keda"),
        (
            {"engine": "keda", "minReplicas": 5, "maxReplicas": 3, "targetValue": 2},
            "must not exceed maxReplicas",
        ),
        ({"engine": "hpa", "maxReplicas": 3, "targetValue": 2, "activationValue": 1}, "needs engine keda"),
        ({"engine": "hpa", "maxReplicas": 3, "metric": "kvCacheUsage", "targetValue": 80}, "at most 1"),
        ({"engine": "keda", "minReplicas": 0, "maxReplicas": 3, "targetValue": 2}, None),
    ],
)
def test_autoscaling_bounds(autoscaling: dict[str, Any], refused: str | None) -> None:
    """The operator and the CRD's CEL rules refuse the same specs, with the same words."""
    doc = {"apiVersion": "tuneops.io/v1alpha1", "kind": "InferenceService", "metadata": {"name": "m"},
           "spec": {"model": {"uri": "pvc://models/m"}, "autoscaling": autoscaling}}  # fmt: skip
    cel = cel_errors(doc)
    if refused is None:
        spec(autoscaling=autoscaling)
        assert cel == []
        return
    with pytest.raises(SpecError, match=refused):
        spec(autoscaling=autoscaling)
    assert len(cel) == 1 and refused in cel[0], cel


def test_autoscaling_needs_vllm() -> None:
    with pytest.raises(SpecError, match="vllm runtime"):
        spec(runtime="llamacpp", autoscaling={"engine": "hpa", "maxReplicas": 3, "targetValue": 2})


def test_bounds_and_quantities() -> None:
    auto = spec(**CASES["keda-scale-to-zero"]).autoscaling
    assert auto is not None and bounds(auto) == "keda 0-8"
    assert [quantity(v) for v in (4, 0.75, 2.5)] == ["4", "750m", "2500m"]
    assert set(VLLM_METRICS.values()) == {
        "vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"}  # fmt: skip


class _Server:
    def __init__(self, version: tuple[int, int]):
        self.version = version

    def server_version(self) -> tuple[int, int]:
        return self.version


@pytest.mark.parametrize(
    ("version", "v2"), [((1, 20), False), ((1, 22), False), ((1, 23), True), ((1, 31), True)]
)
def test_the_hpa_api_version_follows_the_server_version(version: tuple[int, int], v2: bool) -> None:
    config = OperatorConfig()
    discover_features(_Server(version), config)  # type: ignore[arg-type]
    assert config.features.hpa_v2 is v2


def test_an_autoscaled_service_keeps_its_pdb_at_one_replica() -> None:
    def kinds(s: InferenceServiceSpec) -> set[str]:
        return {m["kind"] for m in render_inferenceservice(s, OWNER, CFG, model=MODEL).manifests}

    assert "PodDisruptionBudget" in kinds(spec(autoscaling=CASES["hpa-kv-cache"]["autoscaling"]))
    one = {"engine": "keda", "minReplicas": 0, "maxReplicas": 1, "targetValue": 4}
    assert "PodDisruptionBudget" not in kinds(spec(autoscaling=one))
