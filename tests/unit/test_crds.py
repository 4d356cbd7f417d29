"""The CRDs: generated from the models, committed without drift, and refusing bad resources by field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.unit.schema_tools import cel_errors, schema_errors
from tuneops.api import KINDS, SpecError, crdgen, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    for obj in crdgen.all_crds():
        path = ROOT / "crds" / f"{obj['metadata']['name']}.yaml"
        assert path.exists(), f"{path} missing: run `make crds`"
        committed = yaml.safe_load(path.read_text())
        assert committed == obj, f"{path.name} is stale: run `make crds` and commit the result"


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_crd_shape(kind: str) -> None:
    crd = crdgen.crd(KINDS[kind])
    names = crd["spec"]["names"]
    assert names["categories"] == ["tuneops"]
    assert crd["spec"]["group"] == "tuneops.io"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1"
    assert "status" in version["subresources"]
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:2] == ["Ready", "Reason"] and columns[-1] == "Age"
    if kind == "InferenceService":
        assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
        assert names["shortNames"] == ["tisvc"]


def _walk(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, node)]
    for name, sub in node.get("properties", {}).items():
        out.extend(_walk(sub, f"{path}.{name}"))
    if "items" in node:
        out.extend(_walk(node["items"], f"{path}[]"))
    if isinstance(node.get("additionalProperties"), dict):
        out.extend(_walk(node["additionalProperties"], f"{path}.*"))
    return out


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_string_and_list_is_bounded(kind: str) -> None:
    schema = crdgen.crd(KINDS[kind])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if node.get("type") == "string":
            assert "maxLength" in node or "enum" in node or "format" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path
        # structural: no unions, no refs left behind
        assert not {"anyOf", "oneOf", "allOf", "$ref"} & set(node), path


def test_defaults_reach_the_schema() -> None:
    spec = crdgen.crd(KINDS["FineTunedModel"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    merge = spec["properties"]["spec"]["properties"]["merge"]
    assert merge["default"] == {}
    assert merge["properties"]["enabled"]["default"] is True
    assert merge["properties"]["dtype"]["enum"] == ["auto", "float16", "bfloat16", "float32"]
    isvc = crdgen.crd(KINDS["InferenceService"])["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rank = isvc["properties"]["spec"]["properties"]["lora"]["properties"]["maxLoraRank"]
    assert rank["enum"] == [1, 8, 16, 32, 64, 128, 256, 320, 512]


def _isvc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"model": {"uri": "pvc://models/mistral"}}
    base.update(spec)
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "InferenceService",
        "metadata": {"name": "chat"},
        "spec": base,
    }


def _qjob(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"source": {"uri": "pvc://models/merged"}, "method": "gguf"}
    base.update(spec)
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "QuantizationJob",
        "metadata": {"name": "q"},
        "spec": base,
    }


def _ftm(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "baseModel": {"uri": "hf://mistralai/Mistral-7B-v0.1"},
        "adapter": {"uri": "s3://b/a", "tokenSecretRef": {"name": "aws"}},
    }
    base.update(spec)
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "FineTunedModel",
        "metadata": {"name": "m"},
        "spec": base,
    }


# (case, resource, field the error must name, where it is caught: "schema" = OpenAPI, "cel" = CEL rule)
INVALID = [
    ("wrong enum", _isvc(runtime="triton"), "spec.runtime", "schema"),
    ("wrong dtype enum", _ftm(merge={"dtype": "int4"}), "spec.merge.dtype", "schema"),
    ("gguf type not in llama.cpp's list", _qjob(gguf={"quantTypes": ["Q4_K_X"]}), "spec.gguf.quantTypes", "schema"),
    ("lora rank vLLM refuses", _isvc(lora={"maxLoraRank": 12}), "spec.lora.maxLoraRank", "schema"),
    ("negative TP", _isvc(vllm={"tensorParallelSize": -2}), "spec.vllm.tensorParallelSize", "schema"),
    ("unbounded string", _ftm(baseModel={"uri": "hf://" + "a" * 5000}), "spec.baseModel.uri", "schema"),
    ("unknown field", _isvc(replica=3), "spec", "schema"),
    ("unknown nested field", _ftm(merge={"enable": True}), "spec.merge", "schema"),
    ("unsupported scheme", _ftm(adapter={"uri": "ftp://host/a"}), "spec.adapter.uri", "schema"),
    ("two sources", _isvc(model={"uri": "pvc://m/a", "quantizationJobRef": {"name": "q"}}), "spec.model", "cel"),
    ("no source", _qjob(source={}), "spec.source", "cel"),
    ("settings of the other method", _qjob(awq={"bits": 4}), "spec", "cel"),
    ("gpus not TP x PP", _isvc(resources={"gpus": 3}, vllm={"tensorParallelSize": 2}), "spec", "cel"),
    ("duplicate adapter names", _isvc(lora={"adapters": [{"name": "a", "uri": "pvc://b/1"}, {"name": "a", "uri": "pvc://b/2"}]}), "spec.lora", "cel"),
    ("lora on llama.cpp", _isvc(runtime="llamacpp", lora={"adapters": [{"name": "a", "uri": "pvc://b/1"}]}), "spec", "cel"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "obj", "field", "where"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_resources_are_refused_naming_the_field(
    case: str, obj: dict[str, Any], field: str, where: str
) -> None:
    errors = schema_errors(obj) if where == "schema" else cel_errors(obj)
    assert errors, f"{case}: accepted"
    assert any(e.startswith(field.removeprefix("")) or e.startswith(field) for e in errors), errors
    # The operator validates with the same models (1.20-1.24 servers do not run CEL rules): same verdict.
    with pytest.raises(SpecError) as info:
        parse_spec(obj["kind"], obj)
    assert any(p.startswith(field) for p in info.value.problems), info.value.problems


def test_method_is_immutable() -> None:
    old = _qjob()
    new = _qjob(method="awq")
    assert cel_errors(new, old=old) == ["spec: method is immutable; create a new QuantizationJob"]
    assert cel_errors(old, old=old) == []


VALID = [
    _isvc(),
    _isvc(vllm={"tensorParallelSize": 4, "dtype": "bfloat16"}, resources={"gpus": 4}),
    _isvc(lora={"adapters": [{"name": "sql", "uri": "pvc://b/1"}, {"name": "chat", "fineTunedModelRef": {"name": "c"}}],
                "maxLoraRank": 8}),
    _qjob(gguf={"quantTypes": ["Q4_K_M", "Q8_0"]}, qualityGate={"maxPerplexityIncreasePct": 5}),
    _qjob(method="awq", awq={"calibration": {"samples": 64}}),
    _ftm(merge={"dtype": "bfloat16"}, output={"uri": "pvc://models/merged"}),
]  # fmt: skip


@pytest.mark.parametrize("obj", VALID, ids=[f"{o['kind']}-{i}" for i, o in enumerate(VALID)])
def test_valid_resources_pass_every_check(obj: dict[str, Any]) -> None:
    assert schema_errors(obj) == []
    assert cel_errors(obj) == []
    parse_spec(obj["kind"], obj)


def test_cli_validate_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump_all([_isvc(vllm={"tensorParallelSize": 0}), _ftm()]))
    proc = subprocess.run(
        [sys.executable, "-m", "tuneops.cli", "validate", "-f", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "spec.vllm.tensorParallelSize" in proc.stderr
    assert "ok:" in proc.stdout and "FineTunedModel" in proc.stdout
