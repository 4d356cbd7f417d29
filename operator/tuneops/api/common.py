"""Building blocks shared by the three kinds: refs, URIs, job templates, conditions, artifacts."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

# Bounds: every string and list in the CRDs is bounded (the API server's CEL cost checks need them,
# and an unbounded field is an easy way to stuff etcd).
NAME_MAX = 253
URI_MAX = 2048
MESSAGE_MAX = 32768
SHORT_MAX = 63
LIST_MAX = 64

URI_SCHEMES = ("hf", "s3", "pvc", "file")
_URI_RE = re.compile(r"^(hf|s3|pvc|file)://[^\s]+$")

DNSName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=NAME_MAX, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
]
DNSLabel = Annotated[
    str,
    StringConstraints(min_length=1, max_length=SHORT_MAX, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"),
]
ShortStr = Annotated[str, StringConstraints(max_length=SHORT_MAX)]
Str = Annotated[str, StringConstraints(max_length=NAME_MAX)]
LongStr = Annotated[str, StringConstraints(max_length=URI_MAX)]
Message = Annotated[str, StringConstraints(max_length=MESSAGE_MAX)]
_QUANTITY_RE = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+|[KMGTPE]i|[numkMGTPE])?$")


def check_quantity(value: int | str) -> int | str:
    """Refuse what Kubernetes would not read as a quantity (the renderers do arithmetic on CPU and GPUs)."""
    if isinstance(value, str) and not _QUANTITY_RE.match(value):
        raise ValueError(f"{value[:40]!r} is not a Kubernetes quantity (e.g. 4, 500m, 16Gi)")
    return value


# Kubernetes quantities are int-or-string ("4", 4, "16Gi", "500m").
Quantity = Annotated[
    int | str,
    AfterValidator(check_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


def check_uri(value: str) -> str:
    """Refuse URIs whose path climbs out of their root (pvc://claim/../../etc) or whose scheme is unknown."""
    if not _URI_RE.match(value):
        raise ValueError(f"unsupported URI {value!r}: use one of {', '.join(s + '://' for s in URI_SCHEMES)}")
    rest = value.split("://", 1)[1]
    if any(part == ".." for part in rest.split("/")):
        raise ValueError(f"URI {value!r} must not contain '..' path segments")
    if "\x00" in value:
        raise ValueError("URI must not contain NUL bytes")
    return value


# The content digest of an artifact's manifest, as status.artifact.digest and adapterDigest record it.
AdapterDigest = Annotated[str, StringConstraints(max_length=71, pattern=r"^sha256:[0-9a-f]{64}$")]
Uri = Annotated[
    str,
    StringConstraints(min_length=3, max_length=URI_MAX, pattern=r"^(hf|s3|pvc|file)://[^\s]+$"),
    AfterValidator(check_uri),
    Field(
        description="Artifact URI: hf://org/name[@revision], s3://bucket/prefix, pvc://claim/path or file:///path."
    ),
]


def field_errors(model: str, *errors: tuple[tuple[str | int, ...], str, Any]) -> ValidationError:
    """Errors of a cross-field rule, each placed at the field to change (`(loc, message, value)`, loc in
    camelCase as the user writes it), so the message names `spec.resources.gpus` rather than the object."""
    return ValidationError.from_exception_data(
        model,
        [
            InitErrorDetails(type=PydanticCustomError("value_error", message), loc=loc, input=value)
            for loc, message, value in errors
        ],
    )


class Model(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused, field docs from docstrings."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=False,
    )

    def wire(self) -> dict[str, Any]:
        """The object as it appears in Kubernetes (camelCase, unset fields omitted)."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectRef(Model):
    """A reference to another tuneops resource."""

    name: DNSName
    """Name of the referenced resource."""
    namespace: DNSLabel | None = None
    """Namespace of the referenced resource; defaults to this resource's namespace. Other namespaces are
    refused unless the operator is configured to allow cross-namespace references."""


class SecretKeyRef(Model):
    """A Secret in the resource's namespace with the credentials of one source. For hf:// the token is the
    key named here; for s3:// the keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN,
    AWS_REGION and AWS_ENDPOINT_URL are read when present. Secrets are only ever passed as env valueFrom."""

    name: DNSName
    """Name of the Secret."""
    key: Annotated[
        str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=r"^[-._a-zA-Z0-9]+$")
    ] = "token"
    """Key of the Hugging Face token inside the Secret (hf:// sources)."""


class Toleration(Model):
    """A Pod toleration (same fields as core/v1 Toleration)."""

    key: Str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: Str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(default=None, ge=0)


class ResourceRequirements(Model):
    """Compute resources of a container (core/v1 ResourceRequirements)."""

    limits: dict[ShortStr, Quantity] | None = Field(default=None, max_length=16)
    requests: dict[ShortStr, Quantity] | None = Field(default=None, max_length=16)

    @model_validator(mode="after")
    def _whole_gpus(self) -> ResourceRequirements:
        for block in (self.limits or {}, self.requests or {}):
            for key, value in block.items():
                if key.endswith("/gpu") and not re.fullmatch(r"\d+", str(value)):
                    raise ValueError(f"{key} must be a whole number of GPUs, got {str(value)[:40]!r}")
        return self


class EnvVar(Model):
    """An environment variable for the container (core/v1 EnvVar)."""

    name: Annotated[
        str, StringConstraints(min_length=1, max_length=NAME_MAX, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
    ]
    value: LongStr | None = None
    value_from: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """A source for the value (core/v1 EnvVarSource), e.g. secretKeyRef."""


# core/v1 Affinity as a shape: a dict maps field names to shapes, a one-item list is a list of that shape, and the
# strings name scalars. The CRD keeps spec.affinity free-form, so without this a malformed one would reach a Pod
# template (and the renderer, which adds GPU product terms into it).
_REQUIREMENT = {"key": "str", "operator": "str", "values": ["str"]}
_NODE_TERM = {"matchExpressions": [_REQUIREMENT], "matchFields": [_REQUIREMENT]}
_LABEL_SELECTOR = {"matchLabels": "labels", "matchExpressions": [_REQUIREMENT]}
_POD_TERM = {
    "labelSelector": _LABEL_SELECTOR,
    "namespaceSelector": _LABEL_SELECTOR,
    "namespaces": ["str"],
    "topologyKey": "str",
    "matchLabelKeys": ["str"],
    "mismatchLabelKeys": ["str"],
}
_POD_AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": [_POD_TERM],
    "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": "int", "podAffinityTerm": _POD_TERM}],
}
_AFFINITY: dict[str, Any] = {
    "nodeAffinity": {
        "requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [_NODE_TERM]},
        "preferredDuringSchedulingIgnoredDuringExecution": [{"weight": "int", "preference": _NODE_TERM}],
    },
    "podAffinity": _POD_AFFINITY,
    "podAntiAffinity": _POD_AFFINITY,
}


def _shape(value: Any, shape: Any, at: str) -> str | None:
    """Where `value` departs from `shape` (see _AFFINITY), or None."""
    where = at or "affinity"
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{where} must be a mapping"
        for key, item in value.items():
            if key not in shape:
                return f"{where}: unknown field {key!r}"
            found = _shape(item, shape[key], f"{at}.{key}" if at else str(key))
            if found:
                return found
        return None
    if isinstance(shape, list):
        if not isinstance(value, list):
            return f"{where} must be a list"
        for i, item in enumerate(value):
            found = _shape(item, shape[0], f"{where}[{i}]")
            if found:
                return found
        return None
    if shape == "labels":
        ok = isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        )
        return None if ok else f"{where} must map strings to strings"
    if shape == "int":
        return (
            None if isinstance(value, int) and not isinstance(value, bool) else f"{where} must be an integer"
        )
    return None if isinstance(value, str) else f"{where} must be a string"


class Scheduling(Model):
    """Where the Pods run."""

    node_selector: dict[Str, Str] | None = Field(default=None, max_length=32)
    """Node labels the Pod's node must have."""
    tolerations: list[Toleration] | None = Field(default=None, max_length=LIST_MAX)
    """Tolerations added to the Pod (a GPU toleration is added automatically when GPUs are requested)."""
    affinity: dict[str, Any] | None = Field(
        default=None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """core/v1 Affinity, passed through unchanged (its shape is checked: the CRD keeps it as free-form)."""

    @field_validator("affinity")
    @classmethod
    def _affinity_shape(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None:
            problem = _shape(value, _AFFINITY, "")
            if problem:
                raise ValueError(f"not a core/v1 Affinity: {problem}")
        return value

    priority_class_name: DNSName | None = None
    """PriorityClass of the Pods."""
    service_account_name: DNSName | None = None
    """ServiceAccount the Pods run as."""


class JobTemplate(Scheduling):
    """How the operator runs a step's Job."""

    image: LongStr | None = None
    """Container image; defaults to the operator's configured worker image for the step."""
    resources: ResourceRequirements | None = None
    """Resources of the worker container."""
    active_deadline_seconds: int = Field(default=21600, ge=60, le=604800)
    """Wall-clock limit of one attempt of the Job."""
    backoff_limit: int = Field(default=1, ge=0, le=10)
    """Pod retries inside one Job before the step is reported failed."""


class OutputSpec(Model):
    """Where the step writes its artifact."""

    uri: Uri
    """Destination URI; written atomically (temporary sibling, then rename) with a tuneops-artifact.json manifest."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials for writing to an hf:// or s3:// destination (only this destination uses it)."""


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(Model):
    """A Kubernetes-style condition."""

    type: ShortStr
    status: ConditionStatus
    reason: ShortStr = ""
    message: Message = ""
    last_transition_time: ShortStr = ""
    observed_generation: int | None = None


class Artifact(Model):
    """An artifact a step produced, as recorded from the Job's termination message."""

    uri: LongStr
    digest: Str | None = None
    """sha256 of the artifact manifest (content address of the whole artifact)."""
    size_bytes: int | None = Field(default=None, ge=0)
    format: ShortStr | None = None
    """safetensors, compressed-tensors, gguf or peft."""
    files: list[Str] | None = Field(default=None, max_length=LIST_MAX)
    """Notable files inside the artifact (e.g. one per GGUF quantization type)."""


Phase = Literal["Pending", "Waiting", "Running", "Ready", "Failed"]


StepState = Literal["Pending", "Running", "Succeeded", "Failed"]


class StepStatus(Model):
    """The Job that ran (or runs) one step of the pipeline, and how it ended."""

    name: ShortStr
    """Step: inspect, merge, quantize or evaluate."""
    job: Str
    """Content-addressed Job name: the same inputs always map to the same Job."""
    state: StepState
    reason: ShortStr | None = None
    message: Message | None = None


class BaseStatus(Model):
    """Status fields every kind has."""

    observed_generation: int | None = None
    """The spec generation this status describes."""
    phase: Phase | None = None
    """Summary derived from the conditions (for humans; tools should read conditions)."""
    conditions: list[Condition] | None = Field(default=None, max_length=LIST_MAX)
    """Conditions in the Kubernetes convention; Ready is the overall one."""
    artifact: Artifact | None = None
    """The artifact this resource produced."""
    steps: list[StepStatus] | None = Field(default=None, max_length=8)
    """The Job of each pipeline step; a failed step is retried only when its inputs (spec, upstream digest) change."""


def fetched_by_loader(uri: str) -> bool:
    """Whether a serving Pod's adapter loader fetches this adapter (s3://, hf://...@revision) rather than vLLM
    reading it itself (pvc://, file://, an unpinned hf:// name)."""
    scheme, _, rest = uri.partition("://")
    return scheme == "s3" or (scheme == "hf" and "@" in rest)
