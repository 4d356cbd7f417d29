"""QuantizationJob: AWQ (GPU serving with vLLM) or GGUF (llama.cpp) quantization, with a quality gate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from tuneops.api.common import (
    BaseStatus,
    JobTemplate,
    Model,
    ObjectRef,
    OutputSpec,
    SecretKeyRef,
    Uri,
)

KIND = "QuantizationJob"
PLURAL = "quantizationjobs"
SINGULAR = "quantizationjob"
SHORT_NAMES = ["qjob"]

# llama.cpp's common quantization types (no importance-matrix types: those need calibration llama.cpp does not do here).
GGUF_TYPES = (
    "Q2_K",
    "Q3_K_S",
    "Q3_K_M",
    "Q3_K_L",
    "Q4_0",
    "Q4_1",
    "Q4_K_S",
    "Q4_K_M",
    "Q5_0",
    "Q5_1",
    "Q5_K_S",
    "Q5_K_M",
    "Q6_K",
    "Q8_0",
)
GgufType = Literal[
    "Q2_K", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_0", "Q4_1", "Q4_K_S", "Q4_K_M",
    "Q5_0", "Q5_1", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
]  # fmt: skip


class SourceSpec(Model):
    """The model to quantize: exactly one of fineTunedModelRef or uri."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.fineTunedModelRef) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
                    "message": "set exactly one of source.fineTunedModelRef or source.uri",
                }
            ]
        }
    }

    fine_tuned_model_ref: ObjectRef | None = None
    """A FineTunedModel whose merged artifact is quantized (the Job waits until it is Ready)."""
    uri: Uri | None = None
    """A Hugging Face-format model folder."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials for reading the source: a private uri, or where the referenced
    FineTunedModel wrote its merged model."""

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        if (self.fine_tuned_model_ref is None) == (self.uri is None):
            raise ValueError("set exactly one of source.fineTunedModelRef or source.uri")
        return self


class CalibrationSpec(Model):
    """Calibration data for AWQ."""

    dataset_uri: Uri | None = None
    """Text or JSON lines (a "text" field per line); defaults to a small built-in set."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials for a private hf:// or s3:// datasetUri."""
    samples: int = Field(default=128, ge=1, le=4096)
    """Number of calibration samples."""
    max_seq_len: int = Field(default=512, ge=16, le=32768)
    """Tokens per calibration sample."""


class AwqSpec(Model):
    """AWQ 4-bit weight quantization (W4A16), served by vLLM on GPUs."""

    backend: Literal["llm-compressor", "autoawq"] = "llm-compressor"
    """llm-compressor writes compressed-tensors (vLLM's native format); autoawq is deprecated upstream and opt-in."""
    bits: Literal[4, 8] = 4
    """Weight bits."""
    group_size: Literal[32, 64, 128] = 128
    """Quantization group size."""
    zero_point: bool = True
    """Asymmetric quantization with zero points."""
    version: Literal["gemm", "gemv"] = "gemm"
    """AutoAWQ kernel layout (ignored by llm-compressor)."""
    calibration: CalibrationSpec = Field(default_factory=CalibrationSpec)
    """Calibration data."""


DEFAULT_GGUF_TYPES: tuple[GgufType, ...] = ("Q4_K_M",)


class GgufSpec(Model):
    """GGUF conversion and quantization with llama.cpp, for CPU and edge serving."""

    outtype: Literal["f16", "bf16", "f32", "q8_0"] = "f16"
    """Precision of the converted (unquantized) GGUF."""
    quant_types: list[GgufType] = Field(
        default_factory=lambda: list(DEFAULT_GGUF_TYPES), min_length=1, max_length=14
    )
    """Quantization types to produce, one file each."""


class QualityGateSpec(Model):
    """Blocks promotion when quality drops: perplexity of the quantized model vs its source on the same text."""

    max_perplexity_increase_pct: float = Field(ge=0, le=1000)
    """Largest allowed perplexity increase, in percent of the source model's."""
    eval_dataset_uri: Uri | None = None
    """Evaluation text (text or JSON lines); defaults to a small built-in set."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials for a private hf:// or s3:// evalDatasetUri."""
    samples: int = Field(default=64, ge=1, le=4096)
    """Number of evaluation samples."""


class QuantizationJobSpec(Model):
    """Desired state of a QuantizationJob."""

    model_config = Model.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                {
                    "rule": "self.method == 'awq' || !has(self.awq)",
                    "message": "awq settings need method: awq",
                },
                {
                    "rule": "self.method == 'gguf' || !has(self.gguf)",
                    "message": "gguf settings need method: gguf",
                },
                {
                    "rule": "self.method == oldSelf.method",
                    "message": "method is immutable; create a new QuantizationJob",
                },
            ]
        }
    }

    source: SourceSpec
    """What to quantize."""
    method: Literal["awq", "gguf"]
    """awq for vLLM on GPUs, gguf for llama.cpp."""
    awq: AwqSpec | None = None
    """AWQ settings (method: awq)."""
    gguf: GgufSpec | None = None
    """GGUF settings (method: gguf)."""
    quality_gate: QualityGateSpec | None = None
    """When set, an evaluate Job compares perplexity with the source and fails the resource above the limit."""
    output: OutputSpec | None = None
    """Where the quantized model goes; defaults to the operator's artifact root
    (<root>/<namespace>/quantizationjobs/<name>)."""
    job: JobTemplate = Field(default_factory=JobTemplate)
    """Template for the quantize and evaluate Jobs."""

    @model_validator(mode="after")
    def _method_settings(self) -> QuantizationJobSpec:
        if self.method == "awq" and self.gguf is not None:
            raise ValueError("gguf settings need method: gguf")
        if self.method == "gguf" and self.awq is not None:
            raise ValueError("awq settings need method: awq")
        return self

    def awq_settings(self) -> AwqSpec:
        return self.awq or AwqSpec()

    def gguf_settings(self) -> GgufSpec:
        return self.gguf or GgufSpec()


class QualityStatus(Model):
    """Measured quality of the quantized model."""

    perplexity: float | None = None
    reference_perplexity: float | None = None
    increase_pct: float | None = None
    max_increase_pct: float | None = None
    passed: bool | None = None


class QuantizationJobStatus(BaseStatus):
    """Observed state of a QuantizationJob."""

    source_digest: str | None = Field(default=None, max_length=253)
    """Digest of the source artifact this quantization was made from."""
    quality: QualityStatus | None = None
    """Quality gate measurements."""


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Method", "type": "string", "jsonPath": ".spec.method"},
    {"name": "PPL+%", "type": "number", "jsonPath": ".status.quality.increasePct"},
    {"name": "Artifact", "type": "string", "jsonPath": ".status.artifact.uri", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]
