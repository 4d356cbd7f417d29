"""FineTunedModel: a base model plus a LoRA adapter, optionally merged into one model by a Job."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneops.api.common import (
    LIST_MAX,
    BaseStatus,
    JobTemplate,
    Model,
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


class FineTunedModelSpec(Model):
    """Desired state of a FineTunedModel."""

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


class FineTunedModelStatus(BaseStatus):
    """Observed state of a FineTunedModel."""

    adapter: AdapterFacts | None = None
    """Facts about the adapter, from the inspect Job."""
    adapter_digest: Str | None = None
    """Content digest of the adapter files."""


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Base", "type": "string", "jsonPath": ".spec.baseModel.uri"},
    {"name": "Merge", "type": "boolean", "jsonPath": ".spec.merge.enabled"},
    {"name": "Rank", "type": "integer", "jsonPath": ".status.adapter.rank", "priority": 1},
    {"name": "Artifact", "type": "string", "jsonPath": ".status.artifact.uri", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
