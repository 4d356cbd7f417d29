"""The tuneops API: pydantic models of spec and status for each kind, the single source of truth for the CRDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from tuneops import API_VERSION, GROUP, VERSION
from tuneops.api import finetunedmodel, inferenceservice, problems, quantizationjob
from tuneops.api.common import BaseStatus, Model

CATEGORY = "tuneops"


@dataclass(frozen=True)
class KindInfo:
    """Everything the CRD generator, the renderers and the operator need to know about a kind."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec: type[Model]
    status: type[BaseStatus]
    printer_columns: list[dict[str, Any]]
    scale: dict[str, str] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


FINETUNEDMODEL = KindInfo(
    kind=finetunedmodel.KIND,
    plural=finetunedmodel.PLURAL,
    singular=finetunedmodel.SINGULAR,
    short_names=finetunedmodel.SHORT_NAMES,
    spec=finetunedmodel.FineTunedModelSpec,
    status=finetunedmodel.FineTunedModelStatus,
    printer_columns=finetunedmodel.PRINTER_COLUMNS,
    description="A base model plus a LoRA adapter, optionally merged into one model by a Job.",
)
QUANTIZATIONJOB = KindInfo(
    kind=quantizationjob.KIND,
    plural=quantizationjob.PLURAL,
    singular=quantizationjob.SINGULAR,
    short_names=quantizationjob.SHORT_NAMES,
    spec=quantizationjob.QuantizationJobSpec,
    status=quantizationjob.QuantizationJobStatus,
    printer_columns=quantizationjob.PRINTER_COLUMNS,
    description="An AWQ or GGUF quantization of a model, with an optional perplexity quality gate.",
)
INFERENCESERVICE = KindInfo(
    kind=inferenceservice.KIND,
    plural=inferenceservice.PLURAL,
    singular=inferenceservice.SINGULAR,
    short_names=inferenceservice.SHORT_NAMES,
    spec=inferenceservice.InferenceServiceSpec,
    status=inferenceservice.InferenceServiceStatus,
    printer_columns=inferenceservice.PRINTER_COLUMNS,
    scale={
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    },
    description="An OpenAI-compatible endpoint served by vLLM (GPU, TP/PP, multi-LoRA) or llama.cpp (GGUF, CPU).",
)

KINDS: dict[str, KindInfo] = {k.kind: k for k in (FINETUNEDMODEL, QUANTIZATIONJOB, INFERENCESERVICE)}


class SpecError(ValueError):
    """A resource whose spec does not validate; the message names each offending field."""

    def __init__(self, kind: str, name: str, problems: list[str]):
        self.kind = kind
        self.name = name
        self.problems = problems
        super().__init__(f"{kind} {name!r}: " + "; ".join(problems))


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = "spec"
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def format_errors(err: ValidationError, model: type[BaseModel] | None = None) -> list[str]:
    """Pydantic errors as 'spec.field.path: message' lines (camelCase paths, as the user wrote them)."""
    lines = []
    for e in err.errors():
        loc = tuple(x for x in e["loc"] if not (isinstance(x, str) and x.startswith("function-")))
        lines.append(f"{_field_path(loc)}: {problems.message(e, loc, model)}")
    return lines


def parse_spec(kind: str, obj: dict[str, Any]) -> BaseModel:
    """Validate a resource's spec against its model; raise SpecError naming the fields on failure."""
    info = KINDS.get(kind)
    name = str((obj.get("metadata") or {}).get("name", "?"))
    if info is None:
        raise SpecError(kind, name, [f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}"])
    if obj.get("apiVersion") not in (None, API_VERSION):
        raise SpecError(kind, name, [f"apiVersion must be {API_VERSION}, got {obj.get('apiVersion')!r}"])
    try:
        return info.spec.model_validate(obj.get("spec") or {}, by_alias=True)
    except ValidationError as err:
        raise SpecError(kind, name, format_errors(err, info.spec)) from None


__all__ = [
    "API_VERSION",
    "CATEGORY",
    "FINETUNEDMODEL",
    "GROUP",
    "INFERENCESERVICE",
    "KINDS",
    "QUANTIZATIONJOB",
    "VERSION",
    "KindInfo",
    "SpecError",
    "parse_spec",
]
