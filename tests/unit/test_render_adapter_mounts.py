"""Adding an adapter never changes the vLLM pod template: every claim an adapter may come from is mounted
from the start (a volume cannot be added to a running Pod)."""

from __future__ import annotations

from typing import Any

from tuneops.api import parse_spec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.serving import render_inferenceservice
from tuneops.render.serving.types import ServingRender
from tuneops.render.types import Owner, ResolvedAdapter, ResolvedModel

OWNER = Owner("tuneops.io/v1alpha1", "InferenceService", "chat", "ml", "uid-1")
SOURCES = ["pvc://adapters/sql-v1", "pvc://tuneops-artifacts/ml/sql", "pvc://adapters/chat"]


def _pod_template(rendered: ServingRender) -> Any:
    return next(m for m in rendered.manifests if m["kind"] == "Deployment")["spec"]["template"]


def _spec() -> InferenceServiceSpec:
    obj = {"kind": "InferenceService", "metadata": {"name": "chat"}, "spec": {
        "model": {"uri": "pvc://models/base"},
        "lora": {"adapters": [{"name": "sql", "fineTunedModelRef": {"name": "sql"}},
                              {"name": "chat", "uri": "pvc://adapters/chat"}]},
    }}  # fmt: skip
    spec = parse_spec("InferenceService", obj)
    assert isinstance(spec, InferenceServiceSpec)
    return spec


def _template(adapters: list[ResolvedAdapter]) -> dict[str, Any]:
    rendered = render_inferenceservice(
        _spec(), OWNER, OperatorConfig(), model=ResolvedModel(uri="pvc://models/base"), adapters=adapters,
        adapter_sources=SOURCES,
    )  # fmt: skip
    deployment = next(m for m in rendered.manifests if m["kind"] == "Deployment")
    template: dict[str, Any] = deployment["spec"]["template"]
    return template


def test_adapters_arriving_later_do_not_change_the_pod_template() -> None:
    chat = ResolvedAdapter(name="chat", uri="pvc://adapters/chat", digest="sha256:c", rank=8)
    sql = ResolvedAdapter(
        name="sql", uri="pvc://tuneops-artifacts/ml/sql/0123456789abcdef", digest="sha256:s", rank=8
    )
    first, second, third = _template([]), _template([chat]), _template([chat, sql])
    assert first == second == third
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in first["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    }
    assert claims == {"models", "adapters", "tuneops-artifacts"}


def test_without_sources_a_new_claim_would_need_a_new_volume() -> None:
    # The reason the reconciler passes adapter_sources: the mounts follow the adapters otherwise.
    sql = ResolvedAdapter(
        name="sql", uri="pvc://tuneops-artifacts/ml/sql/0123456789abcdef", digest="sha256:s"
    )
    plain = render_inferenceservice(
        _spec(), OWNER, OperatorConfig(), model=ResolvedModel(uri="pvc://models/base")
    )
    more = render_inferenceservice(
        _spec(), OWNER, OperatorConfig(), model=ResolvedModel(uri="pvc://models/base"), adapters=[sql]
    )
    assert _pod_template(plain) != _pod_template(more)
