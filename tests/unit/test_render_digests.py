"""Every consumer of a recorded artifact is told its digest: worker Jobs in $TUNEOPS_EXPECT_DIGESTS (input URI ->
digest, exactly the inputs it reads), the serving Pods' fetch init container as --expect-digest."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.render_support import env_of, owner, pod_specs
from tuneops.api import parse_spec
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.render import (
    ResolvedModel,
    render_evaluate_job,
    render_inferenceservice,
    render_inspect_job,
    render_merge_job,
    render_quantize_job,
)
from tuneops.storage.integrity import EXPECT_ENV

CFG = OperatorConfig()
MERGED = ResolvedModel(uri="s3://models/ftm/0123456789abcdef", digest="sha256:" + "a" * 64, size_bytes=10)
GGUF = ResolvedModel(uri="s3://models/q/fedcba9876543210", digest="sha256:" + "b" * 64, format="gguf",
                     files=("model-Q4_K_M.gguf",))  # fmt: skip


def worker_env(job: dict[str, Any]) -> dict[str, Any]:
    return env_of(job["spec"]["template"]["spec"]["containers"][0])


def expected(job: dict[str, Any]) -> dict[str, str] | None:
    raw = worker_env(job).get(EXPECT_ENV)
    return None if raw is None else dict(json.loads(raw))


def qspec(method: str) -> QuantizationJobSpec:
    body: dict[str, Any] = {"source": {"uri": MERGED.uri}, "method": method,
                            "qualityGate": {"maxPerplexityIncreasePct": 5}}  # fmt: skip
    parsed = parse_spec(
        "QuantizationJob", {"kind": "QuantizationJob", "metadata": {"name": "q"}, "spec": body}
    )
    assert isinstance(parsed, QuantizationJobSpec)
    return parsed


def ftm() -> FineTunedModelSpec:
    body = {"baseModel": {"uri": "hf://org/base"}, "adapter": {"uri": "s3://adapters/a1"}}
    parsed = parse_spec("FineTunedModel", {"kind": "FineTunedModel", "metadata": {"name": "f"}, "spec": body})
    assert isinstance(parsed, FineTunedModelSpec)
    return parsed


@pytest.mark.parametrize("method", ["awq", "gguf"])
def test_quantize_and_evaluate_jobs_expect_the_digests_they_read(method: str) -> None:
    o = owner("QuantizationJob", "q")
    quantize = render_quantize_job(qspec(method), o, CFG, source=MERGED)
    assert expected(quantize) == {MERGED.uri: MERGED.digest}
    artifact = GGUF if method == "gguf" else MERGED
    evaluate = render_evaluate_job(qspec(method), o, CFG, source=MERGED, artifact=artifact)
    model_uri = evaluate["spec"]["template"]["spec"]["containers"][0]["args"][3]
    if method == "gguf":
        assert model_uri == f"{GGUF.uri}/model-Q4_K_M.gguf"  # a file of the artifact, checked by its manifest
    assert expected(evaluate) == {MERGED.uri: MERGED.digest, model_uri: artifact.digest}


def test_merge_expects_the_adapter_it_inspected_and_unknown_digests_are_not_passed() -> None:
    o = owner("FineTunedModel", "f")
    merge = render_merge_job(ftm(), o, CFG, adapter_digest="sha256:" + "c" * 64)
    assert expected(merge) == {"s3://adapters/a1": "sha256:" + "c" * 64}
    assert expected(render_inspect_job(ftm(), o, CFG)) is None
    # Only content digests are checked: anything else the status may hold is not a promise about bytes.
    assert expected(render_merge_job(ftm(), o, CFG, adapter_digest="rev-1234")) is None


def test_the_fetch_init_container_expects_the_served_artifact() -> None:
    body = {"runtime": "vllm", "model": {"uri": MERGED.uri}}
    spec = parse_spec(
        "InferenceService", {"kind": "InferenceService", "metadata": {"name": "s"}, "spec": body}
    )
    assert isinstance(spec, InferenceServiceSpec)
    r = render_inferenceservice(spec, owner("InferenceService", "s"), CFG, model=MERGED)
    workload = next(m for m in r.manifests if m["kind"] == "Deployment")
    (init,) = next(pod_specs(workload))["initContainers"]
    assert init["args"][-2:] == ["--expect-digest", MERGED.digest]
    unknown = render_inferenceservice(spec, owner("InferenceService", "s"), CFG,
                                      model=ResolvedModel(uri=MERGED.uri))  # fmt: skip
    (init,) = next(pod_specs(next(m for m in unknown.manifests if m["kind"] == "Deployment")))[
        "initContainers"
    ]
    assert "--expect-digest" not in init["args"]


def test_hash_verified_inputs_is_passed_to_worker_jobs_when_the_administrator_asks() -> None:
    """config.hashVerifiedInputs: workers hash a folder its manifest vouches for anyway; off, nothing is set (a
    tenant cannot set TUNEOPS_* variables, so the choice is the administrator's alone)."""
    from tuneops.storage.integrity import HASH_INPUTS_ENV

    o = owner("FineTunedModel", "f")
    assert HASH_INPUTS_ENV not in worker_env(render_merge_job(ftm(), o, CFG))
    strict = OperatorConfig.model_validate({"hashVerifiedInputs": True})
    assert worker_env(render_merge_job(ftm(), o, strict))[HASH_INPUTS_ENV] == "always"
