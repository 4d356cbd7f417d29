"""Security properties of everything the renderers produce, over every example and many generated specs.

Secrets reach Pods only as env valueFrom secretKeyRef (never a literal, never an argument); every Pod runs
non-root under the restricted Pod Security Standard; cross-namespace references need the operator's consent.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.hostile import resource
from tests.unit.render_support import (
    SECRET_ENV,
    assert_no_secrets,
    assert_restricted,
    containers,
    pod_specs,
    validate,
)
from tests.unit.valid_specs import SHAPES, Case, check_and_render
from tuneops.api import KINDS
from tuneops.api.common import ObjectRef
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile.base import Context, Invalid, Waiting
from tuneops.reconcile.common import resolve_ref
from tuneops.render.plan import render_documents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def secret_refs(manifests: list[dict[str, Any]]) -> set[str]:
    return {
        e["valueFrom"]["secretKeyRef"]["name"]
        for m in manifests
        for c in containers(m)
        for e in c.get("env", [])
        if "secretKeyRef" in (e.get("valueFrom") or {})
    }


def all_example_docs() -> list[tuple[str, list[dict[str, Any]]]]:
    out = []
    for path in sorted(EXAMPLES.rglob("*.yaml")):
        docs = [
            d for d in yaml.safe_load_all(path.read_text()) if isinstance(d, dict) and d.get("kind") in KINDS
        ]
        if docs:
            out.append((path.stem, docs))
    return out


@pytest.mark.parametrize(("name", "docs"), all_example_docs())
def test_every_example_renders_restricted_pods_and_secrets_only_by_reference(
    name: str, docs: list[dict[str, Any]]
) -> None:
    manifests = render_documents(docs, OperatorConfig(), namespace="demo")
    assert_restricted(manifests)
    assert_no_secrets(manifests)
    for m in manifests:
        validate(m)


TOKENED = st.sampled_from(
    [
        ("FineTunedModel", {"baseModel": {"uri": "hf://org/base", "tokenSecretRef": {"name": "hf-cred"}},
                            "adapter": {"uri": "hf://org/adapter"}}),
        ("FineTunedModel", {"baseModel": {"uri": "pvc://models/base"},
                            "adapter": {"uri": "s3://b/a", "tokenSecretRef": {"name": "s3-cred"}}}),
        ("QuantizationJob", {"source": {"uri": "hf://org/m", "tokenSecretRef": {"name": "hf-cred"}}, "method": "awq",
                             "qualityGate": {"maxPerplexityIncreasePct": 3}}),
        ("InferenceService", {"model": {"uri": "hf://org/m", "tokenSecretRef": {"name": "hf-cred"}},
                              "apiKeySecretRef": {"name": "api-cred", "key": "key"}}),
        ("InferenceService", {"runtime": "llamacpp", "model": {"uri": "pvc://m/x.gguf"},
                              "apiKeySecretRef": {"name": "api-cred"}}),
    ]
)  # fmt: skip


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(TOKENED)
def test_a_referenced_secret_is_wired_as_env_value_from(case: tuple[str, dict[str, Any]]) -> None:
    kind, spec = case
    [manifests] = check_and_render(Case([resource(kind, spec)])).values()
    assert manifests
    assert_no_secrets(manifests)
    named = {v["name"] for v in _refs(spec)}
    assert named <= secret_refs(manifests), (named, secret_refs(manifests))
    for m in manifests:
        for c in containers(m):
            for e in c.get("env", []):
                if e["name"] in SECRET_ENV:
                    assert set(e) == {"name", "valueFrom"}, e


def _refs(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, dict):
        found = [v for key, v in value.items() if key in ("tokenSecretRef", "apiKeySecretRef")]
        return found + [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def named_secrets(value: Any) -> set[str]:
    """Every Secret a set of documents names: sources' and the API key's Secrets, and spec.envSecrets."""
    if isinstance(value, dict):
        found = {v["name"] for key, v in value.items() if key in ("tokenSecretRef", "apiKeySecretRef")}
        found |= set(value.get("envSecrets") or [])
        return found.union(*(named_secrets(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(named_secrets(v) for v in value))
    return set()


# What one run must reach besides every shape; a generator drifting into a corner fails here rather than
# quietly testing less. Each is drawn in well over 10% of the cases of the shapes that have it.
BREADTH = {
    "tp2", "tp4", "tp8", "pp", "multi-node", "lora", "lora-ftm", "apiKeySecretRef", "env", "envSecrets",
    "extraArgs", "autoscaling-keda", "autoscaling-hpa", "routing", "awq", "gguf", "quality-gate", "job",
    "gguf-gpu",
}  # fmt: skip


def test_generated_specs_render_restricted_pods() -> None:
    """Every generated spec of every shape (with the resources it references) passes the operator's checks and
    renders, and every Pod of every example runs restricted, with bounded scratch, secrets only by reference,
    and only Secrets the documents name."""
    seen: Counter[str] = Counter()

    def every_pod_is_restricted(case: Case) -> None:
        rendered = check_and_render(case)
        subject = rendered[f"{case.kind}/{case.subject['metadata']['name']}"]
        assert [p for m in subject for p in pod_specs(m)], f"{case.kind} renders no Pods"
        allowed = named_secrets(case.docs)
        for manifests in rendered.values():
            assert_restricted(manifests)
            assert_no_secrets(manifests)
            assert secret_refs(manifests) <= allowed, (secret_refs(manifests), allowed)
        seen.update(case.features)

    for cases in SHAPES.values():
        run = given(cases)(every_pod_is_restricted)
        settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])(run)()
    assert not BREADTH - set(seen), f"never generated: {sorted(BREADTH - set(seen))} (seen: {dict(seen)})"


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_generated_specs_render_objects_the_api_server_takes(shape: str) -> None:
    @settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(SHAPES[shape])
    def valid_objects(case: Case) -> None:
        for manifests in check_and_render(case).values():
            for m in manifests:
                validate(m)

    valid_objects()


class Objects:
    """The smallest stand-in for the API client that resolve_ref needs: objects by (plural, namespace, name)."""

    def __init__(self, objects: list[dict[str, Any]]) -> None:
        self.objects = {(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]): o for o in objects}

    def get(self, rtype: k.ResourceType, namespace: str, name: str) -> dict[str, Any] | None:
        return self.objects.get((rtype.kind, namespace, name))


READY_FTM = {**resource("FineTunedModel", {}, name="m", namespace="other"),
             "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Succeeded"}]}}  # fmt: skip
READY_FTM["metadata"] = {**READY_FTM["metadata"], "generation": 1}
READY_FTM["status"]["observedGeneration"] = 1


@pytest.mark.parametrize("allowed", [False, True])
def test_cross_namespace_references_need_the_operators_consent(allowed: bool) -> None:
    config = OperatorConfig(allow_cross_namespace_refs=allowed)
    ctx = Context(kube=Objects([READY_FTM]), config=config)  # type: ignore[arg-type]
    me = resource("QuantizationJob", {}, name="q", namespace="team")
    ref = ObjectRef(name="m", namespace="other")
    if not allowed:
        with pytest.raises(Invalid, match="cross-namespace references are disabled"):
            resolve_ref(ctx, me, ref, "FineTunedModel", "spec.source.fineTunedModelRef")
        return
    assert resolve_ref(ctx, me, ref, "FineTunedModel", "spec.source.fineTunedModelRef") is READY_FTM
    with pytest.raises(Waiting, match="does not exist"):
        resolve_ref(ctx, me, ObjectRef(name="gone", namespace="other"), "FineTunedModel", "f")
