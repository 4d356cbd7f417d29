"""Pure planning of runtime LoRA changes for one pod, and the bookkeeping of their outcomes."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from tuneops.adapters.types import (
    DEFAULT_MAX_ATTEMPTS,
    ActionKind,
    ActionResult,
    AdapterAction,
    AdapterPodState,
    AdapterState,
    DesiredAdapter,
    FailureRecord,
    PodMemory,
    PodPlan,
    ServedModels,
)


def _failure_for(memory: PodMemory, name: str, target: str) -> FailureRecord | None:
    record = memory.failures.get(name)
    # attempts count per path: fixed weights published under a new (content-addressed) path earn fresh tries
    if record is None or record.target != target:
        return None
    return record


def plan_pod(
    desired: Mapping[str, DesiredAdapter],
    served: ServedModels,
    memory: PodMemory,
    *,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> PodPlan:
    """Decide which load / in-place load / unload calls bring ``served`` to ``desired`` on one pod.

    The server is the only truth: an adapter is Ready when the pod lists it loaded from the desired path (which
    carries the digest for a FineTunedModel's adapter), whoever loaded it. Listed from another path (an older
    digest, or someone else's load under that name), it is reloaded (unloaded, then loaded) from the desired path; listed but
    not desired, it is unloaded. ``memory`` only counts failed attempts: after ``max_attempts`` failures for the
    same path an adapter is Failed and no longer retried.
    """
    if max_attempts < 1:
        raise ValueError("max_attempts must be at least 1")
    loads: list[AdapterAction] = []
    unloads: list[AdapterAction] = []
    states: dict[str, AdapterPodState] = {}
    for name in sorted(desired):
        action, states[name] = _plan_desired(name, desired[name], served, memory, max_attempts)
        if action is not None:
            loads.append(action)
    for name in sorted(set(served.adapters) - set(desired)):
        action, states[name] = _plan_undesired(name, memory, max_attempts)
        if action is not None:
            unloads.append(action)
    # unloads first: they free the server's adapter slots (--max-cpu-loras) the loads may need
    return PodPlan(actions=(*unloads, *loads), states=states)


def _past_failures(memory: PodMemory, name: str, target: str) -> tuple[int, str]:
    """Failed attempts so far for ``name`` at ``target``, and the last error message."""
    failure = _failure_for(memory, name, target)
    return (failure.attempts, failure.message) if failure else (0, "")


def _plan_desired(
    name: str, want: DesiredAdapter, served: ServedModels, memory: PodMemory, max_attempts: int
) -> tuple[AdapterAction | None, AdapterPodState]:
    """The load (if any) one desired adapter needs, and its state on the pod."""
    if want.name != name:
        raise ValueError(f"desired adapter keyed {name!r} is named {want.name!r}")
    served_path = served.adapters.get(name)
    if served_path == want.path:
        return None, AdapterPodState(name=name, state=AdapterState.READY, digest=want.digest)
    attempts, last_error = _past_failures(memory, name, want.path)
    state = AdapterState.FAILED if attempts >= max_attempts else AdapterState.LOADING
    pod_state = AdapterPodState(
        name=name, state=state, digest=want.digest, attempts=attempts, message=last_error
    )
    if state is AdapterState.FAILED:
        return None, pod_state
    if served_path is None:
        kind, reason = ActionKind.LOAD, "not served"
    else:
        kind, reason = ActionKind.RELOAD, f"served from {served_path[:120]!r}"
    return AdapterAction(kind=kind, name=name, path=want.path, digest=want.digest, reason=reason), pod_state


def _plan_undesired(
    name: str, memory: PodMemory, max_attempts: int
) -> tuple[AdapterAction | None, AdapterPodState]:
    """The unload (if any) an adapter served but no longer desired needs, and its state on the pod."""
    attempts, last_error = _past_failures(memory, name, "")
    action = None
    if attempts >= max_attempts:
        state = AdapterState.FAILED
    else:
        state = AdapterState.UNLOADING
        action = AdapterAction(kind=ActionKind.UNLOAD, name=name, reason="not desired")
    pod_state = AdapterPodState(name=name, state=state, desired=False, attempts=attempts, message=last_error)
    return action, pod_state


def record_results(
    memory: PodMemory,
    results: Iterable[ActionResult],
    served_after: ServedModels | None,
) -> PodMemory:
    """Fold the answers to one pass's actions, and what the pod lists afterwards, into its failed attempts.

    A load counts as done only when the pod lists the adapter from the loaded path afterwards, so a server that
    answers 200 and drops (or mislabels) the adapter cannot keep it Loading forever.
    """
    failures = dict(memory.failures)

    def fail(name: str, target: str, message: str) -> None:
        previous = failures.get(name)
        attempts = previous.attempts + 1 if previous is not None and previous.target == target else 1
        failures[name] = FailureRecord(target=target, attempts=attempts, message=message)

    for result in results:
        action = result.action
        listed = None if served_after is None else served_after.adapters.get(action.name)
        if action.kind is ActionKind.UNLOAD:
            # an unload answered 404 because the adapter is already gone is done, as the listing shows
            if result.ok or (served_after is not None and listed is None):
                failures.pop(action.name, None)
            else:
                fail(action.name, "", result.message)
        elif not result.ok:
            fail(action.name, action.path, result.message)
        elif served_after is not None and listed is None:
            fail(action.name, action.path, "the server accepted the load but does not list the adapter")
        elif served_after is not None and listed != action.path:
            fail(
                action.name,
                action.path,
                f"the server accepted the load but lists it from {(listed or '')[:120]!r}",
            )
        else:
            failures.pop(action.name, None)
    return PodMemory(failures=failures)
