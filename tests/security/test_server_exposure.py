"""What reaches a server: `Secured` is read from the rendered Pods and policies (never from the spec alone), every
multi-node group fences its Ray ports to its own Pods, and the operator's own environment is never the spec's."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.render_support import validate
from tuneops import API_VERSION
from tuneops.api.conditions import SECURED, Reason
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render import Owner, ResolvedAdapter, ResolvedModel
from tuneops.render.serving import render_inferenceservice
from tuneops.render.serving.vllm import RAY_PORT
from tuneops.render.serving.workload import protection
from tuneops.validation.policy import operator_sets

OWNER = Owner(API_VERSION, "InferenceService", "svc", "team-a", "uid-1")
MODEL = ResolvedModel(uri="pvc://models/base", num_attention_heads=8)
ADAPTER = ResolvedAdapter(name="a", uri="pvc://adapters/a")
KEY = {"apiKeySecretRef": {"name": "api", "key": "k"}}
MULTINODE = {"vllm": {"nodes": 2, "tensorParallelSize": 2, "pipelineParallelSize": 2}}


def service(**spec: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": {"uri": "pvc://models/base"}, **spec})


def render(spec: InferenceServiceSpec, adapters: tuple[ResolvedAdapter, ...] = ()) -> tuple[list[Any], Any]:
    r = render_inferenceservice(
        spec, OWNER, OperatorConfig(operator_namespace="ops"), model=MODEL, adapters=adapters
    )
    secured = next(n for n in r.notes if n.type == SECURED)
    return list(r.manifests), secured


def _policy(manifests: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((m for m in manifests if m["kind"] == "NetworkPolicy"), None)


@pytest.mark.parametrize(
    ("spec", "adapters", "reason", "policy"),
    [
        ({}, (), Reason.NO_RUNTIME_API, False),
        ({}, (ADAPTER,), Reason.NETWORK_POLICY, True),
        ({**KEY}, (ADAPTER,), Reason.API_KEY, False),
        ({**MULTINODE}, (), Reason.NO_RUNTIME_API, True),
        ({**MULTINODE, **KEY}, (ADAPTER,), Reason.API_KEY, True),
        ({**MULTINODE}, (ADAPTER,), Reason.NETWORK_POLICY, True),
        ({"runtime": "llamacpp", "model": {"uri": "pvc://m/x.gguf"}, **KEY}, (), Reason.API_KEY, False),
    ],
    ids=["plain", "lora-no-key", "lora-key", "ray", "ray-lora-key", "ray-lora-no-key", "llamacpp-key"],
)
def test_secured_says_what_the_rendered_objects_do(
    spec: dict[str, Any], adapters: tuple[ResolvedAdapter, ...], reason: str, policy: bool
) -> None:
    body = render(service(**spec), adapters) if spec.get("runtime") != "llamacpp" else None
    if body is None:
        llama = InferenceServiceSpec.model_validate(spec)
        r = render_inferenceservice(
            llama, OWNER, OperatorConfig(), model=ResolvedModel(uri="pvc://m/x.gguf", format="gguf")
        )
        body = (list(r.manifests), next(n for n in r.notes if n.type == SECURED))
    manifests, secured = body
    assert (secured.status, secured.reason) == ("True", reason), secured
    assert (_policy(manifests) is not None) == policy
    for m in manifests:
        validate(m)


def test_a_key_the_pod_does_not_get_is_not_a_key() -> None:
    """Status comes from the Pod: remove the key from the rendered container and Secured says so."""
    manifests, _ = render(service(**KEY), (ADAPTER,))
    deployment = next(m for m in manifests if m["kind"] == "Deployment")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    for tampered in ({"name": "VLLM_API_KEY", "value": ""}, None):
        container["env"] = [e for e in container["env"] if e["name"] != "VLLM_API_KEY"]
        if tampered:
            container["env"].append(tampered)
        note = protection(manifests, key_env="VLLM_API_KEY", runtime_api=True, multinode=False)
        assert (note.status, note.reason) == ("False", Reason.UNPROTECTED), note


def test_an_open_policy_is_no_fence() -> None:
    manifests, _ = render(service(**MULTINODE))
    policy = _policy(manifests)
    assert policy is not None
    policy["spec"]["ingress"].append({})  # a rule with neither sources nor ports admits everyone everywhere
    note = protection(manifests, key_env="VLLM_API_KEY", runtime_api=False, multinode=True)
    assert (note.status, note.reason) == ("False", Reason.UNPROTECTED)
    without = [m for m in manifests if m["kind"] != "NetworkPolicy"]
    note = protection(without, key_env="VLLM_API_KEY", runtime_api=False, multinode=True)
    assert (note.status, note.reason) == ("False", Reason.UNPROTECTED) and "Ray" in note.message


@pytest.mark.parametrize("spec", [{**MULTINODE}, {**MULTINODE, **KEY}], ids=["no-key", "key"])
def test_every_multinode_group_fences_its_ray_ports(spec: dict[str, Any]) -> None:
    manifests, _ = render(service(**spec))
    lws = next(m for m in manifests if m["kind"] == "LeaderWorkerSet")
    policy = _policy(manifests)
    assert policy is not None
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for template in lws["spec"]["leaderWorkerTemplate"].values():
        if isinstance(template, dict) and "metadata" in template:
            labels = template["metadata"]["labels"]
            assert selector.items() <= labels.items(), "the policy must select leader and workers"
    # Anything from outside the group is admitted on the http port only; the group's Pods reach each other on all
    # ports (Ray's GCS on 6379 and its workers' ports).
    for rule in policy["spec"]["ingress"]:
        peers = rule.get("from") or []
        if peers == [{"podSelector": policy["spec"]["podSelector"]}]:
            assert "ports" not in rule
        else:
            assert rule["ports"] == [{"port": "http", "protocol": "TCP"}], rule
            assert all(p.get("port") != RAY_PORT for p in rule["ports"])


def _all_env(manifests: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("env"), list) and isinstance(node.get("image", node.get("name")), str):
                names.update(e["name"] for e in node["env"] if isinstance(e, dict))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(manifests)
    return names


@pytest.mark.parametrize(
    "spec",
    [
        {**KEY},
        {"model": {"uri": "hf://org/m", "tokenSecretRef": {"name": "hf"}}, **KEY},
        {"model": {"uri": "s3://b/m", "tokenSecretRef": {"name": "aws"}}},
        {**MULTINODE, **KEY},
        {"runtime": "llamacpp", "model": {"uri": "pvc://m/x.gguf"}, **KEY},
    ],
    ids=["vllm", "vllm-hf", "vllm-s3", "lws", "llamacpp"],
)
def test_the_operators_env_list_covers_every_variable_it_renders(spec: dict[str, Any]) -> None:
    """OPERATOR_ENV (what a spec may never set) cannot drift from what the renderers write."""
    s = InferenceServiceSpec.model_validate({"model": {"uri": "pvc://models/base"}, **spec})
    model = (
        ResolvedModel(uri=s.model.uri or "", format="gguf")
        if s.runtime == "llamacpp"
        else ResolvedModel(
            uri=s.model.uri or "", num_attention_heads=8, token_secret=s.model.token_secret_ref
        )
    )
    adapters = () if s.runtime == "llamacpp" else (ADAPTER,)
    manifests = render_inferenceservice(s, OWNER, OperatorConfig(), model=model, adapters=adapters).manifests
    rendered = _all_env(list(manifests))
    assert rendered, "no env found: the walk is broken"
    assert sorted(n for n in rendered if not operator_sets(n)) == []
