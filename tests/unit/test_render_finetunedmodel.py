"""The FineTunedModel renderer: inspect and merge Jobs, content-addressed, valid and restricted."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.unit.render_support import (
    assert_no_secrets,
    assert_restricted,
    canonical,
    check_golden,
    env_of,
    owner,
    validate,
)
from tuneops.api import SpecError, parse_spec
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import Features, Images, OperatorConfig
from tuneops.render import RenderError, render_finetunedmodel, render_inspect_job, render_merge_job
from tuneops.render.finetunedmodel import merge_output_uri
from tuneops.render.names import bounded_name
from tuneops.render.serving.args import cpu_kv_cache_bytes

OWNER = owner("FineTunedModel", "mistral-support")


def spec(**over: Any) -> FineTunedModelSpec:
    body: dict[str, Any] = {
        "baseModel": {
            "uri": "hf://mistralai/Mistral-7B-v0.1",
            "revision": "main",
            "tokenSecretRef": {"name": "hf-token", "key": "token"},
        },
        "adapter": {"uri": "pvc://adapters/support"},
        "output": {"uri": "pvc://models/support"},
    }
    body.update(over)
    parsed = parse_spec("FineTunedModel", {"kind": "FineTunedModel", "metadata": {"name": "x"}, "spec": body})
    assert isinstance(parsed, FineTunedModelSpec)
    return parsed


def worker(job: dict[str, Any]) -> dict[str, Any]:
    c = job["spec"]["template"]["spec"]["containers"][0]
    assert isinstance(c, dict)
    return c


def test_golden_default() -> None:
    jobs = render_finetunedmodel(spec(), OWNER, OperatorConfig(), adapter_digest="sha256:abc")
    check_golden("finetunedmodel-default", jobs)
    for job in jobs:
        validate(job)
    assert_restricted(jobs)
    assert_no_secrets(jobs)


def test_golden_gpu_merge_with_pod_failure_policy() -> None:
    s = spec(
        merge={"dtype": "bfloat16", "device": "gpu", "method": "peft"},
        job={
            "resources": {"requests": {"cpu": "8", "memory": "64Gi"}, "limits": {"memory": "64Gi"}},
            "nodeSelector": {"pool": "gpu"},
            "priorityClassName": "batch-low",
            "backoffLimit": 2,
        },
    )
    cfg = OperatorConfig(features=Features(pod_failure_policy=True))
    job = render_merge_job(s, OWNER, cfg)
    check_golden("finetunedmodel-gpu-merge", [job])
    validate(job)
    pod = job["spec"]["template"]["spec"]
    assert worker(job)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0]["action"] == "Ignore" and rules[1]["onExitCodes"]["values"] == [137]
    # No CPU limit given: the thread count follows the request instead.
    omp = env_of(worker(job))["OMP_NUM_THREADS"]
    assert omp["resourceFieldRef"]["resource"] == "requests.cpu"


@pytest.mark.parametrize(
    ("over", "expected"),
    [
        ({}, ["--base", "hf://mistralai/Mistral-7B-v0.1@main", "--adapter", "pvc://adapters/support",
              "--output", "pvc://models/support", "--dtype", "auto", "--method", "stream"]),
        ({"merge": {"dtype": "bfloat16", "method": "peft"}},
         ["--base", "hf://mistralai/Mistral-7B-v0.1@main", "--adapter", "pvc://adapters/support",
          "--output", "pvc://models/support", "--dtype", "bfloat16", "--method", "peft"]),
        ({"output": None},
         ["--base", "hf://mistralai/Mistral-7B-v0.1@main", "--adapter", "pvc://adapters/support",
          "--output", "pvc://tuneops-artifacts/team-a/finetunedmodels/mistral-support", "--dtype", "auto",
          "--method", "stream"]),
    ],
)  # fmt: skip
def test_merge_args(over: dict[str, Any], expected: list[str]) -> None:
    body = {k: v for k, v in over.items() if v is not None}
    s = spec(**body)
    if "output" in over and over["output"] is None:
        s = s.model_copy(update={"output": None})
    job = render_merge_job(s, OWNER, OperatorConfig())
    assert worker(job)["command"] == ["tuneops"]
    assert worker(job)["args"] == ["worker", "merge", *expected]


# Unmerged, the adapter is published at <output>/<digest> so each new version is served from a new path.
@pytest.mark.parametrize(
    ("merge", "flag"), [(True, ["--merge"]), (False, ["--publish", "pvc://models/support"])]
)
def test_inspect_args(merge: bool, flag: list[str]) -> None:
    job = render_inspect_job(spec(merge={"enabled": merge}), OWNER, OperatorConfig())
    assert worker(job)["args"] == [
        "worker", "inspect", "--adapter", "pvc://adapters/support", "--base", "hf://mistralai/Mistral-7B-v0.1@main",
        *flag,
    ]  # fmt: skip


def test_merge_disabled_has_no_merge_job() -> None:
    s = spec(merge={"enabled": False})
    with pytest.raises(RenderError):
        render_merge_job(s, OWNER, OperatorConfig())
    assert [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in render_finetunedmodel(
        s, OWNER, OperatorConfig())] == ["inspect"]  # fmt: skip


def test_metadata_owner_and_labels() -> None:
    job = render_merge_job(spec(), OWNER, OperatorConfig())
    meta = job["metadata"]
    assert meta["namespace"] == "team-a"
    assert meta["ownerReferences"] == [
        {"apiVersion": "tuneops.io/v1alpha1", "blockOwnerDeletion": True, "controller": True,
         "kind": "FineTunedModel", "name": "mistral-support", "uid": OWNER.uid},
    ]  # fmt: skip
    assert meta["labels"] == {
        "app.kubernetes.io/component": "merge",
        "app.kubernetes.io/instance": "mistral-support",
        "app.kubernetes.io/managed-by": "tuneops",
        "app.kubernetes.io/name": "tuneops",
        "app.kubernetes.io/part-of": "tuneops",
        "tuneops.io/kind": "FineTunedModel",
        "tuneops.io/owner": OWNER.uid,
    }
    assert list(meta["labels"]) == sorted(meta["labels"])
    spec_ = job["spec"]
    assert spec_["backoffLimit"] == 1 and spec_["activeDeadlineSeconds"] == 21600
    assert spec_["ttlSecondsAfterFinished"] == 86400
    assert "podFailurePolicy" not in spec_  # only on clusters that have it


def test_environment_and_volumes() -> None:
    job = render_merge_job(spec(), OWNER, OperatorConfig(pvc_mount_root="/data"))
    c = worker(job)
    env = env_of(c)
    assert env["TUNEOPS_TERMINATION_LOG"] == "/dev/termination-log" == c["terminationMessagePath"]
    assert env["TUNEOPS_PVC_ROOT"] == "/data"
    assert env["TUNEOPS_BASE_HF_TOKEN"] == {"secretKeyRef": {"key": "token", "name": "hf-token"}}
    assert env["OMP_NUM_THREADS"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert [e["name"] for e in c["env"]] == sorted(e["name"] for e in c["env"])
    mounts = {m["mountPath"]: m.get("readOnly") for m in c["volumeMounts"]}
    assert mounts["/data/adapters"] is True  # input
    assert mounts["/data/models"] is False  # output
    claims = {v["persistentVolumeClaim"]["claimName"]: v["persistentVolumeClaim"]["readOnly"]
              for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}  # fmt: skip
    assert claims == {"adapters": True, "models": False}


def test_input_and_output_on_one_claim_are_mounted_once_writable() -> None:
    job = render_merge_job(spec(adapter={"uri": "pvc://store/adapters/a"}, output={"uri": "pvc://store/out"}),
                           OWNER, OperatorConfig())  # fmt: skip
    vols = [v for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v]
    assert vols == [{"name": "pvc-store", "persistentVolumeClaim": {"claimName": "store", "readOnly": False}}]


def test_each_source_is_read_with_its_own_secret() -> None:
    s = spec(
        baseModel={"uri": "hf://meta-llama/Llama-3.1-8B", "tokenSecretRef": {"name": "hf-token"}},
        adapter={"uri": "s3://adapters/support", "tokenSecretRef": {"name": "s3-creds"}},
        output={"uri": "s3://models/support", "tokenSecretRef": {"name": "s3-writer"}},
    )
    inspect, merge = render_finetunedmodel(s, OWNER, OperatorConfig())
    for job in (inspect, merge):
        env = env_of(worker(job))
        assert env["TUNEOPS_BASE_HF_TOKEN"] == {"secretKeyRef": {"key": "token", "name": "hf-token"}}
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
                    "AWS_ENDPOINT_URL"):  # fmt: skip
            assert env[f"TUNEOPS_ADAPTER_{key}"] == {
                "secretKeyRef": {"key": key, "name": "s3-creds", "optional": True}
            }
            assert key not in env, "no Secret is shared by every source"
        assert "HF_TOKEN" not in env and "TUNEOPS_BASE_AWS_ACCESS_KEY_ID" not in env
        assert_no_secrets([job])
    env = env_of(worker(merge))
    assert env["TUNEOPS_OUTPUT_AWS_ACCESS_KEY_ID"]["secretKeyRef"]["name"] == "s3-writer"
    roles = json.loads(env["TUNEOPS_CREDENTIALS"])
    assert roles == {"hf://meta-llama/Llama-3.1-8B": "base", "s3://adapters/support": "adapter",
                     "s3://models/support": "output"}  # fmt: skip


def test_a_source_without_a_secret_gets_no_credentials() -> None:
    s = spec(baseModel={"uri": "s3://bucket/base"}, adapter={"uri": "s3://bucket/adapter",
                                                             "tokenSecretRef": {"name": "s3-creds"}})  # fmt: skip
    env = env_of(worker(render_merge_job(s, OWNER, OperatorConfig())))
    assert json.loads(env["TUNEOPS_CREDENTIALS"]) == {"s3://bucket/adapter": "adapter"}
    assert not [n for n in env if n.startswith("TUNEOPS_BASE_")]
    no_secrets = spec(baseModel={"uri": "s3://bucket/base"}, adapter={"uri": "pvc://adapters/a"})
    assert "TUNEOPS_CREDENTIALS" not in env_of(worker(render_merge_job(no_secrets, OWNER, OperatorConfig())))


def name_of(s: FineTunedModelSpec, cfg: OperatorConfig | None = None, **digests: str | None) -> str:
    name = render_merge_job(s, OWNER, cfg or OperatorConfig(), **digests)["metadata"]["name"]
    assert isinstance(name, str)
    return name


def test_content_addressed_names() -> None:
    base = name_of(spec())
    assert base.startswith("mistral-support-merge-") and len(base) == len("mistral-support-merge-") + 8
    assert name_of(spec()) == base, "identical input, identical name (a restarted operator finds its Job)"
    changed = {
        "dtype": name_of(spec(merge={"dtype": "bfloat16"})),
        "base revision": name_of(spec(baseModel={"uri": "hf://mistralai/Mistral-7B-v0.1", "revision": "v2"})),
        "adapter digest": name_of(spec(), adapter_digest="sha256:new"),
        "base digest": name_of(spec(), base_digest="sha256:base"),
        "image": name_of(spec(), OperatorConfig(images=Images(worker="registry.local/worker:2"))),
        "resources": name_of(spec(job={"resources": {"limits": {"cpu": "3", "memory": "9Gi"}}})),
        "backoff": name_of(spec(job={"backoffLimit": 3})),
    }
    for what, name in changed.items():
        assert name != base, what
    assert len(set(changed.values())) == len(changed)
    # Housekeeping that does not change what the Pod computes keeps the name.
    same = OperatorConfig(job_ttl_seconds=60, features=Features(pod_failure_policy=True))
    assert name_of(spec(), same) == base


def test_deterministic_and_key_order_independent() -> None:
    a = render_finetunedmodel(spec(), OWNER, OperatorConfig())
    reordered = FineTunedModelSpec.model_validate(
        dict(reversed(list(spec().model_dump(by_alias=True, exclude_none=True).items()))), by_alias=True
    )
    b = render_finetunedmodel(reordered, OWNER, OperatorConfig())
    assert a == b and canonical(a) == canonical(b)


def test_long_names_stay_within_63_characters() -> None:
    long_a = owner("FineTunedModel", "a" * 70 + "-one")
    long_b = owner("FineTunedModel", "a" * 70 + "-two")
    na = render_merge_job(spec(), long_a, OperatorConfig())
    nb = render_merge_job(spec(), long_b, OperatorConfig())
    for job in (na, nb):
        assert len(job["metadata"]["name"]) <= 63
        assert len(job["metadata"]["labels"]["app.kubernetes.io/instance"]) <= 63
        validate(job)
    assert na["metadata"]["name"] != nb["metadata"]["name"]


def test_default_outputs_of_two_kinds_with_one_name_do_not_overlap() -> None:
    from tuneops.render.quantizationjob import quantize_output_uri

    qspec = parse_spec("QuantizationJob", {"metadata": {"name": "support"}, "spec": {
        "source": {"uri": "pvc://models/support"}, "method": "gguf"}})  # fmt: skip
    assert isinstance(qspec, QuantizationJobSpec)
    ftm = merge_output_uri(spec(output=None).model_copy(update={"output": None}), owner("FineTunedModel", "support"),
                           OperatorConfig())  # fmt: skip
    qjob = quantize_output_uri(qspec, owner("QuantizationJob", "support"), OperatorConfig())
    assert ftm == "pvc://tuneops-artifacts/team-a/finetunedmodels/support"
    assert qjob == "pvc://tuneops-artifacts/team-a/quantizationjobs/support"


def test_names_that_read_the_same_as_labels_stay_apart() -> None:
    dotted = render_merge_job(spec(), owner("FineTunedModel", "llama.v2"), OperatorConfig())
    dashed = render_merge_job(spec(), owner("FineTunedModel", "llama-v2"), OperatorConfig())
    assert dashed["metadata"]["name"].startswith("llama-v2-merge-")
    assert dotted["metadata"]["name"].startswith("llama-v2-merge-")
    assert dotted["metadata"]["name"] != dashed["metadata"]["name"]
    # A name that is already a label is kept as written (only the content hash follows it).
    assert len(dashed["metadata"]["name"]) == len("llama-v2-merge-") + 8
    assert bounded_name("llama.v2") != bounded_name("llama-v2") == "llama-v2"
    assert bounded_name("7b-chat") != bounded_name("t7b-chat") == "t7b-chat"
    validate(dotted)


@pytest.mark.parametrize(
    ("base", "refused"),
    [
        ({"uri": "hf://org/base", "revision": "v3"}, None),
        ({"uri": "hf://org/base@v2"}, None),
        ({"uri": "hf://org/base@v2", "revision": "v2"}, None),  # the same revision twice: nothing is dropped
        ({"uri": "hf://org/base@v2", "revision": "v3"},
         "spec.baseModel.revision: baseModel.uri pins revision 'v2' and baseModel.revision says 'v3'"),
        ({"uri": "hf://org/base@v2/sub", "revision": "main"}, "pins revision 'v2'"),
        ({"uri": "s3://bucket/base", "revision": "v3"},
         "spec.baseModel.revision: revision applies to hf:// models only"),
    ],
)  # fmt: skip
def test_one_revision_for_the_base_model(base: dict[str, Any], refused: str | None) -> None:
    body = {"baseModel": base, "adapter": {"uri": "pvc://adapters/a"}}
    if refused is None:
        job = render_merge_job(spec(**body), OWNER, OperatorConfig())
        assert worker(job)["args"][3].startswith(base["uri"]), "the revision reaches the worker"
        return
    with pytest.raises(SpecError) as err:
        spec(**body)
    (problem,) = err.value.problems
    assert refused in problem, problem


def bench_job(s: FineTunedModelSpec, digest: str = "sha256:m1", rank: int | None = 8) -> dict[str, Any]:
    from tuneops.render.finetunedmodel import render_benchmark_job

    return render_benchmark_job(s, OWNER, OperatorConfig(), merged_uri="pvc://models/support",
                                merged_digest=digest, max_lora_rank=rank, adapter_digest="sha256:abc")  # fmt: skip


def test_the_benchmark_job_runs_the_worker_code_in_the_vllm_image() -> None:
    s = spec(benchmark={"enabled": True, "concurrency": [1, 16], "inputLen": 512, "outputLen": 256})
    job = bench_job(s)
    validate(job)
    assert_restricted([job])
    assert_no_secrets([job])
    pod = job["spec"]["template"]["spec"]
    c = worker(job)
    assert c["image"] == Images().vllm
    assert c["command"] == ["python3", "-m", "tuneops.workers.cli"]
    args = c["args"]
    assert args[0] == "compare"
    assert args[args.index("--merged") + 1] == "pvc://models/support"
    assert args[args.index("--concurrency") + 1] == "1,16"
    assert args[args.index("--max-lora-rank") + 1] == "8"
    # no GPUs: the KV cache within the Pod's memory (a quarter of the worker default), as for a served model
    assert args[args.index("--kv-cache-bytes") + 1] == str(cpu_kv_cache_bytes(OperatorConfig().worker_memory))
    (init,) = pod["initContainers"]
    assert init["image"] == Images().worker and init["args"][:2] == ["worker", "export-code"]
    assert env_of(c)["PYTHONPATH"] == init["args"][-1]
    assert {"mountPath": init["args"][-1], "name": "code", "readOnly": True} in c["volumeMounts"]
    # Every input is checked against the digest its producer recorded, the merged model's included.
    expected = json.loads(env_of(c)["TUNEOPS_EXPECT_DIGESTS"])
    assert expected == {"pvc://adapters/support": "sha256:abc", "pvc://models/support": "sha256:m1"}
    # A new merge is measured again; the same one is not.
    assert bench_job(s, "sha256:m2")["metadata"]["name"] != job["metadata"]["name"]
    assert bench_job(s)["metadata"]["name"] == job["metadata"]["name"]
    steps = [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in render_finetunedmodel(s, OWNER, OperatorConfig())]  # fmt: skip
    assert steps == ["inspect", "merge", "benchmark"]


def test_the_benchmark_job_takes_the_services_hardware() -> None:
    s = spec(benchmark={"enabled": True, "job": {
        "resources": {"limits": {"nvidia.com/gpu": "2", "memory": "64Gi"}, "requests": {"cpu": "8"}},
        "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}})  # fmt: skip
    job = bench_job(s, rank=40)
    validate(job)
    pod = job["spec"]["template"]["spec"]
    c = worker(job)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert any(t.get("key") == "nvidia.com/gpu" for t in pod["tolerations"])
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert (
        shm["emptyDir"]["medium"] == "Memory" and shm["emptyDir"]["sizeLimit"] == OperatorConfig().scratch.shm
    )
    args = c["args"]
    assert args[args.index("--max-lora-rank") + 1] == "64"  # rank 40 rounded up to a size vLLM accepts
    assert "--kv-cache-bytes" not in args  # GPUs: vLLM's own share of GPU memory


@pytest.mark.parametrize(
    ("over", "where", "text"),
    [
        ({"merge": {"enabled": False}, "benchmark": {"enabled": True}}, "benchmark.enabled", "merge.enabled"),
        ({"benchmark": {"enabled": True, "inputLen": 2000, "outputLen": 100}}, "maxModelLen", "exceeds"),
        ({"benchmark": {"enabled": True, "dataset": "s3://b/sharegpt.json"}}, "dataset", "pvc://"),
        ({"benchmark": {"enabled": True, "concurrency": [0]}}, "concurrency", "greater than or equal to 1"),
    ],
)
def test_a_benchmark_that_cannot_run_is_refused(over: dict[str, Any], where: str, text: str) -> None:
    with pytest.raises(SpecError) as err:
        spec(**over)
    assert where in str(err.value) and text in str(err.value), str(err.value)


def test_a_disabled_benchmark_renders_no_job() -> None:
    s = spec(benchmark={"enabled": False})
    assert [j["metadata"]["labels"]["app.kubernetes.io/component"] for j in render_finetunedmodel(s, OWNER, OperatorConfig())] == ["inspect", "merge"]  # fmt: skip


def test_the_benchmark_runs_on_the_named_services_hardware() -> None:
    from tuneops.api.inferenceservice import InferenceServiceSpec
    from tuneops.render.finetunedmodel import render_benchmark_job

    svc = parse_spec("InferenceService", {"kind": "InferenceService", "metadata": {"name": "chat"}, "spec": {
        "model": {"fineTunedModelRef": {"name": "x"}}, "vllm": {"tensorParallelSize": 2},
        "resources": {"cpu": "16", "memory": "128Gi", "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
        "nodeSelector": {"pool": "serving"}, "priorityClassName": "serving-high",
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}]}})  # fmt: skip
    assert isinstance(svc, InferenceServiceSpec)
    s = spec(benchmark={"enabled": True, "serviceRef": {"name": "chat"}, "job": {"resources": {"limits": {"memory": "160Gi"}}}})  # fmt: skip
    job = render_benchmark_job(s, OWNER, OperatorConfig(), merged_uri="pvc://models/support", merged_digest="sha256:m",
                               max_lora_rank=8, service=svc)  # fmt: skip
    validate(job)
    pod = job["spec"]["template"]["spec"]
    res = worker(job)["resources"]
    assert res["limits"]["nvidia.com/gpu"] == "2"  # tensorParallelSize 2: two GPUs, as the service's Pods
    assert res["requests"]["cpu"] == "16" and res["limits"]["cpu"] == "16"
    assert res["limits"]["memory"] == "160Gi"  # the benchmark's own value wins
    assert pod["nodeSelector"] == {"pool": "serving"} and pod["priorityClassName"] == "serving-high"
    assert {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-H100-80GB-HBM3"]} in terms[
        0
    ]["matchExpressions"]
    # A change to the service's hardware is measured again.
    bigger = svc.model_copy(update={"node_selector": {"pool": "serving-b"}})
    again = render_benchmark_job(s, OWNER, OperatorConfig(), merged_uri="pvc://models/support", merged_digest="sha256:m",
                                 max_lora_rank=8, service=bigger)  # fmt: skip
    assert again["metadata"]["name"] != job["metadata"]["name"]


def test_s3_inputs_of_the_benchmark_are_fetched_first_by_the_worker_image() -> None:
    """vLLM's image has no S3 client: an s3:// input is downloaded into scratch by an init container of the worker
    image, with its own Secret and the recorded digest, and the benchmark reads the copy."""
    from tuneops.render.finetunedmodel import render_benchmark_job

    s = spec(adapter={"uri": "s3://bucket/support", "tokenSecretRef": {"name": "aws", "key": "credentials"}},
             benchmark={"enabled": True})  # fmt: skip
    job = render_benchmark_job(s, OWNER, OperatorConfig(), merged_uri="pvc://models/support", merged_digest="sha256:m",
                               max_lora_rank=8, adapter_digest="sha256:abc")  # fmt: skip
    validate(job)
    assert_restricted([job])
    assert_no_secrets([job])
    pod = job["spec"]["template"]["spec"]
    code, fetch = pod["initContainers"]
    assert (code["name"], fetch["name"]) == ("code", "fetch-adapter")
    assert fetch["image"] == Images().worker
    args = fetch["args"]
    assert args[args.index("--source") + 1] == "s3://bucket/support"
    assert args[args.index("--expect-digest") + 1] == "sha256:abc"
    dest = args[args.index("--dest") + 1]
    assert any(e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "aws" for e in fetch["env"])
    main = worker(job)["args"]
    assert main[main.index("--adapter") + 1] == f"file://{dest}"
    assert main[main.index("--base") + 1].startswith("hf://")  # the Hub client is in vLLM's image
