"""model.serve: which form of a FineTunedModel a service serves, and why (table-tested), and what the lora form
renders (one client-facing name in either form)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.unit.render_support import owner
from tuneops.api import SpecError, parse_spec
from tuneops.api.finetunedmodel import FineTunedModelSpec, FineTunedModelStatus
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.reconcile.base import Invalid
from tuneops.reconcile.sources import served_form
from tuneops.render import render_inferenceservice
from tuneops.render.types import ResolvedAdapter, ResolvedModel

FTM = FineTunedModelSpec.model_validate(
    {
        "baseModel": {"uri": "pvc://models/base"},
        "adapter": {"uri": "pvc://adapters/a"},
        "benchmark": {"enabled": True},
    }
)
MERGED = {"artifact": {"uri": "pvc://models/m", "digest": "sha256:m", "format": "safetensors"}}
PEFT = {"artifact": {"uri": "pvc://adapters/a/sha256-x", "format": "peft"}}
BENCH = {"benchmark": {"recommendation": "lora", "reason": "serve as LoRA: it is within 3% of the merged "
                       "throughput at concurrency 8"}}  # fmt: skip


@pytest.mark.parametrize(
    ("serve", "status", "form", "says"),
    [
        (None, MERGED, "merged", "model.serve is unset"),
        ("merged", MERGED, "merged", "model.serve is merged"),
        ("lora", MERGED, "lora", "model.serve is lora"),
        ("auto", MERGED, "merged", "benchmark has not finished"),
        ("auto", {**MERGED, **BENCH}, "lora", "within 3%"),
        ("auto", {**MERGED, "benchmark": {"recommendation": "merged", "reason": "merge: LoRA costs 40%"}},
         "merged", "LoRA costs 40%"),
        (None, PEFT, "lora", "is not merged"),
        ("auto", PEFT, "lora", "is not merged"),
    ],
)  # fmt: skip
def test_the_form_and_its_reason(serve: str | None, status: dict[str, Any], form: str, says: str) -> None:
    got = served_form(serve, "m", FTM, FineTunedModelStatus.model_validate(status))
    assert got.serve == form and says in got.reason, got


def test_auto_without_a_benchmark_says_how_to_ask_for_one() -> None:
    plain = FTM.model_copy(update={"benchmark": None})
    got = served_form("auto", "m", plain, FineTunedModelStatus.model_validate(MERGED))
    assert got.serve == "merged" and "spec.benchmark.enabled" in got.reason


def test_merged_of_an_unmerged_model_is_invalid() -> None:
    with pytest.raises(Invalid, match=r"merge\.enabled false"):
        served_form("merged", "m", FTM, FineTunedModelStatus.model_validate(PEFT))


def service(**model: Any) -> InferenceServiceSpec:
    body = {"model": {"fineTunedModelRef": {"name": "m"}, **model}, "resources": {"gpus": 0}}
    parsed = parse_spec(
        "InferenceService", {"kind": "InferenceService", "metadata": {"name": "chat"}, "spec": body}
    )
    assert isinstance(parsed, InferenceServiceSpec)
    return parsed


def test_the_lora_form_gives_the_adapter_the_services_name() -> None:
    spec = service(serve="auto")
    model = ResolvedModel(uri="pvc://models/base", base_name="chat-base")
    adapter = ResolvedAdapter(name="chat", uri="pvc://adapters/a", digest="sha256:a", rank=8)
    out = render_inferenceservice(spec, owner("InferenceService", "chat"), OperatorConfig(), model=model,
                                  adapters=[adapter])  # fmt: skip
    assert out.served_models == ("chat-base", "chat")
    dep = next(m for m in out.manifests if m["kind"] == "Deployment")
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--served-model-name") + 1] == "chat-base" and "--enable-lora" in args


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"model": {"uri": "pvc://models/m", "serve": "auto"}}, "needs model.fineTunedModelRef"),
        (
            {"model": {"fineTunedModelRef": {"name": "m"}, "serve": "lora"}, "runtime": "llamacpp"},
            "vllm runtime",
        ),
    ],
)
def test_serve_where_it_cannot_work_is_refused(body: dict[str, Any], text: str) -> None:
    with pytest.raises(SpecError, match=re.escape(text)):
        parse_spec("InferenceService", {"kind": "InferenceService", "metadata": {"name": "x"}, "spec": body})
