"""Every example parses, renders to strictly valid manifests, and says what its comments promise."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.render_support import assert_no_secrets, assert_restricted, validate
from tuneops.api import KINDS, parse_spec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.plan import Resolver, parse_documents, render_documents

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
OWNED = ["mistral-7b-tp2", "llama-70b-tp4", "awq", "gguf-cpu", "multi-lora"]


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((EXAMPLES / f"{name}.yaml").read_text()) if d]


def render(name: str) -> list[dict[str, Any]]:
    return render_documents(load(name), OperatorConfig(), namespace="demo")


def one(manifests: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        m
        for m in manifests
        if m["kind"] == kind
        and (component is None or m["metadata"]["labels"]["app.kubernetes.io/component"] == component)
    ]
    assert len(found) == 1, [m["metadata"]["name"] for m in found]
    return found[0]


def server_args(manifests: list[dict[str, Any]]) -> list[str]:
    args = one(manifests, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert isinstance(args, list)
    return args


def flag(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.yaml")))
def test_every_example_parses_and_renders_valid_manifests(name: str) -> None:
    docs = load(name)
    tuneops_docs = [d for d in docs if d.get("kind") in KINDS]
    assert tuneops_docs, f"{name} has no tuneops resources"
    for doc in tuneops_docs:
        parse_spec(doc["kind"], doc)
    manifests = render_documents(docs, OperatorConfig(), namespace="demo")
    assert manifests
    for m in manifests:
        validate(m)
    assert_restricted(manifests)
    assert_no_secrets(manifests)


def test_the_required_examples_exist() -> None:
    assert all((EXAMPLES / f"{n}.yaml").exists() for n in OWNED)


def test_mistral_tp2() -> None:
    ms = render("mistral-7b-tp2")
    merge = one(ms, "Job", "merge")["spec"]["template"]["spec"]["containers"][0]["args"]
    assert flag(merge, "--dtype") == "bfloat16"
    assert flag(merge, "--base") == "hf://mistralai/Mistral-7B-v0.1@26bca36bde8333b5d7f72e9ed20ccda6a618af24"
    args = server_args(ms)
    assert flag(args, "--tensor-parallel-size") == "2"
    assert flag(args, "--max-model-len") == "8192"
    assert flag(args, "--model") == "/mnt/pvc/models/mistral-7b-support", "serves the merge output"
    pod = one(ms, "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert any(v.get("emptyDir", {}).get("medium") == "Memory" for v in pod["volumes"])
    one(ms, "PodDisruptionBudget")


def test_llama_70b_tp4_bfloat16() -> None:
    ms = render("llama-70b-tp4")
    args = server_args(ms)
    assert flag(args, "--tensor-parallel-size") == "4"
    assert flag(args, "--dtype") == "bfloat16"
    assert "--enable-prefix-caching" in args
    dep = one(ms, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == "nvidia"
    assert dep["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-inference"
    startup = pod["containers"][0]["startupProbe"]
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 3600


def test_awq_quantize_gate_and_serve() -> None:
    ms = render("awq")
    quantize = one(ms, "Job", "quantize")["spec"]["template"]["spec"]["containers"][0]
    assert quantize["args"][:2] == ["worker", "quantize-awq"]
    assert quantize["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"} in one(
        ms, "Job", "quantize"
    )["spec"]["template"]["spec"]["tolerations"]
    one(ms, "Job", "evaluate")
    args = server_args(ms)
    assert "--quantization" not in args
    assert flag(args, "--model") == "/mnt/pvc/models/qwen-7b-awq"


def test_gguf_on_cpu_with_llamacpp() -> None:
    ms = render("gguf-cpu")
    quantize = one(ms, "Job", "quantize")["spec"]["template"]["spec"]["containers"][0]
    assert quantize["image"] == OperatorConfig().images.gguf
    assert quantize["args"].count("--type") == 2 and "Q4_K_M" in quantize["args"]
    dep = one(ms, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["image"] == OperatorConfig().images.llamacpp
    assert flag(c["args"], "--model").endswith("Q4_K_M.gguf")
    assert flag(c["args"], "--threads") == "8"
    assert "nvidia.com/gpu" not in json.dumps(dep)


def test_multi_lora() -> None:
    docs = load("multi-lora")
    ms = render_documents(docs, OperatorConfig(), namespace="demo")
    args = server_args(ms)
    assert flag(args, "--max-lora-rank") == "8"
    assert "--enable-lora" in args
    modules = json.loads(one(ms, "ConfigMap")["data"]["lora-modules.json"])
    assert [m["name"] for m in modules] == ["support", "sql", "summarize"]
    assert {m["base_model_name"] for m in modules} == {"llama-8b"}
    # A FineTunedModel's adapter is served from the copy its inspect Job publishes under its output.
    assert [m["path"] for m in modules] == [
        "/mnt/pvc/tuneops-artifacts/demo/finetunedmodels/llama-8b-support",
        "/mnt/pvc/tuneops-artifacts/demo/finetunedmodels/llama-8b-sql",
        "/mnt/pvc/adapters/llama-8b-summarize",
    ]
    assert len([m for m in ms if m["kind"] == "Job"]) == 2, "two FineTunedModels: inspect only, no merge"
    resources = parse_documents(docs, "demo")
    isvc = next(r.spec for r in resources if r.kind == "InferenceService")
    assert isinstance(isvc, InferenceServiceSpec)
    model, adapters = Resolver(resources, OperatorConfig()).served(isvc, "demo")
    assert model.uri == "pvc://models/meta-llama/Llama-3.1-8B-Instruct"
    assert [a.name for a in adapters] == ["support", "sql", "summarize"]


def test_references_resolve_within_the_input_and_default_outside_it() -> None:
    isvc = {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "svc"},
        "spec": {"model": {"quantizationJobRef": {"name": "elsewhere"}}, "resources": {"gpus": 1}},
    }
    ms = render_documents([isvc], OperatorConfig(artifact_root="pvc://store"), namespace="ns1")
    assert flag(server_args(ms), "--model") == "/mnt/pvc/store/ns1/quantizationjobs/elsewhere"
    assert all(m["metadata"]["namespace"] == "ns1" for m in ms)
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ignored"}}
    assert render_documents([other], OperatorConfig()) == []
