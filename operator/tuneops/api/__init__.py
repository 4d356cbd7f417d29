"""The tuneops API: pydantic models of spec and status for each kind, the single source of truth for the CRDs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from tuneops import API_VERSION, GROUP, VERSION
from tuneops.api import finetunedmodel, inferenceservice, loraadapter, quantizationjob
from tuneops.api.common import BaseStatus, Model
from tuneops.validation import messages

CATEGORY = "tuneops"

SpecT = TypeVar("SpecT", bound=Model)
StatusT = TypeVar("StatusT", bound=BaseStatus)


@dataclass(frozen=True)
class KindInfo(Generic[SpecT, StatusT]):
    """Everything the CRD generator, the renderers and the operator need to know about a kind."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    spec: type[SpecT]
    status: type[StatusT]
    printer_columns: list[dict[str, Any]]
    scale: dict[str, str] | None = None
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"

    def parse_spec(self, obj: dict[str, Any]) -> SpecT:
        """The resource's spec as this kind's model; SpecError names every offending field."""
        name = str((obj.get("metadata") or {}).get("name", "?"))
        if obj.get("apiVersion") not in (None, API_VERSION):
            raise SpecError(
                self.kind, name, [f"apiVersion must be {API_VERSION}, got {obj.get('apiVersion')!r}"]
            )
        try:
            return self.spec.model_validate(obj.get("spec") or {}, by_alias=True)
        except ValidationError as err:
            raise SpecError(self.kind, name, format_errors(err, self.spec)) from None

    def parse_status(self, raw: Any) -> StatusT:
        """The status as this kind's model; fields written by others (or garbage) are dropped, never fatal."""
        if not isinstance(raw, dict):
            return self.status()
        known = {f.alias or name for name, f in self.status.model_fields.items()}
        try:
            return self.status.model_validate({k: v for k, v in raw.items() if k in known}, by_alias=True)
        except ValidationError:
            return self.status()


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

LORAADAPTER = KindInfo(
    kind=loraadapter.KIND,
    plural=loraadapter.PLURAL,
    singular=loraadapter.SINGULAR,
    short_names=loraadapter.SHORT_NAMES,
    spec=loraadapter.LoRAAdapterSpec,
    status=loraadapter.LoRAAdapterStatus,
    printer_columns=loraadapter.PRINTER_COLUMNS,
    description="A team's LoRA adapter attached to a shared base InferenceService that allows its namespace.",
)

KINDS: dict[str, KindInfo[Any, Any]] = {
    k.kind: k for k in (FINETUNEDMODEL, QUANTIZATIONJOB, INFERENCESERVICE, LORAADAPTER)
}


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
        lines.append(f"{_field_path(loc)}: {messages.message(e, loc, model)}")
    return lines


def parse_spec(kind: str, obj: dict[str, Any]) -> BaseModel:
    """Validate a resource's spec against its model; raise SpecError naming the fields on failure."""
    info = KINDS.get(kind)
    if info is None:
        name = str((obj.get("metadata") or {}).get("name", "?"))
        raise SpecError(kind, name, [f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}"])
    spec: BaseModel = info.parse_spec(obj)
    return spec


__all__ = [
    "API_VERSION",
    "CATEGORY",
    "FINETUNEDMODEL",
    "GROUP",
    "INFERENCESERVICE",
    "KINDS",
    "LORAADAPTER",
    "QUANTIZATIONJOB",
    "VERSION",
    "KindInfo",
    "SpecError",
    "SpecT",
    "StatusT",
    "parse_spec",
]
