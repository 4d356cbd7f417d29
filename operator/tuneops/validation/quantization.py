"""What a quantization step would refuse, known before its Job runs."""

from __future__ import annotations

from dataclasses import dataclass

from tuneops.api.conditions import Reason
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.render.types import Problem, ResolvedModel


@dataclass(frozen=True)
class AdapterOnly:
    """A FineTunedModel that publishes its adapter rather than a merged model (merge.enabled false)."""

    name: str


def check_quantizationjob(spec: QuantizationJobSpec, source: ResolvedModel) -> list[Problem]:
    """What can be known to fail before a Job runs: both methods start from a Hugging Face-format model."""
    if source.format == "hf":
        return []
    return [
        Problem(
            Reason.INVALID_SPEC,
            "spec.source",
            f"{spec.method} quantization needs an unquantized Hugging Face model; the source is {source.format}",
        )
    ]


def check_quantization_source(
    spec: QuantizationJobSpec, source: ResolvedModel | AdapterOnly
) -> list[Problem]:
    """Both quantization methods read a full Hugging Face model."""
    if isinstance(source, AdapterOnly):
        return [
            Problem(
                Reason.INVALID_SPEC,
                "spec.source.fineTunedModelRef",
                f"FineTunedModel {source.name} has merge.enabled false; quantization needs a merged model: "
                "enable the merge or point source.uri at a full model",
            )
        ]
    return check_quantizationjob(spec, source)
