"""Operator configuration: images, artifact root, watched namespaces and defaults, from env or a YAML file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from tuneops.api.inferenceservice import EndpointPicker


class Images(BaseModel):
    """Container images of each step and runtime (pinned tags; the chart overrides them)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    worker: str = "ghcr.io/tuneops/worker:0.1.0"
    """merge, AWQ, evaluate, inspect and fetch (CUDA base)."""
    gguf: str = "ghcr.io/tuneops/gguf:0.1.0"
    """GGUF conversion and quantization (llama.cpp tools)."""
    vllm: str = "vllm/vllm-openai:v0.32.0"
    """vLLM's OpenAI-compatible server."""
    llamacpp: str = "ghcr.io/ggml-org/llama.cpp:server-b6000"
    """llama.cpp's OpenAI-compatible server."""


class Features(BaseModel):
    """API features that depend on the cluster's Kubernetes version (discovered at startup)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    pod_failure_policy: bool = False
    """Job.spec.podFailurePolicy (Kubernetes 1.26+)."""
    pdb_v1: bool = True
    """policy/v1 PodDisruptionBudget (Kubernetes 1.21+); older servers get policy/v1beta1."""
    hpa_v2: bool = True
    """autoscaling/v2 HorizontalPodAutoscaler (Kubernetes 1.23+); older servers get autoscaling/v2beta2."""
    native_sidecars: bool = True
    """Init containers with restartPolicy Always (Kubernetes 1.29+); older servers drop the field, so the adapter
    loader becomes a regular container there."""


class Scratch(BaseModel):
    """Sizes of the writable scratch every rendered Pod gets (root filesystems are read-only): each emptyDir's
    sizeLimit, and the ephemeral-storage each container requests. A Pod that writes more is evicted."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    worker: str = "200Gi"
    """A worker Job's /scratch: HOME, caches and downloads of hf:// and s3:// inputs (whole models)."""
    model: str = "200Gi"
    """The served model's download folder when the artifact's size is not known (else its size + 1Gi)."""
    cache: str = "20Gi"
    """vLLM's caches (HOME, HF_HOME, XDG_CACHE_HOME, TRITON_CACHE_DIR, VLLM_CACHE_ROOT)."""
    tmp: str = "2Gi"
    """/tmp of every container."""
    shm: str = "16Gi"
    """/dev/shm of tensor-parallel vLLM Pods (memory-backed: it counts against the Pod's memory)."""
    engine_shm: str = "1Gi"
    """/dev/shm of the other vLLM Pods: vLLM's engine talks to its API server through shared-memory queues
    (160 MiB of them), more than the container runtime's 64 MB default /dev/shm holds."""
    request: str = "1Gi"
    """ephemeral-storage request of every container (scheduling; the sizeLimits cap what is written)."""


# Environment variables the servers read as plain settings: no file, library, module or URL in their values.
DEFAULT_ENV = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "TOKENIZERS_PARALLELISM",
    "TZ",
    "CUDA_DEVICE_MAX_CONNECTIONS",
    "CUDA_LAUNCH_BLOCKING",
    "PYTORCH_CUDA_ALLOC_CONF",
    "NCCL_DEBUG",
    "NCCL_DEBUG_SUBSYS",
    "NCCL_SOCKET_IFNAME",
    "NCCL_IB_DISABLE",
    "NCCL_P2P_DISABLE",
    "NCCL_P2P_LEVEL",
    "NCCL_SHM_DISABLE",
    "NCCL_CUMEM_ENABLE",
    "GLOO_SOCKET_IFNAME",
    "VLLM_LOGGING_LEVEL",
    "VLLM_ATTENTION_BACKEND",
    "VLLM_CPU_KVCACHE_SPACE",
    "VLLM_CPU_OMP_THREADS_BIND",
    "VLLM_WORKER_MULTIPROC_METHOD",
    "VLLM_ENGINE_ITERATION_TIMEOUT_S",
    "VLLM_RPC_TIMEOUT",
    "VLLM_LOG_STATS_INTERVAL",
    "VLLM_HTTP_TIMEOUT_KEEP_ALIVE",
)


class AllowLists(BaseModel):
    """What a tenant's spec may choose for the Pods the operator creates; anything else is refused
    (Ready=False, reason NotAllowed, naming the field). Patterns are shell globs (fnmatch): `*` matches
    anything, `ghcr.io/acme/*` every image under that prefix."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    images: list[str] = Field(default_factory=list)
    """Images a spec may set (spec.image, spec.job.image) besides the configured ones (always allowed)."""
    service_accounts: list[str] = Field(default_factory=list)
    """ServiceAccounts a spec may run its Pods as (serviceAccountName), with their token mounted. The default
    (unset) is always allowed and gets no token."""
    priority_classes: list[str] = Field(default_factory=list)
    """PriorityClasses a spec may set (priorityClassName); unset is always allowed."""
    runtime_classes: list[str] = Field(default_factory=lambda: ["*"])
    """RuntimeClasses an InferenceService may set (runtimeClassName; e.g. nvidia)."""
    extra_args: list[str] = Field(default_factory=list)
    """Flags of vllm.extraArgs / llamacpp.extraArgs allowed besides the built-in list of safe tuning flags
    (validation/args.py), values and all, and even when deniedArgs names them (e.g. --trust-remote-code). Flags the
    operator sets from spec fields (the model, the port, parallelism, adapters, the API key) stay refused."""
    env: list[str] = Field(default_factory=lambda: list(DEFAULT_ENV))
    """Names (globs) of the environment variables an InferenceService's spec.env may set. The default holds thread
    counts, NCCL's and PyTorch's allocator and network settings and vLLM's plain tuning variables: none of them
    names a file or a library to load. Names the operator sets (HOME, HF_*, TUNEOPS_*, VLLM_API_KEY, ...) are
    refused whatever this says."""
    denied_args: list[str] = Field(default_factory=list)
    """Flags (globs) refused even though the built-in list of safe flags holds them: an administrator's way to
    narrow that list. Empty by default: flags outside the safe list are refused anyway."""


class RoutingDefaults(BaseModel):
    """Defaults of an InferenceService's spec.routing (docs/routing.md)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    endpoint_picker: EndpointPicker | None = None
    """The endpoint picker of a spec.routing that names none: {name, port, failureMode}, a Service of that name
    in each InferenceService's namespace (an InferencePool refers to a picker in its own namespace). None:
    spec.routing must name one."""


class OperatorConfig(BaseModel):
    """Everything the renderers and reconcilers read that is not in a resource's spec.

    Keys may be written camelCase (allowCrossNamespaceRefs), as in the chart's values, or snake_case.
    """

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    images: Images = Field(default_factory=Images)
    artifact_root: str = "pvc://tuneops-artifacts"
    """Where outputs go when a resource names none: <root>/<namespace>/<kind plural>/<name>."""
    pvc_mount_root: str = "/mnt/pvc"
    """Where PersistentVolumeClaims are mounted in Pods; pvc://claim/path is <root>/<claim>/path."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty means all."""
    operator_namespace: str = ""
    """The operator's own namespace, admitted by the NetworkPolicies of services whose runtime LoRA API has no
    API key (the operator calls it). The chart sets it; empty admits no namespace but the service's own."""
    allow_cross_namespace_refs: bool = False
    """Whether a resource may reference resources in other namespaces."""
    job_ttl_seconds: int = 86400
    """ttlSecondsAfterFinished of the Jobs (the operator has copied the result into status by then)."""
    waiting_warning_seconds: int = Field(default=600, ge=0)
    """After this many seconds of Ready=False/WaitingForSource, the Ready message says what to check and a
    Warning Event is written once (a misspelled reference otherwise waits quietly forever). 0: never."""
    cluster_domain: str = "cluster.local"
    features: Features = Field(default_factory=Features)
    worker_cpu: str = "2"
    """Default CPU request of a worker Job when the spec sets none."""
    worker_memory: str = "8Gi"
    """Default memory request of a worker Job when the spec sets none."""
    gpu_toleration: bool = True
    """Add the nvidia.com/gpu NoSchedule toleration to Pods that request GPUs."""
    prometheus_address: str = "http://prometheus-operated.monitoring.svc:9090"
    """The Prometheus that scrapes the vLLM Pods, queried by KEDA ScaledObjects (spec.autoscaling.engine keda)."""
    spare_gpus: bool = False
    """Whether the cluster keeps spare GPUs for a rolling update's surge Pod (else maxSurge is 0)."""
    allow_custom_code: bool = False
    """Let GGUF conversion take model folders that carry their own Python code (an auto_map, *.py files).
    llama.cpp's converter runs that code for some architectures (Qwen v1, ChatGLM); off, such sources are
    refused and the converter cannot turn trust_remote_code on. Either way it runs without credentials."""
    hash_verified_inputs: bool = False
    """Hash a model folder's files as a merge reads them even when its manifest vouches for them (the digest
    the operator recorded, every file listed at its size). Off, such a folder is not hashed again: a change to
    its bytes that keeps every size is then not seen by the merge (docs/reliability.md)."""
    native_sidecars: bool = True
    """Run the adapter loader of a vLLM Pod with s3:// or hf://...@revision adapters as a native sidecar (an init
    container with restartPolicy Always) where the cluster has them (Kubernetes 1.29+, found at startup); off, or
    on an older cluster, as a second regular container."""
    allow_ambient_credentials: bool = False
    """Let a source with no Secret of its own (an s3:// URI without tokenSecretRef) be read with whatever identity
    the Pod or its node has (an IAM role for service accounts, the instance profile). Off, such a source is
    refused: credentials come only from a Secret the spec names for that source."""

    scratch: Scratch = Field(default_factory=Scratch)
    """sizeLimits of the Pods' scratch emptyDirs and their ephemeral-storage request."""
    allow: AllowLists = Field(default_factory=AllowLists)
    """What tenants' specs may choose for their Pods: images, ServiceAccounts, PriorityClasses, arguments."""
    routing: RoutingDefaults = Field(default_factory=RoutingDefaults)
    """Defaults of spec.routing: the endpoint picker of services that name none."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> OperatorConfig:
        """From a YAML file ($TUNEOPS_CONFIG when no path), with TUNEOPS_IMAGE_* env overrides."""
        data: dict[str, Any] = {}
        chosen = path or os.environ.get("TUNEOPS_CONFIG")
        if chosen:
            loaded = yaml.safe_load(Path(chosen).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{chosen}: operator config must be a mapping")
            data = loaded
        cfg = cls.model_validate(data)
        for field in Images.model_fields:
            env = os.environ.get(f"TUNEOPS_IMAGE_{field.upper()}")
            if env:
                setattr(cfg.images, field, env)
        if os.environ.get("TUNEOPS_ARTIFACT_ROOT"):
            cfg.artifact_root = os.environ["TUNEOPS_ARTIFACT_ROOT"]
        return cfg
