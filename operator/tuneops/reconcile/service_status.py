"""How an InferenceService stands, decided from what one pass observed: pure functions, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from tuneops.adapters import AdaptersSummary
from tuneops.adapters import AdapterState as PodState
from tuneops.api.conditions import ADAPTERS_READY, AVAILABLE, DEGRADED, READY, TERMINAL_REASONS, Reason
from tuneops.api.inferenceservice import AdapterState
from tuneops.labels import REFRESH
from tuneops.reconcile.base import Cond, Invalid, Verdict, Waiting, blocked
from tuneops.reconcile.workload import Cause

# AdaptersReady reasons that stop the service from being Ready until something changes.
ADAPTER_FAILURES = frozenset(
    {Reason.INCOMPATIBLE_ADAPTER, Reason.ADAPTER_LOAD_FAILED, Reason.ADAPTER_UNLOAD_FAILED}
)


_STATES: dict[PodState, Literal["Ready", "Loading", "Failed"]] = {
    PodState.READY: "Ready",
    PodState.LOADING: "Loading",
    PodState.FAILED: "Failed",
}


@dataclass(frozen=True)
class Workload:
    """The Deployment (or LeaderWorkerSet) as its controller reports it."""

    desired: int  # spec.replicas
    ready: int = 0
    updated: int = 0
    current: bool = True  # the controller has seen the latest generation
    cause: Cause | None = None  # why Pods do not run (stuck or failing), looked for while not rolled out
    total: int | None = None  # status.replicas: Pods of every revision (None: not reported)

    @property
    def rolled_out(self) -> bool:
        """As `kubectl rollout status` decides: the latest revision everywhere, every replica ready, and no
        Pod of an earlier revision left. Ready replicas alone can be the old Pods: after a hand edit of the
        Deployment the new Pod may crash-loop while the old one still serves."""
        old_left = self.total is not None and self.total > self.updated
        return self.current and self.updated >= self.desired and self.ready >= self.desired and not old_left


@dataclass(frozen=True)
class Adapters:
    """The runtime adapters: the verdict over the ready Pods, and those never handed to them."""

    summary: AdaptersSummary
    refused: Mapping[str, str] = field(default_factory=dict)  # name -> why vLLM would refuse it
    pending: Mapping[str, str] = field(default_factory=dict)  # name -> which source is not Ready yet


@dataclass(frozen=True)
class Observed:
    """Everything the conditions are decided from (`adapters` None: the service runs no LoRA)."""

    workload: Workload
    adapters: Adapters | None = None
    notes: tuple[Cond, ...] = ()  # conditions rendering decided (e.g. the rollout strategy)
    served_models: tuple[str, ...] = ()
    url: str = ""


def decide(seen: Observed | Waiting | Invalid) -> Verdict:
    """Available, AdaptersReady and Ready from one pass's observations, or Ready alone when the source
    could not be resolved; `requeue` while something still settles by itself."""
    if isinstance(seen, Waiting | Invalid):
        return blocked(seen)
    available = available_condition(seen.workload)
    adapters = () if seen.adapters is None else (adapters_condition(seen.adapters, seen.workload),)
    degraded = degraded_condition(seen, available, adapters[0] if adapters else None)
    ready, requeue = ready_condition(seen, available, adapters[0] if adapters else None, degraded)
    return Verdict((*seen.notes, available, *adapters, degraded, ready), requeue=requeue)


def available_condition(w: Workload) -> Cond:
    """Available as the Deployment would say it, except that no replica ready names why when Pods are stuck."""
    if w.desired == 0:
        return Cond(AVAILABLE, True, Reason.SCALED_TO_ZERO, "replicas is 0")
    if w.ready >= 1:
        return Cond(
            AVAILABLE, True, Reason.MINIMUM_REPLICAS_AVAILABLE, f"{w.ready}/{w.desired} replicas ready"
        )
    if w.cause is not None:
        return Cond(AVAILABLE, False, w.cause.reason, f"0/{w.desired} replicas ready: {w.cause.message}")
    return Cond(AVAILABLE, False, Reason.MINIMUM_REPLICAS_UNAVAILABLE,
                f"0/{w.desired} replicas ready (models can take minutes to load)")  # fmt: skip


def adapters_condition(a: Adapters, w: Workload) -> Cond:
    """The summary's verdict, except that a refused adapter (never loaded) or one whose source is not Ready
    (not handed to the Pods yet) is reported first: the summary only knows the adapters the Pods were given.
    Scaled to zero, no Pod serves adapters: Unknown, and nothing to wait for until the service scales up."""
    s = a.summary
    failed = not s.ready and s.reason in ADAPTER_FAILURES
    if a.refused:
        parts = [f"adapter {name}: {why}" for name, why in sorted(a.refused.items())]
        also = [s.message] if failed else []
        return Cond(ADAPTERS_READY, False, Reason.INCOMPATIBLE_ADAPTER, "; ".join(parts + also))
    if w.desired == 0:
        return Cond(ADAPTERS_READY, None, Reason.SCALED_TO_ZERO,
                    "replicas is 0: no Pod serves adapters; they are loaded when the service scales up")  # fmt: skip
    if a.pending and not failed:
        parts = [f"adapter {name}: {why}" for name, why in sorted(a.pending.items())]
        return Cond(ADAPTERS_READY, False, Reason.ADAPTERS_LOADING, "; ".join(parts))
    return Cond(ADAPTERS_READY, s.ready, s.reason, s.message)


# What a person does about an adapter that failed: the operator stops trying after a few attempts per Pod.
ADAPTER_RETRY = (
    "fix the adapter (or lora.maxLoraRank), then retry: kubectl annotate --overwrite inferenceservice/<name> "
    f"{REFRESH}=$(date +%s) (rolls the Pods, which load every adapter afresh)"
)


def degraded_condition(seen: Observed, available: Cond, adapters: Cond | None) -> Cond:
    """Degraded: True while the service serves but not all of it, with the worst cause as its reason: a
    rollout past its progress deadline, Pods of a rollout that fail (crash, image, config) while earlier ones
    serve, or an adapter refused or failed. Pods that merely wait (for a node, a claim) are a rollout in
    progress, not a degradation. Nothing serving is not "degraded": Ready says why (NotServing)."""
    w = seen.workload
    if not available.status:
        return Cond(DEGRADED, False, Reason.NOT_SERVING, "no replica serves yet: see Ready")
    if w.cause is not None and w.cause.reason == Reason.PROGRESS_DEADLINE_EXCEEDED:
        return Cond(DEGRADED, True, w.cause.reason, f"rollout stuck ({available.message}): {w.cause.message}")
    if w.cause is not None and w.cause.reason in TERMINAL_REASONS and not w.rolled_out:
        return Cond(DEGRADED, True, w.cause.reason,
                    f"{available.message}; Pods of the rollout fail: {w.cause.message}")  # fmt: skip
    if adapters is not None and adapters.reason in ADAPTER_FAILURES:
        return Cond(DEGRADED, True, adapters.reason, f"{adapters.message}; {ADAPTER_RETRY}")
    return Cond(DEGRADED, False, Reason.AS_EXPECTED, "nothing fails")


def ready_condition(
    seen: Observed, available: Cond, adapters: Cond | None, degraded: Cond | None = None
) -> tuple[Cond, bool]:
    """Ready, and whether to look again soon. Ready describes the Pods that serve: True as soon as one replica
    serves, with reason Degraded while something fails beside it (the Degraded condition names it; the phase
    stays Ready, never Failed). A failed adapter is not retried by polling (its Pods were told as often as
    they accept); a rollout still in progress is, and so are stuck Pods (they heal once the image, Secret or
    node appears)."""
    w = seen.workload
    if not available.status:
        return Cond(READY, False, w.cause.reason if w.cause else Reason.DEPLOYING, available.message), True
    if degraded is None:
        degraded = degraded_condition(seen, available, adapters)
    if degraded.status:
        what = "serving" if w.desired else "scaled to zero"
        requeue = degraded.reason not in ADAPTER_FAILURES or not w.rolled_out
        return Cond(READY, True, Reason.DEGRADED,
                    f"{what} at {seen.url}, degraded ({degraded.reason}): {degraded.message}"), requeue  # fmt: skip
    if adapters is not None and adapters.status is False:
        return Cond(READY, False, Reason.ADAPTERS_LOADING, adapters.message), True
    if not w.rolled_out:
        stuck = f"; not ready: {w.cause.message}" if w.cause else ""
        return Cond(READY, True, Reason.MINIMUM_REPLICAS_AVAILABLE,
                    f"serving; rollout in progress ({available.message}){stuck}"), True  # fmt: skip
    if w.desired == 0:
        return Cond(
            READY, True, Reason.SUCCEEDED, f"scaled to zero; serves {seen.url} again when scaled up"
        ), False
    return Cond(
        READY, True, Reason.SUCCEEDED, f"serving {', '.join(seen.served_models)} at {seen.url}"
    ), False


def adapter_states(a: Adapters) -> list[AdapterState]:
    """status.adapters: each adapter of the spec, and on how many ready Pods it is served."""
    by_name = {s.name: s for s in a.summary.adapters}
    states: list[AdapterState] = []
    for name in sorted(set(by_name) | set(a.refused) | set(a.pending)):
        if name in a.refused:
            states.append(AdapterState(name=name, state="Failed", message=a.refused[name][:4000]))
        elif name in a.pending:
            states.append(AdapterState(name=name, state="Pending", message=a.pending[name][:4000]))
        else:
            s = by_name[name]
            state = _STATES.get(s.state, "Pending") if s.total_pods else "Pending"
            states.append(AdapterState(name=name, digest=s.digest or None, ready_pods=s.ready_pods, state=state,
                                       message=(s.message or None) if s.total_pods else None))  # fmt: skip
    return states
