"""Runtime LoRA adapter reconciliation against vLLM servers: plan, execute, summarise."""

from tuneops.adapters.client import AdapterAPIError, AdapterClient, error_message, reconcile_pod
from tuneops.adapters.plan import plan_pod, record_results
from tuneops.adapters.summary import summarize
from tuneops.adapters.types import (
    DEFAULT_MAX_ATTEMPTS,
    ActionKind,
    ActionResult,
    AdapterAction,
    AdapterPodState,
    AdaptersSummary,
    AdapterState,
    AdapterSummary,
    DesiredAdapter,
    FailureRecord,
    PodMemory,
    PodPlan,
    PodResult,
    ServedModels,
)

__all__ = [
    "DEFAULT_MAX_ATTEMPTS",
    "ActionKind",
    "ActionResult",
    "AdapterAPIError",
    "AdapterAction",
    "AdapterClient",
    "AdapterPodState",
    "AdapterState",
    "AdapterSummary",
    "AdaptersSummary",
    "DesiredAdapter",
    "FailureRecord",
    "PodMemory",
    "PodPlan",
    "PodResult",
    "ServedModels",
    "error_message",
    "plan_pod",
    "reconcile_pod",
    "record_results",
    "summarize",
]
