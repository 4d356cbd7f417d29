"""FineTunedModel: a base model plus a LoRA adapter, optionally merged into one model by a Job."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from tuneops.api.common import (
    LIST_MAX,
    BaseStatus,
    JobTemplate,
    Message,
    Model,
    ObjectRef,
    OutputSpec,
    SecretKeyRef,
    ShortStr,
    Str,
    Uri,
    field_errors,
)

KIND = "FineTunedModel"
PLURAL = "finetunedmodels"
SINGULAR = "finetunedmodel"
SHORT_NAMES = ["ftm"]

Dtype = Literal["auto", "float16", "bfloat16", "float32"]


class BaseModelSpec(Model):
    """The model the adapter was trained on."""

    uri: Uri
    """Where the base model's weights are (a Hugging Face-format folder)."""
    revision: Str | None = None
    """Revision (branch, tag or commit) for hf:// URIs; pinned into the artifact manifest. The same as an
    @revision in the URI; setting both is refused."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials for a private hf:// or s3:// base model (only the base model is read with it;
    passed as env, never as an argument)."""

    @model_validator(mode="after")
    def _one_revision(self) -> BaseModelSpec:
        if self.revision is None:
            return self
        scheme, _, rest = self.uri.partition("://")
        if scheme != "hf":
            raise field_errors("BaseModelSpec", (("revision",), f"revision applies to hf:// models only; "
                               f"{scheme}:// has none: remove baseModel.revision", self.revision))  # fmt: skip
        pinned = rest.partition("@")[2].split("/")[0] if "@" in rest else None
        if pinned is not None and pinned != self.revision:
            raise field_errors("BaseModelSpec", (("revision",), f"baseModel.uri pins revision {pinned!r} and "
                               f"baseModel.revision says {self.revision!r}: set the revision in one place", self.revision))  # fmt: skip
        return self


class AdapterSpec(Model):
    """The LoRA adapter (peft format: adapter_config.json + adapter_model.safetensors)."""

    uri: Uri
    """Where the adapter is."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials for a private hf:// or s3:// adapter (only the adapter is read with it)."""


class MergeSpec(Model):
    """Merging the adapter into the base weights (peft merge_and_unload semantics, in full precision)."""

    enabled: bool = True
    """Run the merge Job. When false the resource only inspects the adapter (for multi-LoRA serving)."""
    dtype: Dtype = "auto"
    """Precision of the merged weights. Merging happens in float32 and is cast once to this dtype. auto keeps
    the base model's (its config.json torch_dtype / dtype; float16 when it names none or another type); the
    dtype used is recorded in the artifact manifest and the merge step's result."""
    device: Literal["cpu", "gpu"] = "cpu"
    """Where the merge runs. The streaming merge on CPU needs memory for one shard, not the whole model."""
    method: Literal["stream", "peft"] = "stream"
    """stream merges shard by shard (bit-identical to peft); peft loads the whole model (DoRA and other adapter types)."""


class BenchmarkSpec(Model):
    """Merge or serve as LoRA, measured: the merged model against the base with the adapter through vLLM's LoRA
    path, on the hardware `job` describes (copy the target service's resources and placement there), and a
    recommendation in status. vLLM's own benchmark (`vllm bench serve`) drives both."""

    enabled: bool = False
    """Run the benchmark Job once the merge is done (a new merge, or a new spec here, runs it again)."""
    concurrency: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default_factory=lambda: [1, 8], min_length=1, max_length=8
    )
    """Concurrency levels (requests in flight); the recommendation reads the highest."""
    input_len: int = Field(default=256, ge=1, le=131072)
    """Prompt length in tokens (random tokens, or the dataset's prompts cut to it)."""
    output_len: int = Field(default=128, ge=1, le=32768)
    """Output tokens per request (generation does not stop early)."""
    prompts: int = Field(default=64, ge=1, le=100000)
    """Requests at each concurrency level."""
    dataset: Uri | None = None
    """A ShareGPT-format JSON file (pvc:// or file://) to take prompts from instead of random tokens."""
    adapters: int = Field(default=1, ge=1, le=1024)
    """How many adapters like this one a shared LoRA deployment would serve. Above 1 the LoRA server holds that
    many copies of the adapter (at most 8), each a LoRA of its own, and the requests go to them in turn, as a
    shared deployment's do; the recommendation weighs one shared deployment against this many merged ones."""
    max_model_len: int = Field(default=2048, ge=16, le=10_000_000)
    """Context length of both servers (must cover inputLen + outputLen)."""
    service_ref: ObjectRef | None = None
    """The InferenceService the measurement stands for: the Pod takes its GPUs (and GPU product), CPU, memory,
    node selector, tolerations, affinity and priority class, so both run on the same class of hardware. Values
    set in `job` win. A change to that service's spec is measured again."""
    job: JobTemplate = Field(default_factory=JobTemplate)
    """Resources and placement of the benchmark Pod (over the service's, with serviceRef). The image defaults to
    the operator's vLLM image."""

    @model_validator(mode="after")
    def _fits(self) -> BenchmarkSpec:
        if self.input_len + self.output_len > self.max_model_len:
            raise field_errors("BenchmarkSpec", (("maxModelLen",), f"inputLen + outputLen "
                               f"({self.input_len + self.output_len}) exceeds maxModelLen ({self.max_model_len})",
                               self.max_model_len))  # fmt: skip
        if self.dataset is not None and self.dataset.partition("://")[0] not in ("pvc", "file"):
            raise field_errors("BenchmarkSpec", (("dataset",), "the benchmark dataset must be a pvc:// or "
                               "file:// URI", self.dataset))  # fmt: skip
        return self


class FineTunedModelSpec(Model):
    """Desired state of a FineTunedModel."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.benchmark) || !has(self.benchmark.enabled) || !self.benchmark.enabled || "
                    "!has(self.merge) || !has(self.merge.enabled) || self.merge.enabled",
                    "message": "the benchmark compares the merged model with the LoRA path: it needs "
                    "merge.enabled true",
                },
            ]
        }
    }

    base_model: BaseModelSpec
    """The base model."""
    adapter: AdapterSpec
    """The LoRA adapter trained on the base model."""
    merge: MergeSpec = Field(default_factory=MergeSpec)
    """Whether and how to merge the adapter into the base."""
    output: OutputSpec | None = None
    """Where the merged model goes; defaults to the operator's artifact root
    (<root>/<namespace>/finetunedmodels/<name>)."""
    job: JobTemplate = Field(default_factory=JobTemplate)
    """Template for the inspect and merge Jobs."""
    benchmark: BenchmarkSpec | None = None
    """Measure the merged model against the LoRA path and recommend one (off unless enabled)."""

    @model_validator(mode="after")
    def _benchmark_needs_merge(self) -> FineTunedModelSpec:
        if self.benchmark is not None and self.benchmark.enabled and not self.merge.enabled:
            raise field_errors("FineTunedModelSpec", (("benchmark", "enabled"), "the benchmark compares the "
                               "merged model with the LoRA path: it needs merge.enabled true", True))  # fmt: skip
        return self


class AdapterFacts(Model):
    """What the inspect Job read from adapter_config.json."""

    type: ShortStr | None = None
    rank: int | None = None
    alpha: float | None = None
    rs_lora: bool | None = None
    use_dora: bool | None = None
    target_modules: list[ShortStr] | None = Field(default=None, max_length=LIST_MAX)
    modules_to_save: list[ShortStr] | None = Field(default=None, max_length=LIST_MAX)
    base_model_name: Str | None = None
    max_rank: int | None = None
    """Largest rank across rank_pattern (what vLLM's max_lora_rank must cover)."""


class BenchmarkFigures(Model):
    """One variant (merged, or the base with the adapter as LoRA) at one concurrency."""

    variant: Literal["merged", "lora"]
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    accelerator_s_per_thousand_tokens: float
    """GPU-seconds per 1,000 output tokens on GPUs (wall time x GPUs), CPU-seconds without."""


class BenchmarkStatus(Model):
    """What the benchmark Job measured, and what it recommends."""

    job: Str | None = None
    """The Job that measured it."""
    recommendation: Literal["merged", "lora"] | None = None
    """merged: deploy the merged model; lora: serve the adapter on a shared base."""
    reason: Message | None = None
    """The recommendation's reason, in numbers."""
    lora_throughput_ratio: float | None = None
    """LoRA output tokens/s over the merged model's, at the highest concurrency."""
    quality_gap: float | None = None
    """Largest log-probability difference between the two on the fixed prompt set (the check's limit is 0.1)."""
    accelerator: Literal["gpu", "cpu"] | None = None
    figures: list[BenchmarkFigures] | None = Field(default=None, max_length=32)


class FineTunedModelStatus(BaseStatus):
    """Observed state of a FineTunedModel."""

    adapter: AdapterFacts | None = None
    """Facts about the adapter, from the inspect Job."""
    adapter_digest: Str | None = None
    """Content digest of the adapter files."""
    benchmark: BenchmarkStatus | None = None
    """Merge or serve as LoRA, as measured by the benchmark Job (spec.benchmark)."""


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel.uri"},
    {"name": "Merge", "type": "boolean", "jsonPath": ".spec.merge.enabled"},
    {"name": "Serve", "type": "string", "jsonPath": ".status.benchmark.recommendation"},
    {
        "name": "LoRA-Throughput",
        "type": "number",
        "jsonPath": ".status.benchmark.loraThroughputRatio",
        "priority": 1,
    },
    {"name": "Rank", "type": "integer", "jsonPath": ".status.adapter.rank", "priority": 1},
    {"name": "Artifact", "type": "string", "jsonPath": ".status.artifact.uri", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
