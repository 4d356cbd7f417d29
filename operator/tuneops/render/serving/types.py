"""What rendering an InferenceService gives the reconciler, and the names and ports its manifests share."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tuneops.api.common import ConditionStatus
from tuneops.api.inferenceservice import InferenceServiceSpec, LoraSpec
from tuneops.config import OperatorConfig
from tuneops.render.names import bounded_name
from tuneops.render.types import Manifest, Owner, ResolvedAdapter, ResolvedModel

SERVER = "server"
CONTAINER = "server"
PORT = 8000
# The adapter loader beside vLLM (render.serving.loader), reached by the operator only.
LOADER_PORT = 8071


@dataclass(frozen=True)
class Note:
    """A condition the reconciler sets from what rendering decided (e.g. the rollout strategy)."""

    type: str
    status: ConditionStatus
    reason: str
    message: str


@dataclass(frozen=True)
class ServingRender:
    """Everything an InferenceService needs, plus what the reconciler reports in status."""

    manifests: tuple[Manifest, ...]
    notes: tuple[Note, ...]
    selector: Mapping[str, str]
    url: str
    served_models: tuple[str, ...]
    workload_kind: str
    workload_name: str

    @property
    def selector_string(self) -> str:
        """status.selector for the scale subresource (HPA)."""
        return ",".join(f"{k}={v}" for k, v in sorted(self.selector.items()))


def effective_lora(spec: InferenceServiceSpec, adapters: Sequence[ResolvedAdapter]) -> LoraSpec | None:
    """spec.lora, or its defaults when adapters come without it (a FineTunedModel served unmerged)."""
    if spec.lora is not None:
        return spec.lora
    return LoraSpec() if adapters else None


def served_model_name(spec: InferenceServiceSpec, owner: Owner) -> str:
    """The name clients put in the request's model field for the base model."""
    return spec.vllm_settings().served_model_name or owner.name


def base_served_name(spec: InferenceServiceSpec, owner: Owner, model: ResolvedModel | None) -> str:
    """The base model's served name: the service's, unless an adapter took it (model.serve lora or auto)."""
    return (model.base_name if model is not None else None) or served_model_name(spec, owner)


def workload_name(owner: Owner) -> str:
    """The name of the service's Deployment (or LeaderWorkerSet), Service, PodDisruptionBudget,
    NetworkPolicy, autoscaler and routes: the resource's name where it already is a short DNS label without
    `--` (`support-bot` stays `support-bot`, the Service URL users rely on), else hashed (`bounded_name`).

    No two owners share one: only InferenceServices make these kinds, their names are unique in a namespace,
    and `bounded_name` of a single part is one-to-one."""
    return bounded_name(owner.name)


def service_url(spec: InferenceServiceSpec, owner: Owner, config: OperatorConfig) -> str:
    host = f"{workload_name(owner)}.{owner.namespace}.svc.{config.cluster_domain}"
    return f"http://{host}:{spec.service.port}/v1"
