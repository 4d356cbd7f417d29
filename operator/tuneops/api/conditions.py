"""Condition types and reasons (declared once), and the pure helpers that update a condition list."""

from __future__ import annotations

from collections.abc import Iterable

from tuneops.api.common import Condition, ConditionStatus, Phase

# Condition types.
READY = "Ready"
INSPECTED = "Inspected"
MERGED = "Merged"
QUANTIZED = "Quantized"
QUALITY_GATE_PASSED = "QualityGatePassed"
# FineTunedModel: the merged model and the LoRA path measured (spec.benchmark); its message is the recommendation.
BENCHMARKED = "Benchmarked"
AVAILABLE = "Available"
ADAPTERS_READY = "AdaptersReady"
PROGRESSING = "Progressing"
ROLLOUT = "RolloutStrategy"
SECURED = "Secured"
# True while a service serves but not all of it: an adapter failed, or Pods of a rollout fail while earlier ones
# serve. Ready stays True (reason Degraded) because something answers; this condition names what does not.
DEGRADED = "Degraded"


class Reason:
    """CamelCase reasons. Terminal ones are those a person must act on; the rest resolve by themselves."""

    RECONCILING = "Reconciling"
    SUCCEEDED = "Succeeded"
    WAITING_FOR_SOURCE = "WaitingForSource"
    # spec.autoscaling / spec.routing render a kind (KEDA, Gateway API) whose CRD this cluster does not serve.
    EXTENSION_NOT_INSTALLED = "ExtensionNotInstalled"
    SOURCE_NOT_FOUND = "SourceNotFound"
    INVALID_SPEC = "InvalidSpec"
    INCOMPATIBLE_ADAPTER = "IncompatibleAdapter"
    NOT_ALLOWED = "NotAllowed"
    # A child's name is taken by an object this resource does not control (another resource's child, or one a
    # person created): the operator never writes over it.
    NAME_CONFLICT = "NameConflict"
    # The operator may not read a Secret it needs (RBAC), or it does not exist.
    SECRET_UNREADABLE = "SecretUnreadable"
    JOB_PENDING = "JobPending"
    JOB_RUNNING = "JobRunning"
    JOB_FAILED = "JobFailed"
    OOM_KILLED = "OOMKilled"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    # An input's files or digest differ from what was recorded when it was made (tampered or replaced).
    DIGEST_MISMATCH = "DigestMismatch"
    QUALITY_GATE_FAILED = "QualityGateFailed"
    QUALITY_GATE_SKIPPED = "QualityGateSkipped"
    # The benchmark's serving-level check: the LoRA path and the merged model answer differently (a broken merge).
    QUALITY_CHECK_FAILED = "QualityCheckFailed"
    MERGE_DISABLED = "MergeDisabled"
    DEPLOYING = "Deploying"
    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    MINIMUM_REPLICAS_UNAVAILABLE = "MinimumReplicasUnavailable"
    SCALED_TO_ZERO = "ScaledToZero"
    ADAPTERS_LOADING = "AdaptersLoading"
    ADAPTER_LOAD_FAILED = "AdapterLoadFailed"
    ADAPTER_UNLOAD_FAILED = "AdapterUnloadFailed"
    ALL_ADAPTERS_SERVED = "AllAdaptersServed"
    NO_ADAPTERS = "NoAdapters"
    NO_READY_PODS = "NoReadyPods"
    POD_UNREACHABLE = "PodUnreachable"
    MAX_SURGE_ZERO = "MaxSurgeZeroNoSpareGPU"
    SURGE_ALLOWED = "SurgeAllowed"
    # What keeps strangers off the server's runtime LoRA API (condition Secured).
    API_KEY = "ApiKey"
    NETWORK_POLICY = "NetworkPolicy"
    NO_RUNTIME_API = "NoRuntimeApi"
    # Neither an API key nor a NetworkPolicy in front of what needs one (the LoRA API, a group's Ray ports).
    UNPROTECTED = "Unprotected"
    # Why a workload's Pods do not run, as kubelet, the scheduler and the controllers report it.
    UNSCHEDULABLE = "Unschedulable"
    CLAIM_PENDING = "ClaimPending"
    VOLUME_MOUNT_FAILED = "VolumeMountFailed"
    IMAGE_PULL_BACK_OFF = "ImagePullBackOff"
    CREATE_CONTAINER_CONFIG_ERROR = "CreateContainerConfigError"
    CRASH_LOOP_BACK_OFF = "CrashLoopBackOff"
    INIT_CONTAINER_FAILED = "InitContainerFailed"
    PROGRESS_DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    # Ready=True: serving, but not all of it (the Degraded condition has the cause); Degraded=False: nothing
    # fails while something serves (AsExpected), or nothing serves yet (NotServing: Ready says why).
    DEGRADED = "Degraded"
    AS_EXPECTED = "AsExpected"
    NOT_SERVING = "NotServing"


TERMINAL_REASONS = frozenset(
    {
        Reason.INVALID_SPEC,
        Reason.INCOMPATIBLE_ADAPTER,
        Reason.NOT_ALLOWED,
        Reason.NAME_CONFLICT,
        Reason.SECRET_UNREADABLE,
        Reason.JOB_FAILED,
        Reason.OOM_KILLED,
        Reason.DEADLINE_EXCEEDED,
        Reason.DIGEST_MISMATCH,
        Reason.QUALITY_GATE_FAILED,
        Reason.QUALITY_CHECK_FAILED,
        Reason.SOURCE_NOT_FOUND,
        Reason.ADAPTER_LOAD_FAILED,
        Reason.ADAPTER_UNLOAD_FAILED,
        # A workload Kubernetes keeps retrying in vain: Argo CD's own health calls such Pods and Deployments
        # Degraded, and a person must act (push the image, create the Secret, fix the program).
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.CREATE_CONTAINER_CONFIG_ERROR,
        Reason.CRASH_LOOP_BACK_OFF,
        Reason.INIT_CONTAINER_FAILED,
        Reason.PROGRESS_DEADLINE_EXCEEDED,
    }
)

# Why a workload is stuck, terminal or not. They heal without a spec change once the world outside is fixed
# (image pushed, Secret or claim created, node added), so the operator keeps looking; their Events are Warnings.
STUCK_REASONS = frozenset(
    {
        Reason.NAME_CONFLICT,
        Reason.UNSCHEDULABLE,
        Reason.DIGEST_MISMATCH,
        Reason.CLAIM_PENDING,
        Reason.VOLUME_MOUNT_FAILED,
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.CREATE_CONTAINER_CONFIG_ERROR,
        Reason.CRASH_LOOP_BACK_OFF,
        Reason.INIT_CONTAINER_FAILED,
        Reason.PROGRESS_DEADLINE_EXCEEDED,
    }
)

# Stuck before any container ran: the phase says Pending (as the Pod's own does), not Failed.
NOT_STARTED_REASONS = frozenset(
    {
        Reason.UNSCHEDULABLE,
        Reason.CLAIM_PENDING,
        Reason.VOLUME_MOUNT_FAILED,
        Reason.IMAGE_PULL_BACK_OFF,
        Reason.CREATE_CONTAINER_CONFIG_ERROR,
    }
)


def find(conditions: Iterable[Condition] | None, type_: str) -> Condition | None:
    for cond in conditions or ():
        if cond.type == type_:
            return cond
    return None


def set_condition(
    conditions: list[Condition] | None,
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
) -> list[Condition]:
    """Return a new list with `type_` set. lastTransitionTime only moves when the status flips, so an
    unchanged condition yields an identical list (a level-based reconciler then writes nothing)."""
    previous = find(conditions, type_)
    keep = previous is not None and previous.status == status and previous.last_transition_time
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message[:4096],
        last_transition_time=previous.last_transition_time if keep and previous else now,
        observed_generation=generation,
    )
    if previous is None:
        return [*(conditions or []), updated]
    return [updated if c.type == type_ else c for c in conditions or []]


# Ready=True reasons that mean "serving, but degraded" (Argo CD: Degraded, not Healthy).
SERVING_DEGRADED_REASONS = frozenset({Reason.DEGRADED})


def derive_phase(conditions: Iterable[Condition] | None) -> Phase:
    """One word for humans, derived from Ready: Ready (also serving but Degraded), Failed (terminal reason),
    Waiting, Running or Pending (also a workload stuck before its containers ran). A service whose Available
    condition is True serves: whatever Ready says, its phase is never Failed or Pending, but Running."""
    ready = find(conditions, READY)
    if ready is None:
        return "Pending"
    if ready.status == "True":
        return "Ready"
    available = find(conditions, AVAILABLE)
    if available is not None and available.status == "True":
        return "Running"
    if ready.reason in NOT_STARTED_REASONS:
        return "Pending"
    if ready.reason in TERMINAL_REASONS:
        return "Failed"
    if ready.reason in (Reason.WAITING_FOR_SOURCE, Reason.EXTENSION_NOT_INSTALLED):
        return "Waiting"
    if ready.reason in {
        Reason.JOB_RUNNING,
        Reason.DEPLOYING,
        Reason.ADAPTERS_LOADING,
        Reason.RECONCILING,
        Reason.MINIMUM_REPLICAS_UNAVAILABLE,
    }:
        return "Running"
    return "Pending"
