"""The operator's refusals that need no cluster, as pure functions over a spec and what its references resolve to.

The reconcilers call them with sources read from the referenced resources' status; `tuneops validate` and
`tuneops render` call the same functions with sources predicted from the other resources in the given files.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel
from pydantic.alias_generators import to_snake

from tuneops.api.common import JobTemplate, ObjectRef
from tuneops.api.conditions import Reason
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.render.quantizationjob import check_quantizationjob
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
    if isinstance(spec, QuantizationJobSpec) and spec.source.fine_tuned_model_ref is not None:
        out.append(
            Reference("spec.source.fineTunedModelRef", "FineTunedModel", spec.source.fine_tuned_model_ref)
        )
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
    if target_ns != namespace and not config.allow_cross_namespace_refs:
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


@dataclass(frozen=True)
class AdapterOnly:
    """A FineTunedModel that publishes its adapter rather than a merged model (merge.enabled false)."""

    name: str


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


# -- what a tenant may choose for its Pods (the operator config's allow-lists) --------------------------------

# Env value sources a spec may use; a secretKeyRef only to a Secret the spec already names.
_ENV_SOURCES = frozenset({"secretKeyRef", "configMapKeyRef", "fieldRef", "resourceFieldRef"})


def _matches(value: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(value, p) for p in patterns)


def _flag(arg: str) -> str | None:
    """The flag an argument sets (`--a_b=1` -> `--a-b`; short flags as written), None for a value."""
    if not arg.startswith("-") or arg == "-" or arg[1:2].isdigit():
        return None
    name = arg.split("=", 1)[0]
    return "--" + name[2:].replace("_", "-") if name.startswith("--") else name


def _denied_flag(flag: str, config: OperatorConfig) -> str | None:
    """The deny-list entry `flag` sets (itself, or one it abbreviates: argparse takes unique prefixes)."""
    allow = config.allow
    if _matches(flag, allow.extra_args):
        return None
    for denied in allow.denied_args:
        if fnmatch.fnmatchcase(flag, denied):
            return denied
        literal = not any(c in denied for c in "*?[")
        if literal and flag.startswith("--") and len(flag) > 3 and denied.startswith(flag):
            return denied
    return None


# Names a spec may give its Pods, each checked against its allow-list: (attribute, field, what, allow key).
_NAMED_CHOICES = (
    ("service_account_name", "serviceAccountName", "ServiceAccount", "serviceAccounts"),
    ("priority_class_name", "priorityClassName", "PriorityClass", "priorityClasses"),
    ("runtime_class_name", "runtimeClassName", "RuntimeClass", "runtimeClasses"),
)


def _job_templates(spec: BaseModel) -> list[tuple[str, JobTemplate]]:
    template = getattr(spec, "job", None)
    return [("spec.job", template)] if isinstance(template, JobTemplate) else []


def check_pod_policy(spec: BaseModel, config: OperatorConfig) -> list[Problem]:
    """What the spec chooses for its Pods that the operator config does not allow (reason NotAllowed): images
    other than the configured ones and config.allow.images, ServiceAccounts, PriorityClasses and
    RuntimeClasses outside their lists, server arguments on the deny-list, and env from Secrets the spec
    does not otherwise name."""
    allow = config.allow
    problems: list[Problem] = []

    def not_allowed(fld: str, msg: str) -> None:
        problems.append(Problem(Reason.NOT_ALLOWED, fld, msg))

    configured = set(config.images.model_dump().values())
    scheduling: list[tuple[str, BaseModel]] = [*_job_templates(spec)]
    if isinstance(spec, InferenceServiceSpec):
        scheduling.append(("spec", spec))
    for at, holder in scheduling:
        image = getattr(holder, "image", None)
        if image and image not in configured and not _matches(image, allow.images):
            not_allowed(
                f"{at}.image",
                f"image {image!r} is not allowed by the operator config (allow.images; "
                "chart value config.allow.images); leave it unset for the configured image",
            )
        for attr, name, what, key in _NAMED_CHOICES:
            chosen = getattr(holder, attr, None)
            if chosen and not _matches(chosen, getattr(allow, to_snake(key))):
                not_allowed(
                    f"{at}.{name}", f"{what} {chosen!r} is not allowed by the operator config (allow.{key})"
                )
    if isinstance(spec, InferenceServiceSpec):
        problems += _service_pod_problems(spec, config)
    return problems


def _service_pod_problems(spec: InferenceServiceSpec, config: OperatorConfig) -> list[Problem]:
    out: list[Problem] = []
    named = {r.name for r in (spec.model.token_secret_ref, spec.api_key_secret_ref) if r is not None}
    for i, env in enumerate(spec.env or []):
        source = env.value_from or {}
        fld = f"spec.env[{i}].valueFrom"
        unknown = sorted(set(source) - _ENV_SOURCES)
        if unknown:
            out.append(
                Problem(
                    Reason.NOT_ALLOWED,
                    fld,
                    f"{', '.join(unknown)} is not allowed (use secretKeyRef, "
                    "configMapKeyRef, fieldRef or resourceFieldRef)",
                )
            )
        secret = (source.get("secretKeyRef") or {}).get("name") if isinstance(source, dict) else None
        if "secretKeyRef" in source and secret not in named:
            out.append(
                Problem(
                    Reason.NOT_ALLOWED,
                    f"{fld}.secretKeyRef",
                    f"Secret {secret!r} is not one the "
                    "spec names (model.tokenSecretRef, apiKeySecretRef); env may read only those",
                )
            )
    settings = (
        ("spec.vllm.extraArgs", spec.vllm.extra_args if spec.vllm else None),
        ("spec.llamacpp.extraArgs", spec.llamacpp.extra_args if spec.llamacpp else None),
    )
    for at, args in settings:
        for i, arg in enumerate(args or []):
            flag = _flag(arg)
            denied = _denied_flag(flag, config) if flag else None
            if denied:
                out.append(
                    Problem(
                        Reason.NOT_ALLOWED,
                        f"{at}[{i}]",
                        f"{flag} is refused: the operator sets it or it "
                        f"loads code or reads or writes files (allow.deniedArgs has {denied}; "
                        "allow.extraArgs lifts it)",
                    )
                )
    return out
