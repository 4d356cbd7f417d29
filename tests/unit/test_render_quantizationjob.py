"""The QuantizationJob renderer: AWQ and GGUF quantize Jobs and the quality-gate evaluate Job."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.render_support import (
    assert_no_secrets,
    assert_restricted,
    check_golden,
    env_of,
    owner,
    validate,
)
from tuneops.api import parse_spec
from tuneops.api.conditions import Reason
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import Features, OperatorConfig
from tuneops.render import (
    RenderError,
    ResolvedModel,
    render_evaluate_job,
    render_quantizationjob,
    render_quantize_job,
)
from tuneops.render.quantizationjob import evaluated_model_uri, quantize_args
from tuneops.validation.quantization import check_quantizationjob

OWNER = owner("QuantizationJob", "qwen-awq")
SOURCE = ResolvedModel(uri="pvc://models/qwen-merged", digest="sha256:src", format="hf")
CFG = OperatorConfig()


def spec(**body: Any) -> QuantizationJobSpec:
    doc = {
        "kind": "QuantizationJob",
        "metadata": {"name": "q"},
        "spec": {"source": {"uri": SOURCE.uri}, **body},
    }
    parsed = parse_spec("QuantizationJob", doc)
    assert isinstance(parsed, QuantizationJobSpec)
    return parsed


AWQ = spec(method="awq", qualityGate={"maxPerplexityIncreasePct": 5}, output={"uri": "pvc://models/qwen-awq"})
GGUF = spec(
    method="gguf",
    gguf={"quantTypes": ["Q4_K_M", "Q8_0"], "outtype": "bf16"},
    qualityGate={"maxPerplexityIncreasePct": 12.5, "evalDatasetUri": "pvc://data/eval.jsonl", "samples": 32},
    output={"uri": "pvc://models/qwen-gguf"},
)


def args_of(job: dict[str, Any]) -> list[str]:
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert isinstance(args, list)
    return args


def image_of(job: dict[str, Any]) -> str:
    image = job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert isinstance(image, str)
    return image


def test_golden_awq() -> None:
    jobs = render_quantizationjob(AWQ, OWNER, OperatorConfig(features=Features(pod_failure_policy=True)),
                                  source=SOURCE)  # fmt: skip
    check_golden("quantizationjob-awq", jobs)
    for j in jobs:
        validate(j)
    assert_restricted(jobs)
    assert_no_secrets(jobs)
    assert [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in jobs] == ["quantize", "evaluate"]


def test_golden_gguf() -> None:
    artifact = ResolvedModel(uri="pvc://models/qwen-gguf", digest="sha256:out", format="gguf",
                             files=("qwen-Q4_K_M.gguf", "qwen-Q8_0.gguf"))  # fmt: skip
    jobs = render_quantizationjob(GGUF, OWNER, CFG, source=SOURCE, artifact=artifact)
    check_golden("quantizationjob-gguf", jobs)
    for j in jobs:
        validate(j)
    assert_restricted(jobs)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"method": "awq"},
         ["quantize-awq", "--source", "S", "--output", "O", "--backend", "llm-compressor", "--bits", "4",
          "--group-size", "128", "--samples", "128", "--max-seq-len", "512"]),
        ({"method": "awq", "awq": {"backend": "autoawq", "bits": 8, "groupSize": 64, "zeroPoint": False,
                                   "calibration": {"datasetUri": "s3://b/cal.jsonl", "samples": 16, "maxSeqLen": 256}}},
         ["quantize-awq", "--source", "S", "--output", "O", "--backend", "autoawq", "--bits", "8",
          "--group-size", "64", "--no-zero-point", "--samples", "16", "--max-seq-len", "256",
          "--calibration", "s3://b/cal.jsonl"]),
        ({"method": "gguf"},
         ["quantize-gguf", "--source", "S", "--output", "O", "--type", "Q4_K_M", "--outtype", "f16"]),
        ({"method": "gguf", "gguf": {"quantTypes": ["Q5_K_M", "Q2_K", "Q8_0"], "outtype": "q8_0"}},
         ["quantize-gguf", "--source", "S", "--output", "O", "--type", "Q5_K_M", "--type", "Q2_K",
          "--type", "Q8_0", "--outtype", "q8_0"]),
    ],
)  # fmt: skip
def test_quantize_args(body: dict[str, Any], expected: list[str]) -> None:
    assert quantize_args(spec(**body), "S", "O") == expected


def test_images_per_step() -> None:
    gguf_art = ResolvedModel(uri="pvc://models/qwen-gguf", format="gguf", files=("a-Q4_K_M.gguf",))
    awq_art = ResolvedModel(uri="pvc://models/qwen-awq", format="compressed-tensors")
    assert image_of(render_quantize_job(AWQ, OWNER, CFG, source=SOURCE)) == CFG.images.worker
    assert (
        image_of(render_evaluate_job(AWQ, OWNER, CFG, source=SOURCE, artifact=awq_art)) == CFG.images.worker
    )
    assert image_of(render_quantize_job(GGUF, OWNER, CFG, source=SOURCE)) == CFG.images.gguf
    assert (
        image_of(render_evaluate_job(GGUF, OWNER, CFG, source=SOURCE, artifact=gguf_art)) == CFG.images.gguf
    )
    custom = spec(method="awq", job={"image": "registry.local/worker:dev"})
    assert image_of(render_quantize_job(custom, OWNER, CFG, source=SOURCE)) == "registry.local/worker:dev"


def test_evaluate_args_and_the_measured_file() -> None:
    artifact = ResolvedModel(uri="pvc://models/qwen-gguf", digest="sha256:out", format="gguf",
                             files=("qwen-Q8_0.gguf", "qwen-Q4_K_M.gguf"))  # fmt: skip
    job = render_evaluate_job(GGUF, OWNER, CFG, source=SOURCE, artifact=artifact)
    assert args_of(job) == [
        "worker", "evaluate", "--model", "pvc://models/qwen-gguf/qwen-Q4_K_M.gguf", "--reference", SOURCE.uri,
        "--dataset", "pvc://data/eval.jsonl", "--samples", "32", "--max-increase-pct", "12.5",
    ]  # fmt: skip
    awq = ResolvedModel(uri="pvc://models/qwen-awq", format="compressed-tensors")
    assert evaluated_model_uri(AWQ, awq) == "pvc://models/qwen-awq"
    with pytest.raises(RenderError):
        render_evaluate_job(spec(method="awq"), OWNER, CFG, source=SOURCE, artifact=awq)


def test_names_follow_source_digest_and_spec() -> None:
    def name(s: QuantizationJobSpec, src: ResolvedModel = SOURCE) -> str:
        n = render_quantize_job(s, OWNER, CFG, source=src)["metadata"]["name"]
        assert isinstance(n, str)
        return n

    base = name(AWQ)
    assert name(AWQ) == base
    assert name(AWQ, ResolvedModel(uri=SOURCE.uri, digest="sha256:other")) != base
    assert name(AWQ, ResolvedModel(uri="pvc://models/elsewhere", digest=SOURCE.digest)) != base
    assert name(spec(method="awq", awq={"groupSize": 64}, output={"uri": "pvc://models/qwen-awq"})) != base
    # The quality gate is not part of the quantize step: changing it does not redo quantization.
    assert name(spec(method="awq", qualityGate={"maxPerplexityIncreasePct": 9},
                     output={"uri": "pvc://models/qwen-awq"})) == base  # fmt: skip


def test_source_token_reaches_the_worker_as_secret_env() -> None:
    s = spec(method="gguf", source={"uri": "hf://org/private", "tokenSecretRef": {"name": "hf", "key": "t"}})
    job = render_quantize_job(s, OWNER, CFG, source=ResolvedModel(uri="hf://org/private"))
    assert env_of(job["spec"]["template"]["spec"]["containers"][0])["TUNEOPS_SOURCE_HF_TOKEN"] == {
        "secretKeyRef": {"key": "t", "name": "hf"}
    }
    assert_no_secrets([job])


def test_source_calibration_dataset_and_output_each_use_their_own_secret() -> None:
    s = spec(
        method="awq",
        source={"uri": "hf://org/private", "tokenSecretRef": {"name": "hf"}},
        awq={"calibration": {"datasetUri": "s3://data/calib.jsonl", "tokenSecretRef": {"name": "data-creds"}}},
        qualityGate={"maxPerplexityIncreasePct": 5, "evalDatasetUri": "s3://eval/wiki.txt",
                     "tokenSecretRef": {"name": "eval-creds"}},
        output={"uri": "s3://models/qwen-awq", "tokenSecretRef": {"name": "out-creds"}},
    )  # fmt: skip
    src = ResolvedModel(uri="hf://org/private")
    quantize, evaluate = render_quantizationjob(s, OWNER, CFG, source=src)
    q = env_of(quantize["spec"]["template"]["spec"]["containers"][0])
    assert q["TUNEOPS_SOURCE_HF_TOKEN"]["secretKeyRef"]["name"] == "hf"
    assert q["TUNEOPS_CALIBRATION_AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "data-creds"
    assert q["TUNEOPS_OUTPUT_AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "out-creds"
    assert json.loads(q["TUNEOPS_CREDENTIALS"]) == {
        "hf://org/private": "source", "s3://data/calib.jsonl": "calibration", "s3://models/qwen-awq": "output"
    }  # fmt: skip
    e = env_of(evaluate["spec"]["template"]["spec"]["containers"][0])
    # The gate reads the artifact where the output Secret wrote it, the reference with the source's.
    assert json.loads(e["TUNEOPS_CREDENTIALS"]) == {
        "hf://org/private": "source", "s3://eval/wiki.txt": "dataset", "s3://models/qwen-awq": "model"
    }  # fmt: skip
    assert e["TUNEOPS_MODEL_AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "out-creds"
    assert e["TUNEOPS_DATASET_AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "eval-creds"
    assert_no_secrets([quantize, evaluate])


@pytest.mark.parametrize(("fmt", "problems"), [("hf", 0), ("compressed-tensors", 1), ("awq", 1), ("gguf", 1)])
def test_check_source_format(fmt: str, problems: int) -> None:
    found = check_quantizationjob(AWQ, ResolvedModel(uri="pvc://m/x", format=fmt))  # type: ignore[arg-type]
    assert len(found) == problems
    assert all(p.reason == Reason.INVALID_SPEC and p.field == "spec.source" for p in found)
