"""References between resources, and the routing default: refusals that need no cluster.

The reconcilers call them with sources read from the referenced resources' status; `tuneops validate` and
`tuneops render` call the same functions with sources predicted from the other resources in the given files.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from tuneops.api.common import ObjectRef
from tuneops.api.conditions import Reason
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.api.loraadapter import LoRAAdapterSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.render.types import ModelFormat, Problem, ResolvedModel


@dataclass(frozen=True)
class Reference:
    """A reference from one tuneops resource to another, with the field that holds it."""

    field: str
    kind: str
    ref: ObjectRef

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.ref.name}"


def references(spec: BaseModel) -> list[Reference]:
    """Every reference in a spec, in field order."""
    out: list[Reference] = []
    if (
        isinstance(spec, FineTunedModelSpec)
        and spec.benchmark
        and spec.benchmark.enabled
        and spec.benchmark.service_ref
    ):
        out.append(Reference("spec.benchmark.serviceRef", "InferenceService", spec.benchmark.service_ref))
    if isinstance(spec, QuantizationJobSpec) and spec.source.fine_tuned_model_ref is not None:
        out.append(
            Reference("spec.source.fineTunedModelRef", "FineTunedModel", spec.source.fine_tuned_model_ref)
        )
    if isinstance(spec, LoRAAdapterSpec):
        ref = ObjectRef(name=spec.service_ref.name, namespace=spec.service_ref.namespace)
        out.append(Reference("spec.serviceRef", "InferenceService", ref))
    if isinstance(spec, InferenceServiceSpec):
        m = spec.model
        if m.fine_tuned_model_ref is not None:
            out.append(Reference("spec.model.fineTunedModelRef", "FineTunedModel", m.fine_tuned_model_ref))
        if m.quantization_job_ref is not None:
            out.append(Reference("spec.model.quantizationJobRef", "QuantizationJob", m.quantization_job_ref))
        for i, a in enumerate(spec.lora.adapters if spec.lora else []):
            if a.fine_tuned_model_ref is not None:
                field = f"spec.lora.adapters[{i}].fineTunedModelRef"
                out.append(Reference(field, "FineTunedModel", a.fine_tuned_model_ref))
    return out


def check_reference(
    reference: Reference, *, kind: str, namespace: str, name: str, config: OperatorConfig
) -> Problem | None:
    """Why the operator refuses to follow a reference of resource `kind` `namespace/name`, if it does."""
    target_ns = reference.ref.namespace or namespace
    # A LoRAAdapter attaches across namespaces by design: the service's allowedAdapters decides, not this switch.
    attaching = kind == "LoRAAdapter" and reference.kind == "InferenceService"
    if target_ns != namespace and not config.allow_cross_namespace_refs and not attaching:
        return Problem(
            Reason.INVALID_SPEC,
            reference.field,
            f"points to namespace {target_ns!r}; cross-namespace references are disabled (set "
            "allowCrossNamespaceRefs in the operator config (chart value config.allowCrossNamespaceRefs), "
            "or reference a resource in this namespace)",
        )
    if target_ns == namespace and reference.ref.name == name and reference.kind == kind:
        return Problem(Reason.INVALID_SPEC, reference.field, "points to this resource itself")
    return None


def uri_model(spec: InferenceServiceSpec) -> ResolvedModel:
    """A served model named by URI: GGUF when llama.cpp serves it or its name says so."""
    src = spec.model
    assert src.uri is not None
    gguf = spec.runtime == "llamacpp" or src.uri.lower().endswith(".gguf")
    fmt: ModelFormat = "gguf" if gguf else "hf"
    return ResolvedModel(uri=src.uri, format=fmt, token_secret=src.token_secret_ref)


def check_routing(spec: BaseModel, config: OperatorConfig) -> list[Problem]:
    """spec.routing needs an endpoint picker for its InferencePool: the spec's, or the operator config's default."""
    if not isinstance(spec, InferenceServiceSpec) or spec.routing is None:
        return []
    if spec.routing.endpoint_picker is not None or config.routing.endpoint_picker is not None:
        return []
    return [
        Problem(
            Reason.INVALID_SPEC,
            "spec.routing.endpointPicker",
            "not set, and the operator config has no default (routing.endpointPicker; chart value "
            "config.routing.endpointPicker): set it to the endpoint picker Service installed in this namespace "
            "(e.g. llm-d's inference scheduler), or have the operator config name a default",
        )
    ]
