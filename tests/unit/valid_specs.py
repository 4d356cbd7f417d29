"""Hypothesis strategies for valid resources: specs the operator accepts and renders, across the spec's breadth.

Each `Case` is a set of documents as a user would apply them: the subject, and the resources it references
(a FineTunedModel served or quantized, a QuantizationJob served, FineTunedModels whose adapters are served), so
that references are followed the way the operator follows them once those are Ready. `check_and_render` runs the
pipeline of the operator and `tuneops render` on a case (tuneops.render.plan: parse, the operator's refusals,
render); a generated case that anything refuses is a bug in this generator or in the operator, never skipped.

The hostile counterpart, for the refusal paths, is tests/unit/hostile.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

from tuneops.api.inferenceservice import LORA_RANKS
from tuneops.api.quantizationjob import GGUF_TYPES
from tuneops.config import OperatorConfig
from tuneops.manifests import Document, object_problems
from tuneops.render.plan import Resolver, check_resource, parse_documents, render_resource
from tuneops.render.serving.types import ServingRender
from tuneops.render.types import Manifest

API = "tuneops.io/v1alpha1"
NAMESPACE = "team-a"

# The operator config the cases are checked and rendered under: what an administrator lets tenants choose.
CONFIG = OperatorConfig.model_validate(
    {
        "operatorNamespace": "tuneops-system",
        "allow": {
            "images": ["registry.example/serving/*", "registry.example/workers/*"],
            "serviceAccounts": ["model-runner", "team-a-*"],
            "priorityClasses": ["inference-high", "batch-*"],
            "runtimeClasses": ["nvidia", "kata-*"],
            # Plain settings the servers read (also on the operator's default list) and the tenant's own.
            "env": ["OMP_NUM_THREADS", "TOKENIZERS_PARALLELISM", "TZ", "NCCL_DEBUG", "APP_*", "MY_SETTING"],
        },
        "routing": {"endpointPicker": {"name": "default-picker"}},
    }
)

# Flags each server documents as tuning knobs that read no file and load no code, each as its tokens.
VLLM_ARGS = [["--max-num-seqs=8"], ["--max-num-batched-tokens", "8192"], ["--enable-chunked-prefill"],
             ["--disable-log-stats"], ["--seed=7"], ["--enforce-eager"]]  # fmt: skip
LLAMACPP_ARGS = [["--cont-batching"], ["--batch-size", "512"], ["--n-predict", "256"], ["--jinja"]]
ENV_NAMES = [
    "OMP_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    "TZ",
    "NCCL_DEBUG",
    "APP_MODE",
    "APP_FLAGS",
    "MY_SETTING",
]
# Literal values, including ones that mean something to a shell or YAML: env values are never interpreted.
ENV_VALUES = ["4", "false", "UTC", "INFO", "", "$(id)", "a b", "--flag", "名前", "null", "0x10"]


@dataclass
class Case:
    """Documents to apply together; the subject (last) is the resource under test."""

    docs: list[dict[str, Any]] = field(default_factory=list)
    features: set[str] = field(
        default_factory=set
    )  # what the subject exercises (test_security checks a run's)

    @property
    def subject(self) -> dict[str, Any]:
        return self.docs[-1]

    @property
    def kind(self) -> str:
        return str(self.subject["kind"])

    @property
    def spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = self.subject["spec"]
        return spec


def resource(kind: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name, "namespace": NAMESPACE}, "spec": spec}


def check_and_render(case: Case, config: OperatorConfig = CONFIG) -> dict[str, list[Manifest]]:
    """Every document's manifests by name, after the same checks `tuneops validate` and the operator run; fails
    naming the problems when anything refuses a document."""
    for doc in case.docs:
        refused = object_problems(Document("case", doc))
        assert not refused, (doc["metadata"], refused)
    resources = parse_documents(case.docs, NAMESPACE)
    resolver = Resolver(resources, config)
    out: dict[str, list[Manifest]] = {}
    for r in resources:
        findings = check_resource(r, resolver)
        assert not findings.problems, (r.kind, r.name, [str(p) for p in findings.problems])
        rendered = render_resource(r, resolver)
        out[f"{r.kind}/{r.name}"] = (
            list(rendered.manifests) if isinstance(rendered, ServingRender) else rendered
        )
    return out


# -- building blocks -------------------------------------------------------------------------------------------


def _omit(d: dict[str, Any]) -> dict[str, Any]:
    """The mapping without its None values (fields left unset)."""
    return {k: v for k, v in d.items() if v is not None}


def maybe(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.none() | strategy


# Resource names as the API server takes them (DNS-1123 subdomains): plain, dotted, long enough to be hashed
# in children's names, and digits first.
NAMES = st.sampled_from(["svc", "llama-3-8b", "qwen2.5-7b", "m", "a" * 63, "b" * 120, "x.y.z", "7b-chat",
                         "support-bot--v2", "mistral-7b-instruct-v0.3-awq-for-the-support-team"])  # fmt: skip
DNS = st.sampled_from(["gpu-pool", "team-a", "a", "picker.example", "x" * 63])
SECRETS = st.sampled_from(["hf-cred", "s3-cred", "api-key", "tok.en", "model-pull-secret"])
KEYS = st.sampled_from(["token", "key", "HF_TOKEN", "a.b-c_d"])


@st.composite
def secret_ref(draw: st.DrawFn) -> dict[str, Any]:
    return _omit({"name": draw(SECRETS), "key": draw(maybe(KEYS))})


@st.composite
def source(draw: st.DrawFn, *, schemes: tuple[str, ...] = ("hf", "s3", "pvc", "file"), gguf: bool = False,
           pinned: bool = True) -> dict[str, Any]:  # fmt: skip
    """{uri, tokenSecretRef?}: a model, adapter or data location. s3:// always names its Secret (the operator
    reads no source with ambient credentials unless configured to); hf:// may name one."""
    scheme = draw(st.sampled_from(schemes))
    leaf = draw(st.sampled_from(["model.Q4_K_M.gguf", "x.gguf"] if gguf else ["", "weights", "v1/final"]))
    if scheme == "hf":
        repo = draw(st.sampled_from(["org/model", "meta-llama/Llama-3.1-8B", "o/r"]))
        rev = (
            draw(st.sampled_from(["", "@main", "@v1.0", "@0123456789abcdef"])) if pinned and not gguf else ""
        )
        uri = f"hf://{repo}{rev}" + (f"/{leaf}" if leaf else "")
    elif scheme == "s3":
        uri = f"s3://bucket/{draw(st.sampled_from(['models', 'a/b/c']))}" + (f"/{leaf}" if leaf else "")
    elif scheme == "pvc":
        claim = draw(st.sampled_from(["models", "shared-artifacts", "c" * 63, "my.claim"]))
        uri = f"pvc://{claim}/{draw(st.sampled_from(['base', 'a/b', 'team-a/x']))}" + (
            f"/{leaf}" if leaf else ""
        )
    else:
        uri = f"file:///models/{draw(st.sampled_from(['base', 'a/b']))}" + (f"/{leaf}" if leaf else "")
    token = draw(secret_ref()) if scheme == "s3" else draw(maybe(secret_ref())) if scheme == "hf" else None
    return _omit({"uri": uri, "tokenSecretRef": token})


QUANTITIES_CPU = st.sampled_from(["500m", "1", 2, "4", "16", "1500m"])
QUANTITIES_MEMORY = st.sampled_from(["512Mi", "16Gi", "64G", "100Gi", 1073741824])


@st.composite
def scheduling(draw: st.DrawFn) -> dict[str, Any]:
    """Where the Pods run: node selector, tolerations, affinity, and the allowed identities and priorities."""
    affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["a", "b"]}]}
    ]}}}  # fmt: skip
    toleration = st.sampled_from([
        {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoSchedule"},
        {"operator": "Exists"},
        {"key": "spot", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30},
    ])  # fmt: skip
    return _omit({
        "nodeSelector": draw(maybe(st.dictionaries(st.sampled_from(["pool", "kubernetes.io/arch", "zone"]),
                                                   st.sampled_from(["gpu", "amd64", "a"]), max_size=3))),
        "tolerations": draw(maybe(st.lists(toleration, max_size=3))),
        "affinity": draw(maybe(st.just(affinity))),
        "priorityClassName": draw(maybe(st.sampled_from(["inference-high", "batch-low"]))),
        "serviceAccountName": draw(maybe(st.sampled_from(["model-runner", "team-a-reader"]))),
    })  # fmt: skip


@st.composite
def job_template(draw: st.DrawFn) -> dict[str, Any] | None:
    """spec.job of a FineTunedModel or QuantizationJob."""
    if draw(st.booleans()):
        return None
    limits = _omit({"memory": draw(maybe(QUANTITIES_MEMORY)), "cpu": draw(maybe(QUANTITIES_CPU)),
                    "nvidia.com/gpu": draw(maybe(st.integers(0, 8)))})  # fmt: skip
    requests = _omit({"cpu": draw(maybe(QUANTITIES_CPU)), "memory": draw(maybe(QUANTITIES_MEMORY))})
    resources = _omit({"limits": limits or None, "requests": requests or None})
    image = st.sampled_from([CONFIG.images.worker, CONFIG.images.gguf, "registry.example/workers/merge:2"])
    return _omit({
        **draw(scheduling()),
        "image": draw(maybe(image)),
        "resources": resources or None,
        "activeDeadlineSeconds": draw(maybe(st.sampled_from([60, 3600, 604800]))),
        "backoffLimit": draw(maybe(st.integers(0, 10))),
    })  # fmt: skip


# -- FineTunedModel --------------------------------------------------------------------------------------------


@st.composite
def finetunedmodel_spec(draw: st.DrawFn, *, merged: bool | None = None, adapter_for_vllm: bool = False,
                        light: bool = False) -> dict[str, Any]:  # fmt: skip
    """A FineTunedModel; `merged` fixes merge.enabled; `adapter_for_vllm`: a service loads its adapter (from its
    adapter URI when merged, from the copy published under its output when not), so neither is on s3:// nor
    pinned to a revision. `light`: no merge settings or Job template (one of many adapters of a service)."""
    if light:
        adapter = draw(source(schemes=("hf", "pvc", "file"), pinned=False))
        enabled = draw(st.booleans()) if merged is None else merged
        output = draw(maybe(source(schemes=("pvc", "file"), pinned=False)))
        return _omit({"baseModel": draw(source()), "adapter": adapter, "merge": {"enabled": enabled},
                      "output": output})  # fmt: skip
    base = draw(source())
    if base["uri"].startswith("hf://") and "@" not in base["uri"] and draw(st.booleans()):
        base["revision"] = draw(st.sampled_from(["main", "v2", "abc123"]))
    elif base["uri"].startswith("hf://") and "@" in base["uri"] and draw(st.booleans()):
        base["revision"] = base["uri"].split("@", 1)[1].split("/")[0]  # the same revision, said twice
    loadable = ("hf", "pvc", "file") if adapter_for_vllm else ("hf", "s3", "pvc", "file")
    adapter = draw(source(schemes=loadable, pinned=not adapter_for_vllm))
    enabled = draw(st.booleans()) if merged is None else merged
    merge = _omit({
        "enabled": None if enabled and draw(st.booleans()) else enabled,  # true is the default
        "dtype": draw(maybe(st.sampled_from(["auto", "float16", "bfloat16", "float32"]))),
        "device": draw(maybe(st.sampled_from(["cpu", "gpu"]))),
        "method": draw(maybe(st.sampled_from(["stream", "peft"]))),
    })  # fmt: skip
    output_schemes = ("pvc", "file") if adapter_for_vllm else ("hf", "s3", "pvc", "file")
    output = draw(maybe(source(schemes=output_schemes, pinned=False)))
    return _omit({"baseModel": base, "adapter": adapter, "merge": merge or None, "output": output,
                  "job": draw(job_template())})  # fmt: skip


@st.composite
def finetunedmodel_cases(draw: st.DrawFn, merged: bool | None = None) -> Case:
    spec = draw(finetunedmodel_spec(merged=merged))
    features = {"merge" if spec.get("merge", {}).get("enabled", True) else "inspect-only"}
    features |= {"job"} if "job" in spec else set()
    return Case([resource("FineTunedModel", draw(NAMES), spec)], features)


# -- QuantizationJob -------------------------------------------------------------------------------------------


@st.composite
def quantizationjob_spec(draw: st.DrawFn, *, method: str | None = None, source_ref: str | None = None) -> dict[str, Any]:  # fmt: skip
    """A QuantizationJob of `method` (drawn when None) reading `source_ref` (a FineTunedModel's name) or a URI."""
    method = method or draw(st.sampled_from(["awq", "gguf"]))
    src = {"fineTunedModelRef": {"name": source_ref}} if source_ref else draw(source())
    if source_ref and draw(st.booleans()):
        src["tokenSecretRef"] = draw(secret_ref())
    settings: dict[str, Any] | None = None
    if method == "awq" and draw(st.booleans()):
        calibration = _omit({
            "datasetUri": None, "samples": draw(maybe(st.integers(1, 4096))),
            "maxSeqLen": draw(maybe(st.integers(16, 32768))),
        })  # fmt: skip
        data = draw(maybe(source(pinned=False)))
        if data:
            calibration["datasetUri"] = data["uri"]
            calibration |= {"tokenSecretRef": data["tokenSecretRef"]} if "tokenSecretRef" in data else {}
        settings = _omit({
            "backend": draw(maybe(st.sampled_from(["llm-compressor", "autoawq"]))),
            "bits": draw(maybe(st.sampled_from([4, 8]))),
            "groupSize": draw(maybe(st.sampled_from([32, 64, 128]))),
            "zeroPoint": draw(maybe(st.booleans())),
            "version": draw(maybe(st.sampled_from(["gemm", "gemv"]))),
            "calibration": calibration or None,
        })  # fmt: skip
    if method == "gguf" and draw(st.booleans()):
        settings = _omit({
            "outtype": draw(maybe(st.sampled_from(["f16", "bf16", "f32", "q8_0"]))),
            "quantTypes": draw(maybe(st.lists(st.sampled_from(GGUF_TYPES), min_size=1, max_size=4, unique=True))),
        })  # fmt: skip
    gate = None
    if draw(st.booleans()):
        gate = _omit({"maxPerplexityIncreasePct": draw(st.sampled_from([0, 2.5, 5, 1000])),
                      "samples": draw(maybe(st.integers(1, 4096)))})  # fmt: skip
        data = draw(maybe(source(pinned=False)))
        if data:
            gate["evalDatasetUri"] = data["uri"]
            gate |= {"tokenSecretRef": data["tokenSecretRef"]} if "tokenSecretRef" in data else {}
    return _omit({
        "source": src, "method": method, method: settings or None, "qualityGate": gate,
        "output": draw(maybe(source(pinned=False))), "job": draw(job_template()),
    })  # fmt: skip


@st.composite
def quantizationjob_cases(draw: st.DrawFn, upstream: str | None = None) -> Case:
    """A QuantizationJob of a URI, of a merged FineTunedModel in the input, or of one not in the input (which
    the operator waits for; `tuneops render` renders it from the default output location)."""
    name = draw(NAMES)
    upstream = upstream or draw(st.sampled_from(["uri", "ftm", "ftm-elsewhere"]))
    docs = []
    ref = None
    if upstream == "ftm":
        ref = f"{name[:200]}-ftm"
        docs.append(resource("FineTunedModel", ref, draw(finetunedmodel_spec(merged=True))))
    elif upstream == "ftm-elsewhere":
        ref = "not-in-the-input"
    spec = draw(quantizationjob_spec(source_ref=ref))
    features = {spec["method"], f"source-{upstream}"} | ({"quality-gate"} if "qualityGate" in spec else set())
    return Case([*docs, resource("QuantizationJob", name, spec)], features)


# -- InferenceService ------------------------------------------------------------------------------------------


@st.composite
def env(draw: st.DrawFn, secrets: list[str]) -> list[dict[str, Any]] | None:
    """Settings on the allow-list with literal values, or values from a ConfigMap, the Pod's own fields, or a
    Secret the spec lists in envSecrets."""
    names = draw(st.lists(st.sampled_from(ENV_NAMES), max_size=4, unique=True))
    out: list[dict[str, Any]] = []
    for name in names:
        how = draw(
            st.sampled_from(["value", "value", "configMap", "field", *(["secret"] if secrets else [])])
        )
        if how == "value":
            out.append({"name": name, "value": draw(st.sampled_from(ENV_VALUES) | st.text(max_size=20))})
        elif how == "configMap":
            out.append({"name": name, "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}})
        elif how == "field":
            out.append({"name": name, "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
        else:
            out.append({"name": name, "valueFrom": {"secretKeyRef": {"name": draw(st.sampled_from(secrets)),
                                                                      "key": "value"}}})  # fmt: skip
    return out or None


def _args(draw: st.DrawFn, table: list[list[str]]) -> list[str] | None:
    chosen = draw(st.lists(st.sampled_from(table), max_size=3, unique_by=lambda a: a[0]))
    return [token for arg in chosen for token in arg] or None


@st.composite
def routing(draw: st.DrawFn) -> dict[str, Any]:
    gateway = _omit({"name": draw(DNS), "namespace": draw(maybe(st.sampled_from(["gateways", "team-a"]))),
                     "sectionName": draw(maybe(st.sampled_from(["https", "web"])))})  # fmt: skip
    picker = _omit({"name": draw(DNS), "port": draw(maybe(st.integers(1, 65535))),
                    "failureMode": draw(maybe(st.sampled_from(["FailOpen", "FailClose"])))})  # fmt: skip
    return _omit({
        "gateway": gateway,
        "endpointPicker": draw(maybe(st.just(picker))),  # unset: the operator config's default
        "hostnames": draw(maybe(st.lists(st.sampled_from(["llm.example.com", "a.b"]), min_size=1, max_size=2))),
        "path": draw(maybe(st.sampled_from(["/", "/v1", "/team-a/llm"]))),
    })  # fmt: skip


@st.composite
def autoscaling(draw: st.DrawFn) -> dict[str, Any]:
    engine = draw(st.sampled_from(["keda", "hpa"]))
    low = draw(st.integers(0 if engine == "keda" else 1, 4))
    metric = draw(maybe(st.sampled_from(["requestsWaiting", "requestsRunning", "kvCacheUsage"])))
    target = draw(
        st.sampled_from([0.5, 0.8, 1]) if metric == "kvCacheUsage" else st.sampled_from([0.5, 4, 100])
    )
    return _omit({
        "engine": engine,
        "minReplicas": low,
        "maxReplicas": draw(st.integers(max(low, 1), 1000)),
        "metric": metric,
        "targetValue": target,
        "activationValue": draw(maybe(st.sampled_from([0, 1.5]))) if engine == "keda" else None,
        "scaleDownStabilizationSeconds": draw(maybe(st.sampled_from([0, 300, 3600]))),
    })  # fmt: skip


SERVED = st.sampled_from(["base", "org/model:v1", "Llama-3.1-8B", "a" * 128, "x.y_z-1"])


@st.composite
def vllm_service(
    draw: st.DrawFn, name: str, features: set[str], how: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A vLLM service and the resources it references."""
    docs: list[dict[str, Any]] = []
    tp = draw(st.sampled_from([1, 1, 2, 4, 8]))
    nodes = draw(st.sampled_from([1, 1, 1, 2, 4]))
    pp = nodes if nodes > 1 else draw(st.sampled_from([1, 1, 2]))
    per_pod = tp * (1 if nodes > 1 else pp)
    gpus = draw(st.sampled_from([None, per_pod, *([0, 0] if per_pod == 1 and nodes == 1 else [])]))
    features |= {f"tp{tp}"} | ({"pp"} if pp > 1 else set()) | ({"multi-node"} if nodes > 1 else set())
    features |= {"no-gpu"} if gpus == 0 else set()
    vllm = _omit({
        "tensorParallelSize": tp if tp > 1 or draw(st.booleans()) else None,
        "pipelineParallelSize": pp if pp > 1 else None,
        "nodes": nodes if nodes > 1 else None,
        "maxModelLen": draw(maybe(st.sampled_from([16, 4096, 131072]))),
        "dtype": draw(maybe(st.sampled_from(["auto", "float16", "bfloat16", "float32"]))),
        "gpuMemoryUtilization": draw(maybe(st.sampled_from([0.5, 0.9, 1]))),
        "servedModelName": draw(maybe(SERVED)),
        "enablePrefixCaching": draw(maybe(st.booleans())),
        "shutdownTimeoutSeconds": draw(maybe(st.sampled_from([0, 30, 3600]))),
        "startupTimeoutSeconds": draw(maybe(st.sampled_from([60, 1800, 14400]))),
        "extraArgs": _args(draw, VLLM_ARGS),
    })  # fmt: skip
    how = how or draw(st.sampled_from(VLLM_MODELS))
    features.add(f"model-{how}")
    if how == "uri":
        model = draw(source())
    elif how.startswith("ftm"):
        ref = f"{name[:200]}-model"
        merged = how == "ftm-merged"
        docs.append(
            resource("FineTunedModel", ref, draw(finetunedmodel_spec(merged=merged, adapter_for_vllm=True)))
        )
        model = {"fineTunedModelRef": {"name": ref}}
    elif how == "qjob":
        ref = f"{name[:200]}-awq"
        docs.append(resource("QuantizationJob", ref, draw(quantizationjob_spec(method="awq"))))
        model = {"quantizationJobRef": {"name": ref}}
    else:
        model = {"quantizationJobRef": {"name": "not-in-the-input"}}
    if "uri" not in model and draw(st.booleans()):
        model["tokenSecretRef"] = draw(secret_ref())
    lora = None
    if draw(st.booleans()):
        adapters = []
        for i in range(draw(st.sampled_from([0, 1, 2, 3, 8]))):
            adapter_name = f"{draw(st.sampled_from(['sql', 'org/adapter:v', 'A.b_c-']))}{i}"
            if draw(st.booleans()):
                ref = f"{name[:200]}-adapter-{i}"
                spec = draw(finetunedmodel_spec(adapter_for_vllm=True, light=i > 0))
                docs.append(resource("FineTunedModel", ref, spec))
                adapters.append({"name": adapter_name, "fineTunedModelRef": {"name": ref}})
            else:
                uri = draw(source(schemes=("hf", "pvc", "file"), pinned=False))["uri"]
                adapters.append({"name": adapter_name, "uri": uri})
        max_loras = draw(maybe(st.sampled_from([1, 4, 512])))
        lora = _omit({
            "adapters": adapters,
            "maxLoras": max_loras,
            "maxLoraRank": draw(maybe(st.sampled_from(LORA_RANKS))),
            "maxCpuLoras": draw(maybe(st.integers(max_loras or 4, 4096))),
            "dynamic": draw(maybe(st.booleans())),
        })  # fmt: skip
        features |= {"lora"} | ({"lora-ftm"} if any("fineTunedModelRef" in a for a in adapters) else set())
    auto = draw(maybe(autoscaling()))
    features |= {f"autoscaling-{auto['engine']}"} if auto else set()
    spec = _omit({
        "model": model,
        "vllm": vllm or None,
        "resources": _omit({"gpus": gpus, "gpuProduct": draw(maybe(st.just("NVIDIA-H100-80GB-HBM3"))),
                            "cpu": draw(maybe(QUANTITIES_CPU)), "memory": draw(maybe(QUANTITIES_MEMORY))}) or None,
        "lora": lora,
        "autoscaling": auto,
        "image": draw(maybe(st.sampled_from([CONFIG.images.vllm, "registry.example/serving/vllm:v0.32.0-cu128"]))),
    })  # fmt: skip
    return spec, docs


@st.composite
def llamacpp_service(draw: st.DrawFn, name: str, features: set[str], how: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:  # fmt: skip
    """A llama.cpp service: a GGUF file named by URI, a file in a folder, or a GGUF QuantizationJob's output."""
    docs: list[dict[str, Any]] = []
    how = how or draw(st.sampled_from(LLAMACPP_MODELS))
    features.add(f"gguf-{how}")
    if how == "file-uri":
        model = draw(source(gguf=True))
    elif how == "folder-uri":
        model = {**draw(source(pinned=False)), "file": draw(st.sampled_from(["model.gguf", "m-Q8_0.gguf"]))}
    else:
        ref = f"{name[:200]}-gguf"
        qspec = draw(quantizationjob_spec(method="gguf"))
        docs.append(resource("QuantizationJob", ref, qspec))
        types = (qspec.get("gguf") or {}).get("quantTypes") or ["Q4_K_M"]
        model = _omit({"quantizationJobRef": {"name": ref}, "ggufType": draw(maybe(st.sampled_from(types)))})
        if draw(st.booleans()):
            model["file"] = f"{ref}-{draw(st.sampled_from(types))}.gguf"
    gpus = draw(st.sampled_from([None, 0, 1, 2]))
    features |= {"gguf-gpu"} if gpus else set()
    llamacpp = _omit({
        "ctxSize": draw(maybe(st.sampled_from([16, 4096, 1048576]))),
        "parallel": draw(maybe(st.integers(1, 256))),
        "threads": draw(maybe(st.integers(1, 1024))),
        "gpuLayers": draw(st.sampled_from([1, 999])) if gpus else None,
        "extraArgs": _args(draw, LLAMACPP_ARGS),
    })  # fmt: skip
    spec = _omit({
        "runtime": "llamacpp",
        "model": model,
        "llamacpp": llamacpp or None,
        "resources": _omit({"gpus": gpus, "cpu": draw(maybe(QUANTITIES_CPU)),
                            "memory": draw(maybe(QUANTITIES_MEMORY))}) or None,
        "image": draw(maybe(st.sampled_from([CONFIG.images.llamacpp, "registry.example/serving/llama:cuda"]))),
    })  # fmt: skip
    return spec, docs


@st.composite
def inferenceservice_cases(draw: st.DrawFn, runtime: str | None = None, model: str | None = None) -> Case:
    """A service of `runtime` serving a model of source `model` (VLLM_MODELS, LLAMACPP_MODELS); drawn when None."""
    name = draw(NAMES)
    runtime = runtime or draw(st.sampled_from(["vllm", "llamacpp"]))
    features = {runtime}
    build = vllm_service if runtime == "vllm" else llamacpp_service
    spec, docs = draw(build(name, features, model))
    api_key = draw(maybe(secret_ref()))
    env_secrets = draw(st.lists(st.sampled_from(["app-secrets", "team-a-db"]), max_size=2, unique=True))
    spec = _omit({
        **spec,
        **draw(scheduling()),
        "replicas": draw(maybe(st.integers(0, 8))),
        "apiKeySecretRef": api_key,
        "envSecrets": env_secrets or None,
        "env": draw(env(env_secrets)),
        "runtimeClassName": draw(maybe(st.sampled_from(["nvidia", "kata-qemu"]))),
        "queueName": draw(maybe(st.sampled_from(["team-a-gpus", "q"]))),
        "service": draw(maybe(st.builds(lambda t, p: _omit({"type": t, "port": p}),
                                        maybe(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"])),
                                        maybe(st.sampled_from([80, 8000, 65535]))))),
        "clientNamespaces": draw(maybe(st.lists(st.sampled_from(["apps", "team-b", "x" * 63]), min_size=1,
                                                max_size=3, unique=True))),
        "routing": draw(maybe(routing())),
    })  # fmt: skip
    features |= {k for k in ("apiKeySecretRef", "env", "routing", "envSecrets") if k in spec}
    features |= {"extraArgs"} if (spec.get("vllm") or spec.get("llamacpp") or {}).get("extraArgs") else set()
    return Case([*docs, resource("InferenceService", name, spec)], features)


def valid_cases(kind: str | None = None) -> st.SearchStrategy[Case]:
    """Valid cases of `kind` (any kind when None); services come up more often, having the most to cover."""
    by_kind = {
        "FineTunedModel": finetunedmodel_cases(),
        "QuantizationJob": quantizationjob_cases(),
        "InferenceService": inferenceservice_cases(),
    }
    if kind is not None:
        return by_kind[kind]
    return st.one_of(by_kind["FineTunedModel"], by_kind["QuantizationJob"], by_kind["InferenceService"],
                     inferenceservice_cases("vllm"))  # fmt: skip


# Where the model comes from, by runtime: a URI, a FineTunedModel (merged or not), a QuantizationJob, or one not
# in the input (the operator waits for it; `tuneops render` renders its default output location).
VLLM_MODELS = ["uri", "ftm-merged", "ftm-unmerged", "qjob", "qjob-elsewhere"]
LLAMACPP_MODELS = ["file-uri", "folder-uri", "qjob"]

# Every shape of resource, by what it reads: a test that must reach each one draws from each (hypothesis draws
# unevenly, and a shape it happens not to draw in one run is a run that tested less).
SHAPES: dict[str, st.SearchStrategy[Case]] = {
    "ftm-merge": finetunedmodel_cases(merged=True),
    "ftm-inspect-only": finetunedmodel_cases(merged=False),
    **{f"qjob-of-{u}": quantizationjob_cases(u) for u in ("uri", "ftm", "ftm-elsewhere")},
    **{f"vllm-of-{m}": inferenceservice_cases("vllm", m) for m in VLLM_MODELS},
    **{f"llamacpp-of-{m}": inferenceservice_cases("llamacpp", m) for m in LLAMACPP_MODELS},
}
