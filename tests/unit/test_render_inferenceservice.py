"""The InferenceService renderer: vLLM and llama.cpp workloads, argument builders and compatibility checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.render_support import (
    assert_no_secrets,
    assert_restricted,
    canonical,
    check_golden,
    containers,
    env_of,
    owner,
    pod_specs,
    validate,
)
from tuneops.api import SpecError, parse_spec
from tuneops.api.conditions import ROLLOUT, Reason
from tuneops.api.inferenceservice import InferenceServiceSpec, LlamaCppSpec, LoraSpec, VllmSpec
from tuneops.config import OperatorConfig
from tuneops.render import (
    RenderError,
    ResolvedAdapter,
    ResolvedModel,
    ServingRender,
    llamacpp_args,
    render_inferenceservice,
    vllm_args,
)
from tuneops.render.serving.args import adapter_path
from tuneops.render.serving.vllm import LORA_FILE
from tuneops.serving.vllm import LoraModule
from tuneops.validation.serving import check_inferenceservice

OWNER = owner("InferenceService", "mistral")
CFG = OperatorConfig()
MODEL = ResolvedModel(
    uri="pvc://models/mistral-merged", digest="sha256:m1", format="hf", num_attention_heads=32,
    base_model_name="mistralai/Mistral-7B-v0.1",
)  # fmt: skip
A1 = ResolvedAdapter("support", "pvc://adapters/support", "sha256:a1", 8, "/train/Mistral-7B-v0.1")
A2 = ResolvedAdapter("sql", "hf://acme/sql-lora", "sha256:a2", 8, "mistralai/Mistral-7B-v0.1")
A3 = ResolvedAdapter("summarize", "pvc://adapters/summarize", "sha256:a3", 4)


def spec(**body: Any) -> InferenceServiceSpec:
    doc = {
        "kind": "InferenceService",
        "metadata": {"name": "x"},
        "spec": {"model": {"uri": MODEL.uri}, **body},
    }
    parsed = parse_spec("InferenceService", doc)
    assert isinstance(parsed, InferenceServiceSpec)
    return parsed


TP2_LORA = spec(
    replicas=2,
    resources={"gpus": 2, "gpuProduct": "NVIDIA-L4", "cpu": "8", "memory": "48Gi"},
    vllm={
        "tensorParallelSize": 2,
        "maxModelLen": 8192,
        "dtype": "bfloat16",
        "servedModelName": "mistral-support",
    },
    lora={"adapters": [{"name": "support", "uri": A1.uri}, {"name": "sql", "uri": A2.uri}], "maxLoraRank": 8},
    apiKeySecretRef={"name": "api-key", "key": "key"},
    runtimeClassName="nvidia",
    priorityClassName="inference",
    queueName="gpu-queue",
    env=[{"name": "VLLM_LOGGING_LEVEL", "value": "DEBUG"}],
)


def kinds(r: ServingRender) -> list[str]:
    return [m["kind"] for m in r.manifests]


def by_kind(r: ServingRender, kind: str) -> dict[str, Any]:
    (m,) = [m for m in r.manifests if m["kind"] == kind]
    return m


def server(workload: dict[str, Any]) -> dict[str, Any]:
    c = next(pod_specs(workload))["containers"][0]
    assert isinstance(c, dict)
    return c


def all_valid(r: ServingRender) -> None:
    for m in r.manifests:
        validate(m)
    assert_restricted(r.manifests)
    assert_no_secrets(r.manifests)


# ---------------------------------------------------------------------------------------------- goldens


def test_golden_vllm_tp2_multi_lora() -> None:
    r = render_inferenceservice(TP2_LORA, OWNER, CFG, model=MODEL, adapters=[A1, A2])
    check_golden("inferenceservice-vllm-tp2-lora", r.manifests)
    all_valid(r)
    assert kinds(r) == ["ConfigMap", "Deployment", "Service", "PodDisruptionBudget"]
    assert r.served_models == ("mistral-support", "support", "sql")
    assert r.url == "http://mistral.team-a.svc.cluster.local:8000/v1"


def test_golden_vllm_download_single_gpu() -> None:
    s = spec(
        model={"uri": "s3://models/qwen-awq", "tokenSecretRef": {"name": "s3-creds"}},
        resources={"gpus": 1},
        vllm={"servedModelName": "qwen", "extraArgs": ["--max-num-seqs", "64"]},
    )
    model = ResolvedModel(uri="s3://models/qwen-awq", digest="sha256:q", format="compressed-tensors",
                          size_bytes=5 * 2**30)  # fmt: skip
    r = render_inferenceservice(s, owner("InferenceService", "qwen"), CFG, model=model)
    check_golden("inferenceservice-vllm-download", r.manifests)
    all_valid(r)
    assert kinds(r) == ["ConfigMap", "Deployment", "Service"]  # one replica: no PDB
    pod = next(pod_specs(by_kind(r, "Deployment")))
    (init,) = pod["initContainers"]
    # The init container refuses anything but the artifact's recorded digest (DigestMismatch).
    assert init["args"] == ["worker", "fetch", "--source", "s3://models/qwen-awq", "--dest", "/mnt/model",
                            "--expect-digest", "sha256:q"]  # fmt: skip
    assert env_of(init)["TUNEOPS_MODEL_AWS_SECRET_ACCESS_KEY"]["secretKeyRef"]["name"] == "s3-creds"
    assert json.loads(env_of(init)["TUNEOPS_CREDENTIALS"]) == {"s3://models/qwen-awq": "model"}
    model_vol = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model_vol["emptyDir"]["sizeLimit"] == "6656Mi"  # 5 GiB + 10% + 1 GiB headroom
    args = server(by_kind(r, "Deployment"))["args"]
    assert args[:2] == ["--model", "/mnt/model"]
    assert args[-2:] == ["--max-num-seqs", "64"], "extraArgs come last"
    assert "--quantization" not in args


def test_golden_vllm_multinode_leaderworkerset() -> None:
    s = spec(
        replicas=2,
        resources={"gpus": 8, "gpuProduct": "NVIDIA-H100-80GB-HBM3"},
        vllm={"tensorParallelSize": 8, "pipelineParallelSize": 2, "nodes": 2, "dtype": "bfloat16"},
    )
    model = ResolvedModel(uri="pvc://models/llama-405b", digest="sha256:big", num_attention_heads=128)
    assert check_inferenceservice(s, model=model) == []
    r = render_inferenceservice(s, owner("InferenceService", "llama-405b"), CFG, model=model)
    check_golden("inferenceservice-vllm-lws", r.manifests)
    all_valid(r)
    lws = by_kind(r, "LeaderWorkerSet")
    assert r.workload_kind == "LeaderWorkerSet"
    lwt = lws["spec"]["leaderWorkerTemplate"]
    assert lwt["size"] == 2
    leader = lwt["leaderTemplate"]["spec"]["containers"][0]
    worker = lwt["workerTemplate"]["spec"]["containers"][0]
    assert "startupProbe" in leader and "readinessProbe" in leader
    assert "startupProbe" not in worker and "args" not in worker
    assert (
        leader["resources"]["limits"]["nvidia.com/gpu"]
        == "8"
        == worker["resources"]["limits"]["nvidia.com/gpu"]
    )
    i = leader["args"].index("--distributed-executor-backend")
    assert leader["args"][i + 1] == "ray"
    svc = by_kind(r, "Service")
    assert svc["spec"]["selector"]["leaderworkerset.sigs.k8s.io/worker-index"] == "0"


def test_golden_llamacpp() -> None:
    s = spec(
        model={"quantizationJobRef": {"name": "phi-gguf"}, "ggufType": "Q4_K_M"},
        runtime="llamacpp",
        replicas=2,
        resources={"cpu": "6", "memory": "8Gi"},
        llamacpp={"ctxSize": 8192, "parallel": 2},
        apiKeySecretRef={"name": "llama-key"},
    )
    model = ResolvedModel(uri="pvc://models/phi-gguf", digest="sha256:g", format="gguf",
                          files=("phi-Q8_0.gguf", "phi-Q4_K_M.gguf"))  # fmt: skip
    assert check_inferenceservice(s, model=model) == []
    r = render_inferenceservice(s, owner("InferenceService", "phi"), CFG, model=model)
    check_golden("inferenceservice-llamacpp", r.manifests)
    all_valid(r)
    assert kinds(r) == ["Deployment", "Service", "PodDisruptionBudget"]
    c = server(by_kind(r, "Deployment"))
    assert c["image"] == CFG.images.llamacpp
    assert c["args"] == [
        "--model", "/mnt/pvc/models/phi-gguf/phi-Q4_K_M.gguf", "--host", "0.0.0.0", "--port", "8000",
        "--ctx-size", "8192", "--parallel", "2", "--threads", "6", "--alias", "phi",
    ]  # fmt: skip
    assert env_of(c)["LLAMA_API_KEY"] == {"secretKeyRef": {"key": "token", "name": "llama-key"}}
    assert c["resources"] == {
        "limits": {"cpu": "6", "memory": "8Gi"},
        "requests": {"cpu": "6", "ephemeral-storage": "1Gi", "memory": "8Gi"},
    }
    assert "nvidia.com/gpu" not in json.dumps(by_kind(r, "Deployment"))
    assert {
        p: c[p]["httpGet"]["path"] for p in ("startupProbe", "readinessProbe", "livenessProbe")
    } == dict.fromkeys(("startupProbe", "readinessProbe", "livenessProbe"), "/health")


# ---------------------------------------------------------------------------------------------- vLLM arguments

BASE = ["--model", "/m", "--served-model-name", "n", "--host", "0.0.0.0", "--port", "8000"]


@pytest.mark.parametrize(
    ("vllm", "lora", "modules", "tail"),
    [
        (VllmSpec(), None, [],
         ["--tensor-parallel-size", "1", "--pipeline-parallel-size", "1", "--dtype", "auto",
          "--gpu-memory-utilization", "0.9", "--shutdown-timeout", "30"]),
        (VllmSpec(tensor_parallel_size=2, max_model_len=8192, dtype="bfloat16", gpu_memory_utilization=0.85,
                  enable_prefix_caching=False, shutdown_timeout_seconds=90, extra_args=["--seed", "7"]), None, [],
         ["--tensor-parallel-size", "2", "--pipeline-parallel-size", "1", "--max-model-len", "8192",
          "--dtype", "bfloat16", "--gpu-memory-utilization", "0.85", "--no-enable-prefix-caching",
          "--shutdown-timeout", "90", "--seed", "7"]),
        (VllmSpec(tensor_parallel_size=4, pipeline_parallel_size=2), LoraSpec(max_lora_rank=8, max_loras=2), [],
         ["--tensor-parallel-size", "4", "--pipeline-parallel-size", "2", "--dtype", "auto",
          "--gpu-memory-utilization", "0.9", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
          "--shutdown-timeout", "30"]),
        (VllmSpec(enable_prefix_caching=True), LoraSpec(max_cpu_loras=32),
         [LoraModule("a", "/a", "n"), LoraModule("b", "/b", "n")],
         ["--tensor-parallel-size", "1", "--pipeline-parallel-size", "1", "--dtype", "auto",
          "--gpu-memory-utilization", "0.9", "--enable-prefix-caching", "--enable-lora", "--max-loras", "4",
          "--max-lora-rank", "16", "--max-cpu-loras", "32", "--lora-modules",
          '{"name":"a","path":"/a","base_model_name":"n"}', '{"name":"b","path":"/b","base_model_name":"n"}',
          "--shutdown-timeout", "30"]),
    ],
)  # fmt: skip
def test_vllm_args(vllm: VllmSpec, lora: LoraSpec | None, modules: list[LoraModule], tail: list[str]) -> None:
    args = vllm_args(model_path="/m", served_name="n", vllm=vllm, lora=lora, lora_modules=modules)
    assert args == BASE + tail
    assert "--quantization" not in args and "--api-key" not in args


@pytest.mark.parametrize(
    ("lc", "threads", "tail"),
    [
        (LlamaCppSpec(), None, ["--ctx-size", "4096", "--parallel", "4", "--alias", "n"]),
        (LlamaCppSpec(ctx_size=2048, parallel=1, extra_args=["--flash-attn"]), 3,
         ["--ctx-size", "2048", "--parallel", "1", "--threads", "3", "--alias", "n", "--flash-attn"]),
    ],
)  # fmt: skip
def test_llamacpp_args(lc: LlamaCppSpec, threads: int | None, tail: list[str]) -> None:
    args = llamacpp_args(model_path="/m.gguf", served_name="n", llamacpp=lc, threads=threads)
    assert args == ["--model", "/m.gguf", "--host", "0.0.0.0", "--port", "8000", *tail]


# ---------------------------------------------------------------------------------------------- pod details


def test_gpu_scheduling_and_runtime_details() -> None:
    r = render_inferenceservice(TP2_LORA, OWNER, CFG, model=MODEL, adapters=[A1, A2])
    dep = by_kind(r, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = server(dep)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"} in pod["tolerations"]
    (term,) = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"
    ]
    assert term["matchExpressions"] == [
        {"key": "nvidia.com/gpu.product", "operator": "In", "values": ["NVIDIA-L4"]}
    ]
    assert pod["runtimeClassName"] == "nvidia" and pod["priorityClassName"] == "inference"
    assert dep["spec"]["template"]["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert "kueue.x-k8s.io/queue-name" not in dep["spec"]["selector"]["matchLabels"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm == {"emptyDir": {"medium": "Memory", "sizeLimit": CFG.scratch.shm}, "name": "dshm"}
    assert {"mountPath": "/dev/shm", "name": "dshm"} in c["volumeMounts"]
    env = env_of(c)
    assert env["VLLM_API_KEY"] == {"secretKeyRef": {"key": "key", "name": "api-key"}}
    assert env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert env["VLLM_LOGGING_LEVEL"] == "DEBUG"
    for var in ("HOME", "HF_HOME", "XDG_CACHE_HOME", "TRITON_CACHE_DIR", "VLLM_CACHE_ROOT"):
        assert env[var].startswith("/var/cache/tuneops")
    assert any(m["mountPath"] == "/var/cache/tuneops" for m in c["volumeMounts"])
    assert [e["name"] for e in c["env"]] == sorted(e["name"] for e in c["env"])
    # Graceful shutdown: preStop, then vLLM drains for --shutdown-timeout, all inside the grace period.
    assert c["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", "10"]
    assert pod["terminationGracePeriodSeconds"] > 10 + 30
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1800
    model_mount = next(m for m in c["volumeMounts"] if m["mountPath"] == "/mnt/pvc/models")
    assert model_mount["readOnly"] is True


def test_no_toleration_or_affinity_and_the_engines_shm_without_gpus() -> None:
    r = render_inferenceservice(spec(resources={"gpus": 0}), OWNER, CFG, model=MODEL)
    pod = by_kind(r, "Deployment")["spec"]["template"]["spec"]
    assert "tolerations" not in pod and "affinity" not in pod
    # vLLM's engine and API server share ~160 MiB of queues in /dev/shm: more than the runtime's 64 MB default
    # (found running the quickstart's server as a container).
    dshm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert dshm["emptyDir"] == {"medium": "Memory", "sizeLimit": CFG.scratch.engine_shm}
    all_valid(r)


def test_a_cpu_server_gets_a_kv_cache_its_memory_limit_can_hold() -> None:
    """vLLM's CPU build reserves gpuMemoryUtilization of the node's memory unless told a size: under a 4Gi
    limit it exits at startup (found running the quickstart's server as a container)."""

    def kv_flag(resources: dict[str, Any]) -> list[str]:
        r = render_inferenceservice(spec(resources=resources), OWNER, CFG, model=MODEL)
        args = by_kind(r, "Deployment")["spec"]["template"]["spec"]["containers"][0]["args"]
        return [args[i + 1] for i, a in enumerate(args) if a == "--kv-cache-memory-bytes"]

    assert kv_flag({"gpus": 0, "memory": "4Gi"}) == [str(1 << 30)]
    assert kv_flag({"gpus": 0, "memory": "512Mi"}) == [str(256 << 20)]
    assert kv_flag({"gpus": 0}) == [str(1 << 30)]
    assert kv_flag({"gpus": 1}) == []


def test_gpu_toleration_can_be_turned_off() -> None:
    r = render_inferenceservice(
        spec(resources={"gpus": 1}), OWNER, OperatorConfig(gpu_toleration=False), model=MODEL
    )
    assert "tolerations" not in by_kind(r, "Deployment")["spec"]["template"]["spec"]


def test_user_affinity_keeps_its_terms_and_gains_the_gpu_product() -> None:
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]},
    ]}}}  # fmt: skip
    s = spec(resources={"gpus": 1, "gpuProduct": "NVIDIA-A100"}, affinity=user)
    r = render_inferenceservice(s, OWNER, CFG, model=MODEL)
    terms = by_kind(r, "Deployment")["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]  # fmt: skip
    assert [t["matchExpressions"][0]["values"] for t in terms] == [["a"], ["b"]]
    assert all(t["matchExpressions"][1]["values"] == ["NVIDIA-A100"] for t in terms)
    assert s.affinity == user, "the spec is not modified"


@pytest.mark.parametrize(
    ("gpus", "spare", "surge", "unavailable", "reason"),
    [
        (1, False, 0, 1, Reason.MAX_SURGE_ZERO),
        (1, True, 1, 0, Reason.SURGE_ALLOWED),
        (0, False, 1, 0, Reason.SURGE_ALLOWED),
    ],
)
def test_gpu_aware_rollout(gpus: int, spare: bool, surge: int, unavailable: int, reason: str) -> None:
    r = render_inferenceservice(
        spec(resources={"gpus": gpus}), OWNER, OperatorConfig(spare_gpus=spare), model=MODEL
    )
    strategy = by_kind(r, "Deployment")["spec"]["strategy"]
    assert strategy == {
        "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable},
        "type": "RollingUpdate",
    }
    (note,) = [n for n in r.notes if n.type == ROLLOUT]
    assert (note.type, note.status, note.reason) == (ROLLOUT, "True", reason)
    assert note.message


@pytest.mark.parametrize(("replicas", "pdb"), [(0, False), (1, False), (2, True), (5, True)])
def test_pdb_only_with_several_replicas(replicas: int, pdb: bool) -> None:
    r = render_inferenceservice(spec(replicas=replicas), OWNER, CFG, model=MODEL)
    assert ("PodDisruptionBudget" in kinds(r)) == pdb
    if pdb:
        assert by_kind(r, "PodDisruptionBudget")["spec"] == {
            "maxUnavailable": 1, "selector": {"matchLabels": dict(r.selector)}
        }  # fmt: skip


def test_service_selects_the_pods() -> None:
    r = render_inferenceservice(spec(service={"type": "LoadBalancer", "port": 80}), OWNER, CFG, model=MODEL)
    svc = by_kind(r, "Service")
    dep = by_kind(r, "Deployment")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert all(labels[k] == v for k, v in svc["spec"]["selector"].items())
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert r.url.endswith(":80/v1")
    assert r.selector_string == ",".join(
        f"{k}={v}" for k, v in sorted(dep["spec"]["selector"]["matchLabels"].items())
    )


# ---------------------------------------------------------------------------------------------- rollouts


def template(r: ServingRender) -> str:
    return canonical(by_kind(r, "Deployment")["spec"]["template"])


def test_dynamic_adapters_change_the_configmap_not_the_pods() -> None:
    one = render_inferenceservice(TP2_LORA, OWNER, CFG, model=MODEL, adapters=[A1])
    more = TP2_LORA.model_copy(
        update={"lora": LoraSpec.model_validate({
            "adapters": [{"name": a.name, "uri": a.uri} for a in (A1, A3)], "maxLoraRank": 8})}
    )  # fmt: skip
    two = render_inferenceservice(more, OWNER, CFG, model=MODEL, adapters=[A1, A3])
    assert template(one) == template(two), "adding an adapter on a mounted claim must not restart Pods"
    assert by_kind(one, "ConfigMap") != by_kind(two, "ConfigMap")
    assert json.loads(by_kind(two, "ConfigMap")["data"][LORA_FILE])[1]["name"] == "summarize"
    replaced = ResolvedAdapter(A1.name, A1.uri, "sha256:new-weights", A1.rank)
    assert template(
        render_inferenceservice(TP2_LORA, OWNER, CFG, model=MODEL, adapters=[replaced])
    ) == template(one)


def test_static_adapters_roll_the_pods() -> None:
    static = TP2_LORA.model_copy(update={"lora": TP2_LORA.lora.model_copy(update={"dynamic": False})})  # type: ignore[union-attr]
    one = render_inferenceservice(static, OWNER, CFG, model=MODEL, adapters=[A1])
    two = render_inferenceservice(static, OWNER, CFG, model=MODEL, adapters=[A1, A3])
    assert template(one) != template(two)
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING" not in env_of(server(by_kind(one, "Deployment")))


def test_a_new_model_digest_rolls_the_pods() -> None:
    a = render_inferenceservice(spec(), OWNER, CFG, model=MODEL)
    b = render_inferenceservice(spec(), OWNER, CFG, model=ResolvedModel(uri=MODEL.uri, digest="sha256:m2"))
    annotations = by_kind(b, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["tuneops.io/model-digest"] == "sha256:m2"
    assert template(a) != template(b)


def test_deterministic() -> None:
    a = render_inferenceservice(TP2_LORA, OWNER, CFG, model=MODEL, adapters=[A1, A2])
    b = render_inferenceservice(TP2_LORA, OWNER, CFG, model=MODEL, adapters=[A1, A2])
    assert a == b and canonical(a.manifests) == canonical(b.manifests)
    for m in a.manifests:
        assert list(m["metadata"]["labels"]) == sorted(m["metadata"]["labels"])
    for c in containers(by_kind(a, "Deployment")):
        assert [e["name"] for e in c["env"]] == sorted(e["name"] for e in c["env"])


def test_unmerged_finetunedmodel_enables_lora_with_defaults() -> None:
    own = ResolvedAdapter("mistral-support", "pvc://adapters/support", rank=16)
    r = render_inferenceservice(spec(), OWNER, CFG, model=MODEL, adapters=[own])
    args = server(by_kind(r, "Deployment"))["args"]
    assert "--enable-lora" in args and args[args.index("--max-lora-rank") + 1] == "16"
    assert r.served_models == ("mistral", "mistral-support")


# ---------------------------------------------------------------------------------------------- llama.cpp model files


@pytest.mark.parametrize(
    ("uri", "files", "model", "path", "init_source"),
    [
        ("pvc://m/q", ("x-Q8_0.gguf", "x-Q4_K_M.gguf"), {"ggufType": "Q4_K_M"}, "/mnt/pvc/m/q/x-Q4_K_M.gguf", None),
        ("pvc://m/q", ("x-Q8_0.gguf", "x-Q4_K_M.gguf"), {}, "/mnt/pvc/m/q/x-Q8_0.gguf", None),
        ("pvc://m/q", (), {"file": "custom.gguf"}, "/mnt/pvc/m/q/custom.gguf", None),
        ("file:///srv/x.gguf", (), {}, "/srv/x.gguf", None),
        ("s3://b/q", ("x-Q4_K_M.gguf", "x-Q8_0.gguf"), {"ggufType": "Q8_0"}, "/mnt/model/x-Q8_0.gguf",
         "s3://b/q/x-Q8_0.gguf"),
        ("s3://b/one.gguf", (), {}, "/mnt/model/one.gguf", "s3://b/one.gguf"),
        ("hf://org/repo", ("a-Q4_K_M.gguf",), {}, "/mnt/model/a-Q4_K_M.gguf", "hf://org/repo"),
    ],
)  # fmt: skip
def test_llamacpp_model_file(
    uri: str, files: tuple[str, ...], model: dict[str, Any], path: str, init_source: str | None
) -> None:
    s = spec(model={"uri": uri, **model}, runtime="llamacpp")
    m = ResolvedModel(uri=uri, format="gguf", files=files)
    assert check_inferenceservice(s, model=m) == []
    r = render_inferenceservice(s, OWNER, CFG, model=m)
    dep = by_kind(r, "Deployment")
    c = server(dep)
    assert c["args"][c["args"].index("--model") + 1] == path
    inits = dep["spec"]["template"]["spec"].get("initContainers", [])
    assert [i["args"][3] for i in inits] == ([init_source] if init_source else [])
    all_valid(r)


def test_llamacpp_without_a_file_to_serve() -> None:
    s = spec(model={"uri": "pvc://m/q", "ggufType": "Q2_K"}, runtime="llamacpp")
    m = ResolvedModel(uri="pvc://m/q", format="gguf", files=("x-Q4_K_M.gguf",))
    (problem,) = check_inferenceservice(s, model=m)
    assert problem.reason == Reason.INVALID_SPEC and problem.field == "spec.model"
    with pytest.raises(RenderError, match="Q2_K"):
        render_inferenceservice(s, OWNER, CFG, model=m)


def test_llamacpp_threads_default_to_the_cpu_limit() -> None:
    for cpu, threads in (("500m", "1"), ("2500m", "3"), (4, "4")):
        s = spec(model={"uri": "file:///m.gguf"}, runtime="llamacpp", resources={"cpu": cpu})
        args = server(by_kind(render_inferenceservice(s, OWNER, CFG, model=ResolvedModel(
            uri="file:///m.gguf", format="gguf")), "Deployment"))["args"]  # fmt: skip
        assert args[args.index("--threads") + 1] == threads


# ---------------------------------------------------------------------------------------------- checks


def lora(**over: Any) -> dict[str, Any]:
    return {"adapters": [{"name": "a", "uri": "pvc://adapters/a"}], "maxLoraRank": 8, **over}


@pytest.mark.parametrize(
    ("body", "model", "adapters", "expected"),
    [
        ({}, MODEL, [], []),
        ({"vllm": {"tensorParallelSize": 3}, "resources": {"gpus": 3}}, MODEL, [],
         [(Reason.INVALID_SPEC, "spec.vllm.tensorParallelSize", "does not divide the model's 32 attention heads")]),
        ({"vllm": {"tensorParallelSize": 3}}, ResolvedModel(uri="pvc://m/x"), [], []),
        ({}, ResolvedModel(uri="pvc://m/x", format="gguf"), [],
         [(Reason.INVALID_SPEC, "spec.runtime", "runtime: llamacpp")]),
        ({"runtime": "llamacpp"}, MODEL, [], [(Reason.INVALID_SPEC, "spec.runtime", "serves GGUF")]),
        ({"lora": lora()}, MODEL, [ResolvedAdapter("a", "pvc://adapters/a", rank=16)],
         [(Reason.INCOMPATIBLE_ADAPTER, "spec.lora.adapters[0]", "rank 16, above lora.maxLoraRank 8")]),
        ({"lora": lora()}, MODEL, [ResolvedAdapter("a", "pvc://adapters/a", rank=8, base_model_name="meta/Llama-3")],
         [(Reason.INCOMPATIBLE_ADAPTER, "spec.lora.adapters[0]", "trained on 'meta/Llama-3'")]),
        ({"lora": lora()}, MODEL,
         [ResolvedAdapter("a", "pvc://adapters/a", rank=8, base_model_name="/data/mistral-7b-v0.1/")], []),
        ({"lora": lora()}, MODEL, [ResolvedAdapter("a", "pvc://adapters/a", use_dora=True)],
         [(Reason.INCOMPATIBLE_ADAPTER, "spec.lora.adapters[0]", "DoRA")]),
        ({"lora": lora()}, MODEL, [ResolvedAdapter("a", "pvc://adapters/a", modules_to_save=("lm_head", "score"))],
         [(Reason.INCOMPATIBLE_ADAPTER, "spec.lora.adapters[0]", "lm_head (modules_to_save)")]),
        ({"lora": lora()}, MODEL, [ResolvedAdapter("a", "pvc://adapters/a", modules_to_save=("score",))], []),
        # a FineTunedModel's adapter published where vLLM cannot read (the loader fetches only spec URIs)
        ({"lora": lora(adapters=[{"name": "a", "fineTunedModelRef": {"name": "t"}}])}, MODEL,
         [ResolvedAdapter("a", "s3://b/a")],
         [(Reason.INCOMPATIBLE_ADAPTER, "spec.lora.adapters[0]", "published to s3://")]),
        ({"lora": lora(adapters=[{"name": "a", "fineTunedModelRef": {"name": "t"}}])}, MODEL,
         [ResolvedAdapter("a", "hf://org/a@v2")],
         [(Reason.INCOMPATIBLE_ADAPTER, "spec.lora.adapters[0]", "pinned hf:// revision")]),
        # named by uri, the Pods' adapter loader fetches them
        ({"lora": lora(adapters=[{"name": "a", "uri": "s3://b/a", "tokenSecretRef": {"name": "s", "key": "k"}}])},
         MODEL, [ResolvedAdapter("a", "s3://b/a")], []),
        ({"lora": lora(adapters=[{"name": "a", "uri": "hf://org/a@v2"}])}, MODEL,
         [ResolvedAdapter("a", "hf://org/a@v2")], []),
        ({"lora": lora()}, ResolvedModel(uri="pvc://m/x", format="gguf"), [],
         [(Reason.INVALID_SPEC, "spec.runtime", "GGUF"), (Reason.INCOMPATIBLE_ADAPTER, "spec.lora", "GGUF model")]),
        ({"lora": lora()}, ResolvedModel(uri="pvc://m/x", format="compressed-tensors"),
         [ResolvedAdapter("a", "pvc://adapters/a", rank=8)], []),
        ({"lora": lora()}, ResolvedModel(uri="pvc://m/x", format="awq"), [], []),
        ({"lora": lora(maxLoras=8, maxCpuLoras=4)}, MODEL, [],
         [(Reason.INVALID_SPEC, "spec.lora.maxCpuLoras", "at least maxLoras (8)")]),
    ],
)  # fmt: skip
def test_checks(
    body: dict[str, Any],
    model: ResolvedModel,
    adapters: list[ResolvedAdapter],
    expected: list[tuple[str, str, str]],
) -> None:
    found = check_inferenceservice(spec(**body), model=model, adapters=adapters)
    assert len(found) == len(expected), found
    for problem, (reason, fld, text) in zip(found, expected, strict=True):
        assert (problem.reason, problem.field) == (reason, fld)
        assert text in problem.message, problem.message
        assert str(problem).startswith(fld + ": ")


# GPUs per Pod: what a spec asks for, what the server container gets, and what is refused (and where).
@pytest.mark.parametrize(
    ("body", "gpus", "refused"),
    [
        ({}, 1, None),
        ({"vllm": {"tensorParallelSize": 4}}, 4, None),
        ({"vllm": {"tensorParallelSize": 2, "pipelineParallelSize": 2}}, 4, None),
        ({"vllm": {"tensorParallelSize": 4, "pipelineParallelSize": 2, "nodes": 2}}, 4, None),
        ({"vllm": {"tensorParallelSize": 4}, "resources": {"gpus": 4}}, 4, None),
        ({"resources": {"gpus": 0}}, 0, None),
        ({"vllm": {"tensorParallelSize": 4}, "resources": {"gpus": 0}}, None,
         ("spec.resources.gpus", "0 GPUs cannot run vllm.tensorParallelSize (4)")),
        ({"vllm": {"pipelineParallelSize": 2}, "resources": {"gpus": 0}}, None,
         ("spec.resources.gpus", "set resources.gpus to 2 or leave it unset")),
        ({"vllm": {"tensorParallelSize": 4}, "resources": {"gpus": 2}}, None,
         ("spec.resources.gpus", "2 GPUs per Pod, but vllm.tensorParallelSize x pipelineParallelSize needs 4")),
        ({"vllm": {"nodes": 2, "pipelineParallelSize": 2}, "resources": {"gpus": 0}}, None,
         ("spec.resources.gpus", "needs GPUs on every node")),
        ({"vllm": {"nodes": 2, "tensorParallelSize": 4, "pipelineParallelSize": 1}}, None,
         ("spec.vllm.pipelineParallelSize", "one stage per node: set it to 2")),
        ({"runtime": "llamacpp"}, 0, None),
        ({"runtime": "llamacpp", "resources": {"gpus": 0}}, 0, None),
        ({"runtime": "llamacpp", "resources": {"gpus": 1}}, None,
         ("spec.resources.gpus", "set llamacpp.gpuLayers")),
        ({"runtime": "llamacpp", "resources": {"gpus": 1}, "llamacpp": {"gpuLayers": 999}}, 1, None),
        ({"runtime": "llamacpp", "llamacpp": {"gpuLayers": 20}}, None,
         ("spec.llamacpp.gpuLayers", "needs GPUs: set resources.gpus")),
        ({"runtime": "llamacpp", "resources": {"gpus": 0}, "llamacpp": {"gpuLayers": 20}}, None,
         ("spec.llamacpp.gpuLayers", "needs GPUs")),
    ],
)  # fmt: skip
def test_gpus_per_pod(body: dict[str, Any], gpus: int | None, refused: tuple[str, str] | None) -> None:
    if refused is not None:
        with pytest.raises(SpecError) as err:
            spec(**body)
        (problem,) = err.value.problems
        fld, text = refused
        assert problem.startswith(fld + ": ") and text in problem, problem
        return
    s = spec(**body)
    assert s.gpus_per_pod() == gpus
    model = ResolvedModel(uri="pvc://m/x.gguf", format="gguf") if s.runtime == "llamacpp" else MODEL
    r = render_inferenceservice(s, OWNER, CFG, model=model)
    workload = next(m for m in r.manifests if m["kind"] in ("Deployment", "LeaderWorkerSet"))
    limits = server(workload)["resources"].get("limits", {})
    assert limits.get("nvidia.com/gpu") == (str(gpus) if gpus else None)
    pod = next(pod_specs(workload))
    assert ("tolerations" in pod) == bool(gpus)
    if s.runtime == "llamacpp" and gpus:
        args = server(workload)["args"]
        assert args[args.index("--n-gpu-layers") + 1] == "999"
    all_valid(r)


def test_golden_vllm_tp4_gpus_from_parallelism() -> None:
    s = spec(vllm={"tensorParallelSize": 4, "dtype": "bfloat16"}, resources={"cpu": "16", "memory": "128Gi"})
    r = render_inferenceservice(s, owner("InferenceService", "llama-70b"), CFG, model=MODEL)
    check_golden("inferenceservice-vllm-tp4-default-gpus", r.manifests)
    all_valid(r)
    assert server(by_kind(r, "Deployment"))["resources"]["limits"]["nvidia.com/gpu"] == "4"


# Adapter URIs vLLM cannot load are refused by the spec, so `tuneops validate` and the operator both name the
# field before a Pod tries (and fails) to load them.
@pytest.mark.parametrize(
    ("uri", "refused"),
    [
        ("pvc://adapters/a", None),
        ("file:///adapters/a", None),
        ("hf://acme/sql-lora", None),
        ("hf://acme/loras/sql", None),
        ("s3://bucket/adapters/a", None),
        ("hf://acme/sql-lora@v2", None),
        ("hf://acme/loras@v2/sql", None),
    ],
)
def test_adapter_uris_are_read_by_vllm_or_fetched_by_the_loader(uri: str, refused: str | None) -> None:
    body = {"lora": {"adapters": [{"name": "ok", "uri": "pvc://adapters/ok"}, {"name": "a", "uri": uri}]}}
    if refused is None:
        assert spec(**body).lora is not None
        return
    with pytest.raises(SpecError) as err:
        spec(**body)
    (problem,) = err.value.problems
    assert problem.startswith("spec.lora.adapters[1].uri: ") and refused in problem, problem


def test_validate_names_the_adapter_uri_and_the_gpu_count(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuneops.cli import main

    head = {"apiVersion": "tuneops.io/v1alpha1", "kind": "InferenceService"}
    docs = [
        {**head, "metadata": {"name": "lora"}, "spec": {"model": {"uri": "hf://org/m"},
                                                        "lora": {"adapters": [{"name": "a", "uri": "s3://b/a"}]}}},
        {**head, "metadata": {"name": "tp"}, "spec": {"model": {"uri": "hf://org/m"},
                                                      "vllm": {"tensorParallelSize": 2}, "resources": {"gpus": 0}}},
    ]  # fmt: skip
    path = tmp_path / "svc.yaml"
    path.write_text("---\n".join(json.dumps(d) + "\n" for d in docs))
    assert main(["validate", "-f", str(path)]) == 2
    err = capsys.readouterr().err
    assert "spec.lora.adapters[0].uri: s3://b/a has no Secret of its own" in err, err
    assert "spec.resources.gpus: 0 GPUs cannot run vllm.tensorParallelSize (2)" in err, err


def test_fetched_adapters_are_not_given_to_vllm_at_start() -> None:
    s = spec(
        lora=lora(adapters=[{"name": "a", "uri": "s3://b/a", "tokenSecretRef": {"name": "s", "key": "k"}}])
    )
    rendered = render_inferenceservice(
        s, OWNER, CFG, model=MODEL, adapters=[ResolvedAdapter("a", "s3://b/a")]
    )
    config = next(m for m in rendered.manifests if m["kind"] == "ConfigMap")
    assert json.loads(config["data"]["lora-modules.json"]) == []
    with pytest.raises(RenderError, match="s3://"):
        adapter_path("s3://b/a", CFG)
