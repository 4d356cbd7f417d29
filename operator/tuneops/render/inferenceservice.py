"""Manifests of an InferenceService: vLLM (Deployment or LeaderWorkerSet) or llama.cpp, Service, PDB.

Startup adapters and hot-loading. vLLM only learns adapters at startup from `--lora-modules`, and adapters
loaded at runtime are forgotten when a Pod restarts. The adapter list therefore does not live in the Pod
template: the renderer writes it to a ConfigMap (`lora-modules.json`), mounted into the Pod, and the container
runs a small launcher (`launch.py`, in the same ConfigMap) that reads the file and inserts `--lora-modules`
into vLLM's command line at exactly the place `vllm_args` would put it. With `lora.dynamic` on, adding or
removing an adapter only changes the ConfigMap: running Pods are updated through vLLM's runtime API by the
adapter reconciler, and a Pod that restarts starts with the current list. With `lora.dynamic` off, a hash of
the adapters goes into a Pod template annotation, so a change rolls the Pods. Either way a new model digest
rolls the Pods (annotation `tuneops.io/model-digest`). An adapter on a PVC claim no other input uses adds a
volume, which does change the template.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneops import labels
from tuneops.api.common import ConditionStatus, SecretKeyRef
from tuneops.api.conditions import ROLLOUT, Reason
from tuneops.api.inferenceservice import InferenceServiceSpec, LlamaCppSpec, LoraSpec, VllmSpec
from tuneops.config import OperatorConfig
from tuneops.render.common import (
    GPU_RESOURCE,
    TERMINATION_LOG,
    Manifest,
    Mounts,
    Owner,
    Problem,
    RenderError,
    ResolvedAdapter,
    ResolvedModel,
    bounded_name,
    canonical_json,
    container_security_context,
    content_hash,
    cpu_cores,
    credential_env,
    env_secret,
    env_value,
    gguf_file,
    gpu_tolerations,
    join_uri,
    local_path,
    merge_env,
    metadata,
    pod_security_context,
    quantity_str,
    scheduling_fields,
    selector_labels,
    split_uri,
    standard_labels,
    with_gpu_product,
)
from tuneops.serving.vllm import LoraModule

SERVER = "server"
CONTAINER = "server"
FETCH_CONTAINER = "fetch-model"
PORT = 8000
MODEL_DIR = "/mnt/model"
CACHE_DIR = "/var/cache/tuneops"
CONFIG_DIR = "/etc/tuneops/vllm"
LAUNCH_FILE = "launch.py"
LORA_FILE = "lora-modules.json"
PRESTOP_SLEEP_SECONDS = 10
LLAMACPP_STARTUP_SECONDS = 600
RAY_PORT = 6379
# LeaderWorkerSet labels a group's leader Pod with worker index 0; the Service must reach the leader only.
LWS_WORKER_INDEX = "leaderworkerset.sigs.k8s.io/worker-index"

# Reads the startup adapter list the operator keeps in a ConfigMap and starts vLLM's OpenAI server with it.
# Runs with the image's python3; json objects keep the key order the operator wrote (name, path,
# base_model_name), which is the form `--lora-modules` accepts.
LAUNCHER = """\
import json
import os
import sys

args = sys.argv[1:]
modules_file = os.environ.get("TUNEOPS_LORA_MODULES_FILE", "")
at = int(os.environ.get("TUNEOPS_LORA_ARGS_AT", str(len(args))))
modules = []
if modules_file and os.path.exists(modules_file):
    with open(modules_file, encoding="utf-8") as fh:
        modules = json.load(fh)
lora = ["--lora-modules", *(json.dumps(m, separators=(",", ":")) for m in modules)] if modules else []
print(f"tuneops: starting vLLM with {len(modules)} startup adapter(s)", flush=True)
argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args[:at], *lora, *args[at:]]
os.execv(sys.executable, argv)
"""

# A multi-node group: the leader starts Ray's head, waits until every worker joined, then starts vLLM.
LEADER_SCRIPT = f"""\
set -eu
ray start --head --port={RAY_PORT} --disable-usage-stats
until python3 -c 'import ray, sys; ray.init(address="auto", logging_level="ERROR"); \
sys.exit(0 if sum(1 for n in ray.nodes() if n["Alive"]) >= int(sys.argv[1]) else 1)' "$LWS_GROUP_SIZE"; do
  sleep 5
done
exec python3 {CONFIG_DIR}/{LAUNCH_FILE} "$@"
"""
WORKER_SCRIPT = f'exec ray start --address="$LWS_LEADER_ADDRESS:{RAY_PORT}" --block --disable-usage-stats'


@dataclass(frozen=True)
class Note:
    """A condition the reconciler sets from what rendering decided (e.g. the rollout strategy)."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class ServingRender:
    """Everything an InferenceService needs, plus what the reconciler reports in status."""

    manifests: tuple[Manifest, ...]
    notes: tuple[Note, ...]
    selector: Mapping[str, str]
    url: str
    served_models: tuple[str, ...]
    workload_kind: str
    workload_name: str

    @property
    def selector_string(self) -> str:
        """status.selector for the scale subresource (HPA)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))


# ---------------------------------------------------------------------------------------------- names, paths


def effective_lora(spec: InferenceServiceSpec, adapters: Sequence[ResolvedAdapter]) -> LoraSpec | None:
    """spec.lora, or its defaults when adapters come without it (a FineTunedModel served unmerged)."""
    if spec.lora is not None:
        return spec.lora
    return LoraSpec() if adapters else None


def served_model_name(spec: InferenceServiceSpec, owner: Owner) -> str:
    """The name clients put in the request's model field for the base model."""
    return spec.vllm_settings().served_model_name or owner.name


def workload_name(owner: Owner) -> str:
    return bounded_name(owner.name)


def service_url(spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig) -> str:
    host = f"{workload_name(owner)}.{owner.namespace}.svc.{config.cluster_domain}"
    return f"http://{host}:{spec.service.port}/v1"


def adapter_path(uri: str, config: OperatorConfig) -> str:
    """What vLLM is given as an adapter's path: a file path (pvc://, file://) or a Hugging Face repo id."""
    scheme, rest = split_uri(uri)
    if scheme == "hf":
        return rest.split("@", 1)[0].strip("/")
    if scheme == "s3":
        raise RenderError(
            f"adapter {uri!r}: vLLM cannot load adapters from s3://; use pvc://, hf:// or file://"
        )
    return local_path(uri, config)


def lora_modules(
    spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig, adapters: Sequence[ResolvedAdapter]
) -> list[LoraModule]:
    """The startup adapters in spec order, each with the served base name as its parent in /v1/models."""
    base = served_model_name(spec, owner)
    return [LoraModule(name=a.name, path=adapter_path(a.uri, config), base_model_name=base) for a in adapters]


# ---------------------------------------------------------------------------------------------- arguments


def vllm_args(
    *,
    model_path: str,
    served_name: str,
    vllm: VllmSpec,
    lora: LoraSpec | None = None,
    lora_modules: Sequence[LoraModule] = (),
    port: int = PORT,
    distributed_executor_backend: str | None = None,
) -> list[str]:
    """vLLM's OpenAI server arguments. Never `--quantization` (vLLM reads AWQ / compressed-tensors from the
    model's config and picks the fast kernel) and never `--api-key` (it comes from a Secret as VLLM_API_KEY).
    `extraArgs` come last so they can override anything before them."""
    args = [
        "--model", model_path,
        "--served-model-name", served_name,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--tensor-parallel-size", str(vllm.tensor_parallel_size),
        "--pipeline-parallel-size", str(vllm.pipeline_parallel_size),
    ]  # fmt: skip
    if vllm.max_model_len is not None:
        args += ["--max-model-len", str(vllm.max_model_len)]
    args += ["--dtype", vllm.dtype, "--gpu-memory-utilization", f"{vllm.gpu_memory_utilization:g}"]
    if vllm.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if vllm.enable_prefix_caching else "--no-enable-prefix-caching")
    if distributed_executor_backend:
        args += ["--distributed-executor-backend", distributed_executor_backend]
    if lora is not None:
        args += [
            "--enable-lora",
            "--max-loras",
            str(lora.max_loras),
            "--max-lora-rank",
            str(lora.max_lora_rank),
        ]
        if lora.max_cpu_loras is not None:
            args += ["--max-cpu-loras", str(lora.max_cpu_loras)]
    args += _lora_module_args(lora_modules)
    args += ["--shutdown-timeout", str(vllm.shutdown_timeout_seconds)]
    return args + list(vllm.extra_args or [])


def _lora_module_args(modules: Sequence[LoraModule]) -> list[str]:
    return ["--lora-modules", *(m.to_arg() for m in modules)] if modules else []


def lora_args_index(args: Sequence[str]) -> int:
    """Where the launcher inserts `--lora-modules` into args rendered without modules (before the
    shutdown timeout, as `vllm_args` would have placed them)."""
    return list(args).index("--shutdown-timeout")


def launcher_argv(args: Sequence[str], modules: Sequence[LoraModule]) -> list[str]:
    """The vLLM arguments the launcher ends up running with, given the ConfigMap's adapter list."""
    at = lora_args_index(args)
    return [*args[:at], *_lora_module_args(modules), *args[at:]]


def llamacpp_args(
    *, model_path: str, served_name: str, llamacpp: LlamaCppSpec, threads: int | None, port: int = PORT
) -> list[str]:
    """llama-server arguments (the API key comes from a Secret as LLAMA_API_KEY)."""
    args = [
        "--model", model_path,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--ctx-size", str(llamacpp.ctx_size),
        "--parallel", str(llamacpp.parallel),
    ]  # fmt: skip
    if threads is not None:
        args += ["--threads", str(threads)]
    args += ["--alias", served_name]
    return args + list(llamacpp.extra_args or [])


# ---------------------------------------------------------------------------------------------- checks


def _model_id(name: str) -> str:
    # Adapter configs record the base as whatever path the trainer used ("/data/Mistral-7B-v0.1",
    # "mistralai/Mistral-7B-v0.1"); the last path segment is what both spellings share.
    text = name.strip().split("://", 1)[-1].split("@", 1)[0].rstrip("/")
    return text.rsplit("/", 1)[-1].lower()


# vLLM serves adapters whose modules_to_save is only a classification head; anything else needs a merge.
VLLM_MODULES_TO_SAVE = frozenset({"classifier", "score"})


def check_inferenceservice(
    spec: InferenceServiceSpec, *, model: ResolvedModel, adapters: Sequence[ResolvedAdapter] = ()
) -> list[Problem]:
    """Problems that can be found before anything starts, as condition reasons with messages naming fields.

    InvalidSpec for the service itself (parallelism, runtime vs model format); IncompatibleAdapter for an
    adapter that vLLM would refuse at load time (rank above maxLoraRank, another base model, DoRA,
    modules_to_save, a source vLLM cannot read). LoRA on an AWQ or compressed-tensors base is served by vLLM
    and is not a problem; LoRA on a GGUF model is.
    """
    problems: list[Problem] = []

    def invalid(fld: str, msg: str) -> None:
        problems.append(Problem(Reason.INVALID_SPEC, fld, msg))

    def incompatible(fld: str, msg: str) -> None:
        problems.append(Problem(Reason.INCOMPATIBLE_ADAPTER, fld, msg))

    if spec.runtime == "llamacpp":
        if model.format != "gguf":
            invalid(
                "spec.runtime",
                f"llamacpp serves GGUF models; this model is {model.format} (use runtime: vllm)",
            )
        elif not model.uri.lower().endswith(".gguf") and not (
            spec.model.file or gguf_file(model.files, spec.model.gguf_type)
        ):
            want = f" of type {spec.model.gguf_type}" if spec.model.gguf_type else ""
            invalid("spec.model", f"no GGUF file{want} in {model.uri}; set spec.model.file")
        if spec.resources.gpus:
            invalid(
                "spec.resources.gpus", "the llamacpp runtime runs on CPU; set gpus to 0 or use runtime: vllm"
            )
        return problems

    v = spec.vllm_settings()
    if model.format == "gguf":
        invalid("spec.runtime", "vllm does not serve GGUF artifacts here; use runtime: llamacpp")
    heads = model.num_attention_heads
    if heads is not None and heads % v.tensor_parallel_size != 0:
        invalid(
            "spec.vllm.tensorParallelSize",
            f"{v.tensor_parallel_size} does not divide the model's {heads} attention heads",
        )
    per_pod = v.tensor_parallel_size * (1 if v.nodes > 1 else v.pipeline_parallel_size)
    if spec.resources.gpus and spec.resources.gpus != per_pod:
        invalid(
            "spec.resources.gpus",
            f"{spec.resources.gpus} GPUs per Pod, but tensorParallelSize x pipelineParallelSize needs {per_pod}",
        )
    if v.nodes > 1:
        if not spec.resources.gpus:
            invalid("spec.resources.gpus", "multi-node serving (vllm.nodes > 1) needs GPUs on every node")
        if v.pipeline_parallel_size != v.nodes:
            invalid(
                "spec.vllm.pipelineParallelSize",
                f"with {v.nodes} nodes the pipeline runs one stage per node: set it to {v.nodes}",
            )
    lora = effective_lora(spec, adapters)
    if lora is None:
        return problems
    if lora.max_cpu_loras is not None and lora.max_cpu_loras < lora.max_loras:
        invalid("spec.lora.maxCpuLoras", f"must be at least maxLoras ({lora.max_loras})")
    if model.format == "gguf" and lora.adapters:
        incompatible("spec.lora", "LoRA adapters cannot be served on a GGUF model")
    index = {a.name: i for i, a in enumerate(lora.adapters)}
    for a in adapters:
        fld = f"spec.lora.adapters[{index.get(a.name, '?')}]"
        if a.rank is not None and a.rank > lora.max_lora_rank:
            incompatible(
                fld, f"adapter {a.name!r} has rank {a.rank}, above lora.maxLoraRank {lora.max_lora_rank}"
            )
        if (
            a.base_model_name
            and model.base_model_name
            and _model_id(a.base_model_name) != _model_id(model.base_model_name)
        ):
            incompatible(
                fld,
                f"adapter {a.name!r} was trained on {a.base_model_name!r}, the service serves "
                f"{model.base_model_name!r}",
            )
        if a.use_dora:
            incompatible(
                fld, f"adapter {a.name!r} is a DoRA adapter, which vLLM does not serve; merge it instead"
            )
        extra = sorted(set(a.modules_to_save) - VLLM_MODULES_TO_SAVE)
        if extra:
            incompatible(
                fld,
                f"adapter {a.name!r} saves full modules {', '.join(extra)} (modules_to_save), which vLLM does not "
                "serve; merge it instead",
            )
        scheme, rest = split_uri(a.uri)
        if scheme == "s3":
            incompatible(
                fld, f"adapter {a.name!r}: vLLM cannot load adapters from s3://; use pvc:// or hf://"
            )
        if scheme == "hf" and "@" in rest:
            incompatible(
                fld,
                f"adapter {a.name!r}: vLLM loads hf:// adapters at their default revision; drop the @revision",
            )
    return problems


# ---------------------------------------------------------------------------------------------- pod parts


@dataclass(frozen=True)
class _ModelFiles:
    path: str
    volumes: tuple[dict[str, Any], ...]
    mounts: tuple[dict[str, Any], ...]
    init: tuple[dict[str, Any], ...]


def _model_files(
    uri: str,
    file: str | None,
    model: ResolvedModel,
    secret: SecretKeyRef | None,
    config: OperatorConfig,
    mounts: Mounts,
) -> _ModelFiles:
    """pvc:// is mounted read-only; file:// is used as is (local use); s3:// and hf:// are downloaded by an
    init container into an emptyDir sized from the artifact when its size is known."""
    scheme, _ = split_uri(uri)
    if scheme in ("pvc", "file"):
        mounts.add(uri)
        base = local_path(uri, config)
        return _ModelFiles(
            path=f"{base.rstrip('/')}/{file}" if file else base, volumes=(), mounts=(), init=()
        )
    empty: dict[str, Any] = {}
    if model.size_bytes:
        empty["sizeLimit"] = f"{math.ceil(model.size_bytes * 1.1 / 2**20) + 1024}Mi"
    volume = {"emptyDir": empty, "name": "model"}
    env = merge_env(
        [
            env_value("HOME", "/tmp"),
            env_value("TUNEOPS_PVC_ROOT", config.pvc_mount_root),
            env_value("TUNEOPS_TERMINATION_LOG", TERMINATION_LOG),
            *credential_env(secret, [uri]),
        ]
    )
    init = {
        "args": ["worker", "fetch", "--source", uri, "--dest", MODEL_DIR],
        "command": ["tuneops"],
        "env": env,
        "image": config.images.worker,
        "imagePullPolicy": "IfNotPresent",
        "name": FETCH_CONTAINER,
        # Downloading is network- and disk-bound; a small, fixed footprint keeps it off the model's budget.
        "resources": {"limits": {"memory": "2Gi"}, "requests": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"mountPath": MODEL_DIR, "name": "model"}, {"mountPath": "/tmp", "name": "tmp"}],
    }
    return _ModelFiles(
        path=f"{MODEL_DIR}/{file}" if file else MODEL_DIR,
        volumes=(volume,),
        mounts=({"mountPath": MODEL_DIR, "name": "model", "readOnly": True},),
        init=(init,),
    )


def _http_probe(period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "failureThreshold": failures,
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
    }


def _probes(startup_timeout: int) -> dict[str, Any]:
    """Probes on /health; the startup probe holds the others off while a large model loads."""
    return {
        "livenessProbe": _http_probe(period=15, failures=4, timeout=10),
        "readinessProbe": _http_probe(period=5, failures=3, timeout=5),
        "startupProbe": _http_probe(period=10, failures=math.ceil(startup_timeout / 10), timeout=5),
    }


def _server_resources(
    spec: InferenceServiceSpec, config: OperatorConfig, gpus: int, cpu_default: bool
) -> dict[str, Any]:
    r = spec.resources
    cpu = r.cpu if r.cpu is not None else (config.worker_cpu if cpu_default else None)
    memory = r.memory if r.memory is not None else (config.worker_memory if cpu_default else None)
    requests: dict[str, str] = {}
    if cpu is not None:
        requests["cpu"] = quantity_str(cpu)
    if memory is not None:
        requests["memory"] = quantity_str(memory)
    limits = dict(requests)
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = dict(sorted(limits.items()))
    if requests:
        out["requests"] = dict(sorted(requests.items()))
    return out


def _pod_scheduling(spec: InferenceServiceSpec, config: OperatorConfig, gpus: int) -> dict[str, Any]:
    return scheduling_fields(
        node_selector=spec.node_selector,
        tolerations=gpu_tolerations([t.wire() for t in spec.tolerations or []], gpus, config),
        affinity=with_gpu_product(spec.affinity, spec.resources.gpu_product if gpus else None),
        priority_class_name=spec.priority_class_name,
        service_account_name=spec.service_account_name,
        runtime_class_name=spec.runtime_class_name,
    )


def _extra_labels(spec: InferenceServiceSpec) -> dict[str, str]:
    # The runtime label lets monitors tell vLLM Pods (which serve /metrics) from llama.cpp ones.
    out: dict[str, str] = {labels.RUNTIME: spec.runtime}
    if spec.queue_name:
        out[labels.KUEUE_QUEUE] = spec.queue_name
    return out


def _rollout(spec: InferenceServiceSpec, config: OperatorConfig, gpus: int) -> tuple[dict[str, Any], Note]:
    if gpus and not config.spare_gpus:
        note = Note(
            ROLLOUT,
            "True",
            Reason.MAX_SURGE_ZERO,
            "no spare GPUs for a surge Pod: rolling updates replace one Pod at a time (maxSurge 0, "
            "maxUnavailable 1)"
            + (
                ", so a single-replica service is unavailable while its new Pod loads"
                if spec.replicas <= 1
                else ""
            ),
        )
        return {"maxSurge": 0, "maxUnavailable": 1}, note
    return {"maxSurge": 1, "maxUnavailable": 0}, Note(
        ROLLOUT, "True", Reason.SURGE_ALLOWED, "rolling updates start a new Pod before stopping an old one"
    )


def _service(spec: InferenceServiceSpec, owner: Owner, selector: Mapping[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": {
            "ports": [{"name": "http", "port": spec.service.port, "protocol": "TCP", "targetPort": "http"}],
            "selector": dict(sorted(selector.items())),
            "type": spec.service.type,
        },
    }


def _pdb(owner: Owner, selector: Mapping[str, str], config: OperatorConfig) -> Manifest:
    # policy/v1 arrived in Kubernetes 1.21; the operator discovers the server version at startup.
    return {
        "apiVersion": "policy/v1" if config.features.pdb_v1 else "policy/v1beta1",
        "kind": "PodDisruptionBudget",
        "metadata": metadata(owner, workload_name(owner), SERVER),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(sorted(selector.items()))}},
    }


def _api_key_env(spec: InferenceServiceSpec, name: str) -> list[dict[str, Any]]:
    ref = spec.api_key_secret_ref
    return [env_secret(name, ref.name, ref.key)] if ref else []


def _user_env(spec: InferenceServiceSpec) -> list[dict[str, Any]]:
    return [e.wire() for e in spec.env or []]


# ---------------------------------------------------------------------------------------------- vLLM


def _vllm_configmap(owner: Owner, modules: Sequence[LoraModule], with_lora: bool) -> Manifest:
    data = {LAUNCH_FILE: LAUNCHER}
    if with_lora:
        rows = [json.loads(m.to_arg()) for m in modules]
        data[LORA_FILE] = json.dumps(rows, separators=(",", ":")) + "\n"
    return {
        "apiVersion": "v1",
        "data": dict(sorted(data.items())),
        "kind": "ConfigMap",
        "metadata": metadata(owner, bounded_name(owner.name, "vllm"), SERVER),
    }


def _adapters_hash(adapters: Sequence[ResolvedAdapter]) -> str:
    return content_hash([[a.name, a.uri, a.digest] for a in sorted(adapters, key=lambda a: a.name)])


def _render_vllm(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    model: ResolvedModel,
    adapters: Sequence[ResolvedAdapter],
    adapter_sources: Sequence[str] = (),
) -> ServingRender:
    v = spec.vllm_settings()
    lora = effective_lora(spec, adapters)
    multinode = v.nodes > 1
    gpus = spec.resources.gpus
    per_pod_parallel = v.tensor_parallel_size * (1 if multinode else v.pipeline_parallel_size)
    served = served_model_name(spec, owner)
    mounts = Mounts(config)
    secret = model.token_secret or spec.model.token_secret_ref
    files = _model_files(model.uri, None, model, secret, config, mounts)
    modules = lora_modules(spec, owner, config, adapters) if lora else []
    for a in adapters:
        mounts.add(a.uri)
    if lora:
        # Claims adapters may come from later are mounted now: a volume cannot be added to a running Pod, so
        # an adapter on a new claim would otherwise restart the Pods that hot-loading exists to keep.
        for uri in adapter_sources:
            mounts.add(uri)

    args = vllm_args(
        model_path=files.path,
        served_name=served,
        vllm=v,
        lora=lora,
        port=PORT,
        distributed_executor_backend="ray" if multinode else None,
    )
    hf_adapters = any(split_uri(a.uri)[0] == "hf" for a in adapters)
    env: list[dict[str, Any]] = [
        env_value("DO_NOT_TRACK", "1"),
        env_value("HF_HOME", f"{CACHE_DIR}/huggingface"),
        env_value("HOME", CACHE_DIR),
        env_value("TRITON_CACHE_DIR", f"{CACHE_DIR}/triton"),
        env_value("VLLM_CACHE_ROOT", f"{CACHE_DIR}/vllm"),
        env_value("VLLM_NO_USAGE_STATS", "1"),
        env_value("XDG_CACHE_HOME", f"{CACHE_DIR}/xdg"),
        *_api_key_env(spec, "VLLM_API_KEY"),
    ]
    if not hf_adapters:
        # Everything is on local disk: never let a missing file turn into a slow download attempt.
        env.append(env_value("HF_HUB_OFFLINE", "1"))
    elif secret is not None:
        env.append(env_secret("HF_TOKEN", secret.name, secret.key))
    if lora is not None:
        env += [
            env_value("TUNEOPS_LORA_ARGS_AT", str(lora_args_index(args))),
            env_value("TUNEOPS_LORA_MODULES_FILE", f"{CONFIG_DIR}/{LORA_FILE}"),
        ]
        if lora.dynamic:
            env.append(env_value("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "True"))

    volumes: list[dict[str, Any]] = [
        {"emptyDir": {}, "name": "cache"},
        {"emptyDir": {}, "name": "tmp"},
        {"configMap": {"name": bounded_name(owner.name, "vllm")}, "name": "vllm-config"},
        *files.volumes,
    ]
    volume_mounts: list[dict[str, Any]] = [
        {"mountPath": CACHE_DIR, "name": "cache"},
        {"mountPath": "/tmp", "name": "tmp"},
        {"mountPath": CONFIG_DIR, "name": "vllm-config", "readOnly": True},
        *files.mounts,
    ]
    if per_pod_parallel > 1:
        # NCCL exchanges tensors through /dev/shm; the runtime's 64 MB default breaks tensor parallelism.
        volumes.append({"emptyDir": {"medium": "Memory"}, "name": "dshm"})
        volume_mounts.append({"mountPath": "/dev/shm", "name": "dshm"})
    volumes += mounts.volumes()
    volume_mounts += mounts.volume_mounts()

    container: dict[str, Any] = {
        "args": args,
        "command": ["python3", f"{CONFIG_DIR}/{LAUNCH_FILE}"],
        "env": merge_env(env, _user_env(spec)),
        "image": spec.image or config.images.vllm,
        "imagePullPolicy": "IfNotPresent",
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}},
        "name": CONTAINER,
        "ports": [{"containerPort": PORT, "name": "http", "protocol": "TCP"}],
        "resources": _server_resources(spec, config, gpus, cpu_default=False),
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": volume_mounts,
        **_probes(v.startup_timeout_seconds),
    }
    annotations: dict[str, str] = {}
    if model.digest:
        annotations[labels.MODEL_DIGEST] = model.digest
    if lora is not None and not lora.dynamic:
        annotations[labels.ADAPTERS_HASH] = _adapters_hash(adapters)
    grace = PRESTOP_SLEEP_SECONDS + v.shutdown_timeout_seconds + 15
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": grace,
        "volumes": volumes,
        **_pod_scheduling(spec, config, gpus),
    }
    if files.init:
        pod_spec["initContainers"] = list(files.init)

    selector = selector_labels(owner, SERVER)
    extra = _extra_labels(spec)
    pod_meta: dict[str, Any] = {"labels": standard_labels(owner, SERVER, extra)}
    if annotations:
        pod_meta["annotations"] = dict(sorted(annotations.items()))
    strategy, note = _rollout(spec, config, gpus)
    name = workload_name(owner)

    if multinode:
        leader = json.loads(canonical_json({"metadata": pod_meta, "spec": pod_spec}))
        lc = leader["spec"]["containers"][0]
        lc["command"] = ["/bin/sh", "-c", LEADER_SCRIPT, "vllm-leader"]
        worker = json.loads(canonical_json({"metadata": pod_meta, "spec": pod_spec}))
        wc = worker["spec"]["containers"][0]
        for key in ("args", "livenessProbe", "readinessProbe", "startupProbe", "ports", "lifecycle"):
            wc.pop(key, None)
        wc["command"] = ["/bin/sh", "-c", WORKER_SCRIPT]
        workload: Manifest = {
            "apiVersion": "leaderworkerset.x-k8s.io/v1",
            "kind": "LeaderWorkerSet",
            "metadata": metadata(owner, name, SERVER, extra_labels=extra),
            "spec": {
                "leaderWorkerTemplate": {
                    "leaderTemplate": leader,
                    "restartPolicy": "RecreateGroupOnPodRestart",
                    "size": v.nodes,
                    "workerTemplate": worker,
                },
                "replicas": spec.replicas,
                "rolloutStrategy": {"rollingUpdateConfiguration": strategy, "type": "RollingUpdate"},
                "startupPolicy": "LeaderCreated",
            },
        }
        service_selector = {**selector, LWS_WORKER_INDEX: "0"}
    else:
        workload = {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(owner, name, SERVER, extra_labels=extra),
            "spec": {
                "progressDeadlineSeconds": v.startup_timeout_seconds + 600,
                "replicas": spec.replicas,
                "revisionHistoryLimit": 3,
                "selector": {"matchLabels": selector},
                "strategy": {"rollingUpdate": strategy, "type": "RollingUpdate"},
                "template": {"metadata": pod_meta, "spec": pod_spec},
            },
        }
        service_selector = selector
    manifests: list[Manifest] = [
        _vllm_configmap(owner, modules, lora is not None),
        workload,
        _service(spec, owner, service_selector),
    ]
    if spec.replicas > 1:
        manifests.append(_pdb(owner, selector, config))
    return ServingRender(
        manifests=tuple(manifests),
        notes=(note,),
        selector=selector,
        url=service_url(spec, owner, config),
        served_models=(served, *(a.name for a in adapters)),
        workload_kind=workload["kind"],
        workload_name=name,
    )


# ---------------------------------------------------------------------------------------------- llama.cpp


def _gguf_target(spec: InferenceServiceSpec, model: ResolvedModel) -> tuple[str, str | None]:
    """(URI to mount or download, file name inside it) of the GGUF file to serve.

    A downloaded single-file URI lands in the model folder under its own name.
    """
    scheme, rest = split_uri(model.uri)
    if model.uri.lower().endswith(".gguf"):
        return model.uri, (rest.rstrip("/").rsplit("/", 1)[-1] if scheme in ("s3", "hf") else None)
    file = spec.model.file or gguf_file(model.files, spec.model.gguf_type)
    if file is None:
        want = f" of type {spec.model.gguf_type}" if spec.model.gguf_type else ""
        raise RenderError(f"spec.model: no GGUF file{want} in {model.uri}; set spec.model.file")
    if scheme == "s3":
        # Download only the file that is served, not every quantization in the artifact.
        return join_uri(model.uri, file), file
    return model.uri, file


def _render_llamacpp(
    spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig, model: ResolvedModel
) -> ServingRender:
    lc = spec.llamacpp_settings()
    served = served_model_name(spec, owner)
    uri, file = _gguf_target(spec, model)
    mounts = Mounts(config)
    secret = model.token_secret or spec.model.token_secret_ref
    files = _model_files(uri, file, model, secret, config, mounts)
    path = files.path
    resources = _server_resources(spec, config, 0, cpu_default=True)
    threads = lc.threads or cpu_cores(resources.get("limits", {}).get("cpu"))
    args = llamacpp_args(model_path=path, served_name=served, llamacpp=lc, threads=threads)
    env = [env_value("HOME", "/tmp"), *_api_key_env(spec, "LLAMA_API_KEY")]
    container: dict[str, Any] = {
        "args": args,
        "env": merge_env(env, _user_env(spec)),
        "image": spec.image or config.images.llamacpp,
        "imagePullPolicy": "IfNotPresent",
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}},
        "name": CONTAINER,
        "ports": [{"containerPort": PORT, "name": "http", "protocol": "TCP"}],
        "resources": resources,
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"mountPath": "/tmp", "name": "tmp"}, *files.mounts, *mounts.volume_mounts()],
        **_probes(LLAMACPP_STARTUP_SECONDS),
    }
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "terminationGracePeriodSeconds": PRESTOP_SLEEP_SECONDS + 30,
        "volumes": [{"emptyDir": {}, "name": "tmp"}, *files.volumes, *mounts.volumes()],
        **_pod_scheduling(spec, config, 0),
    }
    if files.init:
        pod_spec["initContainers"] = list(files.init)
    pod_meta: dict[str, Any] = {"labels": standard_labels(owner, SERVER, _extra_labels(spec))}
    if model.digest:
        pod_meta["annotations"] = {labels.MODEL_DIGEST: model.digest}
    selector = selector_labels(owner, SERVER)
    strategy, note = _rollout(spec, config, 0)
    name = workload_name(owner)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(owner, name, SERVER, extra_labels=_extra_labels(spec)),
        "spec": {
            "progressDeadlineSeconds": LLAMACPP_STARTUP_SECONDS + 600,
            "replicas": spec.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector},
            "strategy": {"rollingUpdate": strategy, "type": "RollingUpdate"},
            "template": {"metadata": pod_meta, "spec": pod_spec},
        },
    }
    manifests: list[Manifest] = [deployment, _service(spec, owner, selector)]
    if spec.replicas > 1:
        manifests.append(_pdb(owner, selector, config))
    return ServingRender(
        manifests=tuple(manifests),
        notes=(note,),
        selector=selector,
        url=service_url(spec, owner, config),
        served_models=(served,),
        workload_kind="Deployment",
        workload_name=name,
    )


# ---------------------------------------------------------------------------------------------- entry point


def render_inferenceservice(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    model: ResolvedModel,
    adapters: Sequence[ResolvedAdapter] = (),
    adapter_sources: Sequence[str] = (),
) -> ServingRender:
    """All manifests of the service. Run `check_inferenceservice` first: rendering assumes a servable spec
    and raises RenderError only for what it cannot express at all (e.g. no GGUF file to point at).

    `adapter_sources` are URIs adapters may be loaded from later (adapters still waiting for their
    FineTunedModel, and where those publish): their PVC claims are mounted from the start."""
    if spec.runtime == "llamacpp":
        return _render_llamacpp(spec, owner, config, model)
    return _render_vllm(spec, owner, config, model, adapters, adapter_sources)
