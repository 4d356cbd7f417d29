"""InferenceService: an OpenAI-compatible endpoint served by vLLM (GPU, TP/PP, multi-LoRA) or llama.cpp (GGUF, CPU)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, model_validator

from tuneops.api.common import (
    LIST_MAX,
    AdapterDigest,
    BaseStatus,
    DNSName,
    EnvVar,
    LongStr,
    Message,
    Model,
    ObjectRef,
    Quantity,
    Scheduling,
    SecretKeyRef,
    ShortStr,
    Str,
    Uri,
    fetched_by_loader,
    field_errors,
)

KIND = "InferenceService"
PLURAL = "inferenceservices"
SINGULAR = "inferenceservice"
SHORT_NAMES = ["tisvc"]

# vLLM accepts only these values for --max-lora-rank.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]

# Served model names and adapter names travel in the OpenAI request's "model" field.
ServedName = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.:/]*$")
]
ExtraArg = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


class ModelSource(Model):
    """The model to serve: exactly one of fineTunedModelRef, quantizationJobRef or uri."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.fineTunedModelRef) ? 1 : 0) + (has(self.quantizationJobRef) ? 1 : 0)"
                    " + (has(self.uri) ? 1 : 0) == 1",
                    "message": "set exactly one of model.fineTunedModelRef, model.quantizationJobRef or model.uri",
                },
                {
                    "rule": "!has(self.serve) || has(self.fineTunedModelRef)",
                    "message": "model.serve chooses between a FineTunedModel's merged model and its adapter: it "
                    "needs model.fineTunedModelRef",
                },
            ]
        }
    }

    fine_tuned_model_ref: ObjectRef | None = None
    """Serve a FineTunedModel: its merged model, or (merge disabled) its base model with the adapter."""
    quantization_job_ref: ObjectRef | None = None
    """Serve a QuantizationJob's artifact (AWQ with vLLM, GGUF with llama.cpp)."""
    uri: Uri | None = None
    """Serve a model folder (vLLM) or a GGUF file or folder (llama.cpp) directly."""
    file: Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[^/]+$")] | None = None
    """llama.cpp: the GGUF file inside the artifact (default: the one matching ggufType, else the only .gguf)."""
    gguf_type: ShortStr | None = None
    """llama.cpp: which quantization of a GGUF QuantizationJob to serve (default: the first one listed)."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials for downloading the model from hf:// or s3:// (the download init container):
    the uri, or where the referenced FineTunedModel or QuantizationJob wrote its artifact."""
    serve: Literal["merged", "lora", "auto"] | None = None
    """With fineTunedModelRef: serve its merged model, its base with the adapter through vLLM's LoRA path, or
    what its benchmark recommends (auto: status.benchmark of the FineTunedModel; the merged model until it has
    measured). In the lora form the adapter takes the service's served name and the base is served as
    `<name>-base`, so clients use one name in either form. Unset: the merged model, or the base with the adapter
    (under the FineTunedModel's name) when merge is disabled; status.form says which and why."""

    @model_validator(mode="after")
    def _exactly_one(self) -> ModelSource:
        n = sum(x is not None for x in (self.fine_tuned_model_ref, self.quantization_job_ref, self.uri))
        if n != 1:
            raise ValueError(
                "set exactly one of model.fineTunedModelRef, model.quantizationJobRef or model.uri"
            )
        if self.serve is not None and self.fine_tuned_model_ref is None:
            raise ValueError(
                "model.serve chooses between a FineTunedModel's merged model and its adapter: it needs "
                "model.fineTunedModelRef"
            )
        return self


class Resources(Model):
    """Compute for each replica."""

    gpus: int | None = Field(default=None, ge=0, le=64)
    """GPUs per replica (nvidia.com/gpu). Unset: vLLM gets tensorParallelSize x pipelineParallelSize (per node
    when nodes > 1) and llama.cpp none. 0 runs vLLM without GPUs (tensor and pipeline parallel size 1 only);
    llama.cpp with GPUs also needs llamacpp.gpuLayers."""
    gpu_product: Str | None = None
    """Required nvidia.com/gpu.product node label value (e.g. NVIDIA-H100-80GB-HBM3)."""
    cpu: Quantity | None = None
    """CPU request and limit."""
    memory: Quantity | None = None
    """Memory request and limit."""


class VllmSpec(Model):
    """vLLM engine settings."""

    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    """GPUs one model replica is split across (must divide the attention head count)."""
    pipeline_parallel_size: int = Field(default=1, ge=1, le=64)
    """Pipeline stages (with nodes > 1, across nodes)."""
    nodes: int = Field(default=1, ge=1, le=64)
    """Nodes per replica; above 1 the service is rendered as a LeaderWorkerSet."""
    max_model_len: int | None = Field(default=None, ge=16, le=10_000_000)
    """Context length; lower it to fit the KV cache in memory."""
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    """Activation dtype."""
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    """Fraction of GPU memory vLLM may use."""
    served_model_name: ServedName | None = None
    """Name clients put in the request's model field; defaults to the resource name."""
    enable_prefix_caching: bool | None = None
    """Pass --enable-prefix-caching / --no-enable-prefix-caching."""
    shutdown_timeout_seconds: int = Field(default=30, ge=0, le=3600)
    """How long in-flight requests may finish after SIGTERM."""
    startup_timeout_seconds: int = Field(default=1800, ge=60, le=14400)
    """How long the model may take to load before the startup probe gives up."""
    extra_args: list[ExtraArg] | None = Field(default=None, max_length=LIST_MAX)
    """Further vLLM arguments, appended verbatim."""


class LlamaCppSpec(Model):
    """llama.cpp server settings."""

    ctx_size: int = Field(default=4096, ge=16, le=1_048_576)
    """Context size (--ctx-size)."""
    parallel: int = Field(default=4, ge=1, le=256)
    """Concurrent request slots (--parallel)."""
    threads: int | None = Field(default=None, ge=1, le=1024)
    """CPU threads; defaults to the CPU limit."""
    gpu_layers: int | None = Field(default=None, ge=0, le=100_000)
    """Layers offloaded to GPUs (--n-gpu-layers; 999 offloads all). Required with resources.gpus, which also
    needs a llama-server image built with CUDA (spec.image); without it llama.cpp runs on CPU."""
    extra_args: list[ExtraArg] | None = Field(default=None, max_length=LIST_MAX)
    """Further llama-server arguments, appended verbatim."""


class LoraAdapterRef(Model):
    """One LoRA adapter served on top of the base model, selected by name in the request."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.fineTunedModelRef) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
                    "message": "set exactly one of fineTunedModelRef or uri for each adapter",
                }
            ]
        }
    }

    name: ServedName
    """Name clients put in the request's model field to use this adapter."""
    fine_tuned_model_ref: ObjectRef | None = None
    """A FineTunedModel whose adapter is served (its base must be this service's base)."""
    uri: Uri | None = None
    """The adapter folder: pvc://claim/path or file:// (vLLM reads it where it is), hf://org/name (vLLM downloads
    it), or s3://bucket/prefix and hf://org/name@revision, which the adapter loader beside vLLM in each Pod
    downloads into its cache, checks and publishes under a content-addressed path before vLLM loads it
    (lora.dynamic only)."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials for a private s3:// or hf:// adapter (only this adapter is read with it)."""
    digest: AdapterDigest | None = None
    """The adapter's recorded digest (sha256:<64 hex>, as a FineTunedModel's status.adapterDigest or a manifest
    gives it): the loader refuses any other content (DigestMismatch). s3:// and hf://...@revision only."""

    @model_validator(mode="after")
    def _fetched_fields(self) -> LoraAdapterRef:
        fetched = self.uri is not None and fetched_by_loader(self.uri)
        if self.digest is not None and not fetched:
            raise ValueError(
                f"adapter {self.name!r}: digest is checked by the adapter loader, which fetches s3:// and "
                "hf://...@revision adapters only (a FineTunedModel's adapter carries its digest already)"
            )
        if self.token_secret_ref is not None and not (self.uri or "").startswith(("s3://", "hf://")):
            raise ValueError(
                f"adapter {self.name!r}: tokenSecretRef applies to s3:// and hf:// adapters only"
            )
        return self

    @model_validator(mode="after")
    def _exactly_one(self) -> LoraAdapterRef:
        if (self.fine_tuned_model_ref is None) == (self.uri is None):
            raise ValueError(f"adapter {self.name!r}: set exactly one of fineTunedModelRef or uri")
        return self


class AllowedNamespaces(Model):
    """Which namespaces' LoRAAdapters may attach (as Gateway API's allowedRoutes.namespaces)."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.from != 'Selector' || has(self.selector)",
                    "message": "from: Selector needs a selector",
                }
            ]
        }
    }

    from_: Literal["Same", "All", "Selector"] = Field(default="Same", alias="from")
    """Same: the service's own namespace; All: every namespace; Selector: namespaces whose labels match."""
    selector: dict[str, Str] | None = Field(default=None, max_length=32)
    """Labels a namespace must carry (matchLabels), with from: Selector."""

    @model_validator(mode="after")
    def _selector(self) -> AllowedNamespaces:
        if self.from_ == "Selector" and not self.selector:
            raise ValueError("from: Selector needs a selector (the labels an allowed namespace carries)")
        return self


class AllowedAdapters(Model):
    """LoRAAdapters (their own kind, in the teams' namespaces) that may attach to this service."""

    namespaces: AllowedNamespaces = Field(default_factory=AllowedNamespaces)
    token_secret_ref: SecretKeyRef | None = None
    """A Secret of this service's namespace that attached adapters naming no Secret of their own are read with
    (an s3:// bucket's AWS_* keys and endpoint; for hf:// the key named here, and HF_ENDPOINT for a mirror). An
    adapter of another namespace cannot name one (the service's Pods cannot read it): this is how a platform
    lends read access to the buckets its teams publish adapters to."""


class LoraSpec(Model):
    """Multi-LoRA serving: one base model, many adapters chosen per request by name."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.adapters.all(a, self.adapters.exists_one(b, b.name == a.name))",
                    "message": "adapter names must be unique",
                }
            ]
        }
    }

    adapters: list[LoraAdapterRef] = Field(default_factory=list, max_length=512)
    """Adapters given to vLLM at startup (--lora-modules) and, when dynamic, loaded into running Pods."""
    max_loras: int = Field(default=4, ge=1, le=512)
    """Adapters in one batch on the GPU (--max-loras)."""
    max_lora_rank: LoraRank = 16
    """Largest adapter rank (--max-lora-rank); vLLM accepts only 1, 8, 16, 32, 64, 128, 256, 320, 512."""
    max_cpu_loras: int | None = Field(default=None, ge=1, le=4096)
    """Adapters cached in CPU memory (--max-cpu-loras)."""
    dynamic: bool = True
    """Load and unload adapters on running Pods through vLLM's runtime API instead of restarting them."""
    allowed_adapters: AllowedAdapters | None = None
    """Let LoRAAdapters attach to this service (unset: none may). Each Pod then runs the adapter loader."""
    cache_size: Quantity = "10Gi"
    """The most each Pod's adapter loader keeps of s3:// and hf://...@revision adapters (its emptyDir); an adapter
    that does not fit beside the ones in use is refused (CacheFull)."""

    @model_validator(mode="after")
    def _unique(self) -> LoraSpec:
        names = [a.name for a in self.adapters]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"adapter names must be unique: {', '.join(dupes)}")
        fetched = [a.name for a in self.adapters if a.uri and fetched_by_loader(a.uri)]
        if fetched and not self.dynamic:
            raise ValueError(
                f"adapters {', '.join(fetched)} come through the adapter loader (s3://, hf://...@revision), which "
                "hands them to vLLM's runtime API: they need lora.dynamic true"
            )
        return self


class ServicePort(Model):
    """How the endpoint is exposed inside the cluster."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = "ClusterIP"
    port: int = Field(default=8000, ge=1, le=65535)


class Autoscaling(Model):
    """Replicas follow vLLM's own load metrics, through KEDA or a HorizontalPodAutoscaler; both scale the
    InferenceService itself (its scale subresource), and the operator carries the count to its Pods."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                },
                {
                    "rule": "self.minReplicas >= 1 || self.engine == 'keda'",
                    "message": "minReplicas 0 (scale to zero) needs engine keda",
                },
                {
                    "rule": "!has(self.activationValue) || self.engine == 'keda'",
                    "message": "activationValue is a KEDA setting: it needs engine keda",
                },
                {
                    "rule": "self.metric != 'kvCacheUsage' || double(self.targetValue) <= 1.0",
                    "message": "kvCacheUsage is a fraction: targetValue must be at most 1",
                },
            ]
        }
    }

    engine: Literal["keda", "hpa"]
    """keda: a KEDA ScaledObject querying Prometheus (scale to zero possible). hpa: an autoscaling/v2
    HorizontalPodAutoscaler reading a Pods metric served by a Prometheus adapter."""
    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas; 0 (engine keda only) scales to zero when idle."""
    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas; status reports what that costs in GPUs (maxReplicas x GPUs per replica)."""
    metric: Literal["requestsWaiting", "requestsRunning", "kvCacheUsage"] = "requestsWaiting"
    """The vLLM metric to hold at targetValue per replica: vllm:num_requests_waiting, vllm:num_requests_running
    or vllm:kv_cache_usage_perc (a fraction, 0 to 1)."""
    target_value: float = Field(gt=0, le=100_000)
    """Average of the metric per replica the autoscaler aims for."""
    activation_value: float | None = Field(default=None, ge=0, le=100_000)
    """engine keda: the metric's value above which a service scaled to zero gets its first replica back
    (KEDA's activationThreshold; default 0)."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """How long load must stay low before replicas are removed (a loaded model is slow to bring back)."""

    @model_validator(mode="after")
    def _bounds(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("minReplicas must not exceed maxReplicas")
        if self.min_replicas == 0 and self.engine != "keda":
            raise ValueError("minReplicas 0 (scale to zero) needs engine keda")
        if self.activation_value is not None and self.engine != "keda":
            raise ValueError("activationValue is a KEDA setting: it needs engine keda")
        if self.metric == "kvCacheUsage" and self.target_value > 1:
            raise ValueError("kvCacheUsage is a fraction: targetValue must be at most 1")
        return self


class ParentGateway(Model):
    """The Gateway an HTTPRoute attaches to."""

    name: DNSName
    namespace: DNSName | None = None
    """Default: the InferenceService's namespace."""
    section_name: DNSName | None = None
    """One listener of the Gateway (default: all that admit the route)."""


class EndpointPicker(Model):
    """The endpoint picker Service the user installs (e.g. llm-d's inference scheduler) in the InferenceService's
    namespace."""

    name: DNSName
    port: int = Field(default=9002, ge=1, le=65535)
    """Its gRPC ext-proc port."""
    failure_mode: Literal["FailOpen", "FailClose"] = "FailClose"
    """What the gateway does when the picker does not answer: route anyway, or refuse the request."""


class Routing(Model):
    """LoRA-affinity and prefix-aware routing by an existing Gateway: an InferencePool (Gateway API Inference
    Extension) over the server Pods, and an HTTPRoute from the Gateway to it. The plain Service stays."""

    gateway: ParentGateway
    endpoint_picker: EndpointPicker | None = None
    """The endpoint picker Service (in this namespace) the InferencePool points at. Default: the operator config's
    routing.endpointPicker; a service with neither is refused (Ready=False, InvalidSpec)."""
    hostnames: list[DNSName] | None = Field(default=None, max_length=16)
    """Host names the route answers (default: those of the Gateway's listener)."""
    path: Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^/")] = "/"
    """Path prefix routed to the pool."""


class InferenceServiceSpec(Scheduling):
    """Desired state of an InferenceService."""

    model_config = Scheduling.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.runtime == 'vllm' || !has(self.lora) || size(self.lora.adapters) == 0",
                    "message": "LoRA adapters are served by the vllm runtime only",
                },
                {
                    "rule": "self.runtime != 'vllm' || !has(self.resources.gpus) || "
                    "self.resources.gpus == (has(self.vllm) ? self.vllm.tensorParallelSize * "
                    "(self.vllm.nodes > 1 ? 1 : self.vllm.pipelineParallelSize) : 1) || "
                    "(self.resources.gpus == 0 && (!has(self.vllm) || (self.vllm.tensorParallelSize == 1 && "
                    "self.vllm.pipelineParallelSize == 1 && self.vllm.nodes == 1)))",
                    "message": "resources.gpus must equal vllm.tensorParallelSize x pipelineParallelSize "
                    "(leave it unset for that default); 0 only without tensor or pipeline parallelism",
                },
                {
                    "rule": "self.runtime != 'llamacpp' || !has(self.resources.gpus) || self.resources.gpus == 0 "
                    "|| (has(self.llamacpp) && has(self.llamacpp.gpuLayers))",
                    "message": "llama.cpp on GPUs needs llamacpp.gpuLayers (and a CUDA llama-server image)",
                },
                {
                    "rule": "self.runtime == 'vllm' || !has(self.autoscaling)",
                    "message": "autoscaling follows vLLM's metrics: it needs the vllm runtime",
                },
                {
                    "rule": "self.runtime == 'vllm' || !has(self.model.serve) || self.model.serve == 'merged'",
                    "message": "serving an adapter through the LoRA path needs the vllm runtime: set model.serve "
                    "to merged",
                },
            ]
        }
    }

    model: ModelSource
    """What to serve."""
    runtime: Literal["vllm", "llamacpp"] = "vllm"
    """vllm (GPU; the upstream image) or llamacpp (GGUF on CPU)."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Pod count (scale subresource: kubectl scale and HPA work)."""
    resources: Resources = Field(default_factory=Resources)
    """Compute per replica."""
    vllm: VllmSpec | None = None
    """vLLM settings."""
    llamacpp: LlamaCppSpec | None = None
    """llama.cpp settings."""
    lora: LoraSpec | None = None
    """Multi-LoRA settings."""
    api_key_secret_ref: SecretKeyRef | None = None
    """Secret with the API key clients must send as a bearer token."""
    image: LongStr | None = None
    """Server image; defaults to the operator's configured vLLM or llama.cpp image."""
    env: list[EnvVar] | None = Field(default=None, max_length=LIST_MAX)
    """Extra environment for the server container: names on the operator config's allow-list (allow.env), never
    one the operator sets; a value from a Secret only from a Secret listed in envSecrets."""
    env_secrets: list[DNSName] | None = Field(default=None, max_length=16)
    """Secrets whose keys env may read (valueFrom.secretKeyRef). A Secret named elsewhere in the spec (the model's
    token, the API key) serves that purpose only."""
    runtime_class_name: DNSName | None = None
    """RuntimeClass of the Pods (e.g. nvidia)."""
    queue_name: DNSName | None = None
    """Kueue LocalQueue; copied to the kueue.x-k8s.io/queue-name label."""
    service: ServicePort = Field(default_factory=ServicePort)
    """The Service in front of the Pods."""
    client_namespaces: list[DNSName] | None = Field(default=None, max_length=64)
    """Namespaces whose Pods may reach the server while runtime LoRA loading is on without an API key. The
    operator then renders a NetworkPolicy admitting only these, the service's own namespace and the operator's:
    anyone who reaches the port could load and unload adapters. With apiKeySecretRef no policy is rendered."""

    autoscaling: Autoscaling | None = None
    """Scale on vLLM's load metrics (KEDA or HPA); replicas is then the autoscaler's to set. Off by default."""
    routing: Routing | None = None
    """Route through a Gateway with an InferencePool and its endpoint picker. Off by default."""

    @model_validator(mode="after")
    def _consistent(self) -> InferenceServiceSpec:
        if self.runtime == "llamacpp" and self.lora is not None and self.lora.adapters:
            raise ValueError("LoRA adapters are served by the vllm runtime only")
        if self.runtime != "vllm" and self.autoscaling is not None:
            raise ValueError("autoscaling follows vLLM's metrics: it needs the vllm runtime")
        if self.runtime != "vllm" and self.model.serve in ("lora", "auto"):
            raise field_errors("InferenceServiceSpec", (("model", "serve"), "serving an adapter through the LoRA "
                               "path needs the vllm runtime: set model.serve to merged", self.model.serve))  # fmt: skip
        errors = self._gpu_problems()
        if errors:
            raise field_errors("InferenceServiceSpec", *errors)
        return self

    def _gpu_problems(self) -> list[tuple[tuple[str | int, ...], str, Any]]:
        """GPU counts that cannot work, each at the field to change."""
        gpus = self.resources.gpus
        at = ("resources", "gpus")
        if self.runtime == "llamacpp":
            layers = self.llamacpp_settings().gpu_layers
            if gpus and layers is None:
                return [(at, f"llama.cpp runs on CPU unless told otherwise: to use {gpus} GPU(s) set "
                         "llamacpp.gpuLayers (layers to offload, 999 for all) and an image with a CUDA build of "
                         "llama-server (spec.image); or remove resources.gpus", gpus)]  # fmt: skip
            if layers is not None and not gpus:
                return [
                    (("llamacpp", "gpuLayers"), "offloading layers needs GPUs: set resources.gpus", layers)
                ]
            return []
        v = self.vllm_settings()
        per_pod = self.vllm_gpus_needed()
        if v.nodes > 1 and v.pipeline_parallel_size != v.nodes:
            return [(("vllm", "pipelineParallelSize"), f"with {v.nodes} nodes the pipeline runs one stage per "
                     f"node: set it to {v.nodes}", v.pipeline_parallel_size)]  # fmt: skip
        if gpus is None or gpus == per_pod:
            return []
        if gpus == 0:
            if v.nodes > 1:
                return [(at, "multi-node serving (vllm.nodes > 1) needs GPUs on every node: set resources.gpus "
                         f"to {per_pod} or leave it unset", gpus)]  # fmt: skip
            if per_pod > 1:
                return [(at, f"0 GPUs cannot run vllm.tensorParallelSize ({v.tensor_parallel_size}) x "
                         f"pipelineParallelSize ({v.pipeline_parallel_size}): set resources.gpus to {per_pod} or "
                         "leave it unset", gpus)]  # fmt: skip
            return []
        return [(at, f"{gpus} GPUs per Pod, but vllm.tensorParallelSize x pipelineParallelSize needs {per_pod} "
                 "(leave resources.gpus unset for that default)", gpus)]  # fmt: skip

    def vllm_gpus_needed(self) -> int:
        """GPUs one vLLM Pod uses for its share of the model: TP x PP, or TP when each node runs one stage."""
        v = self.vllm_settings()
        return v.tensor_parallel_size * (1 if v.nodes > 1 else v.pipeline_parallel_size)

    def gpus_per_pod(self) -> int:
        """resources.gpus, or when unset the runtime's default: vLLM's parallelism, none for llama.cpp."""
        if self.resources.gpus is not None:
            return self.resources.gpus
        return 0 if self.runtime == "llamacpp" else self.vllm_gpus_needed()

    def vllm_settings(self) -> VllmSpec:
        return self.vllm or VllmSpec()

    def llamacpp_settings(self) -> LlamaCppSpec:
        return self.llamacpp or LlamaCppSpec()


class AdapterState(Model):
    """Where one adapter is served."""

    name: ServedName
    digest: Str | None = None
    ready_pods: int = 0
    """Ready Pods whose /v1/models lists this adapter."""
    state: Literal["Ready", "Loading", "Failed", "Pending"] = "Pending"
    message: Message | None = None


class AttachedAdapter(Model):
    """A LoRAAdapter that asked to attach to this service, and whether it was accepted."""

    adapter: Str
    """namespace/name of the LoRAAdapter."""
    served_name: Str
    accepted: bool
    reason: ShortStr
    message: Message | None = None


class PodAdapters(Model):
    """A ready Pod that does not serve what it should (from its /v1/models), and why."""

    pod: DNSName
    ready_adapters: int = 0
    """Adapters of the spec this Pod serves."""
    message: Str = ""
    """What is missing, failing or still being unloaded there, in a line."""


class ServedForm(Model):
    """Which form of a FineTunedModel the service serves, and why."""

    serve: Literal["merged", "lora"]
    reason: Message


class InferenceServiceStatus(BaseStatus):
    """Observed state of an InferenceService."""

    url: LongStr | None = None
    """In-cluster base URL of the OpenAI-compatible API (…/v1)."""
    served_models: list[ServedName] | None = Field(default=None, max_length=1024)
    """Names accepted in the request's model field: the base name and each adapter."""
    replicas: int | None = None
    ready_replicas: int | None = None
    selector: Str | None = None
    """Label selector of the Pods (for the scale subresource and HPA)."""
    model_digest: Str | None = None
    """Digest of the served model artifact; a new upstream digest rolls the Pods."""
    adapters: list[AdapterState] | None = Field(default=None, max_length=1024)
    """Per adapter: on how many ready Pods it is served."""
    pods: list[PodAdapters] | None = Field(default=None, max_length=10)
    """The first Pods that do not serve every adapter, and why; Pods that do are only counted (adapters[])."""
    attached_adapters: list[AttachedAdapter] | None = Field(default=None, max_length=1024)
    """LoRAAdapters that asked to attach (spec.lora.allowedAdapters), accepted or refused; accepted ones are also
    in adapters[] under their served names."""
    autoscaler: ShortStr | None = None
    """The autoscaler that sets replicas and its bounds (`hpa 1-4`, `keda 0-8`); unset: spec.replicas holds."""
    max_gpus: int | None = None
    """With autoscaling: the most GPUs the service may take (maxReplicas x GPUs per replica)."""
    form: ServedForm | None = None
    """With model.fineTunedModelRef: merged, or the base with the adapter as LoRA, and why (model.serve)."""


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Runtime", "type": "string", "jsonPath": ".spec.runtime"},
    {"name": "Replicas", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Autoscaler", "type": "string", "jsonPath": ".status.autoscaler"},
    {"name": "MaxGPUs", "type": "integer", "jsonPath": ".status.maxGpus", "priority": 1},
    {"name": "Form", "type": "string", "jsonPath": ".status.form.serve", "priority": 1},
    {"name": "URL", "type": "string", "jsonPath": ".status.url"},
    {
        "name": "Adapters",
        "type": "string",
        "jsonPath": '.status.conditions[?(@.type=="AdaptersReady")].status',
        "priority": 1,
    },
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
