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


def _failure_for(memory: PodMemory, name: str, digest: str) -> FailureRecord | None:
    record = memory.failures.get(name)
    # attempts count per digest: publishing fixed weights under the same name earns a fresh set of tries
    if record is None or record.digest != digest:
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

    An adapter is Ready only when the pod lists it, from the desired path, and the digest we last loaded under
    that name is the desired one. A listed adapter whose digest is unknown (the pod restarted, or another
    writer loaded it) is reloaded in place: the name alone says nothing about which weights are served.
    After ``max_attempts`` failures for the same digest an adapter is Failed and no longer retried.
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


def _past_failures(memory: PodMemory, name: str, digest: str) -> tuple[int, str]:
    """Failed attempts so far for ``name`` at ``digest``, and the last error message."""
    failure = _failure_for(memory, name, digest)
    return (failure.attempts, failure.message) if failure else (0, "")


def _plan_desired(
    name: str, want: DesiredAdapter, served: ServedModels, memory: PodMemory, max_attempts: int
) -> tuple[AdapterAction | None, AdapterPodState]:
    """The load (if any) one desired adapter needs, and its state on the pod."""
    if want.name != name:
        raise ValueError(f"desired adapter keyed {name!r} is named {want.name!r}")
    attempts, last_error = _past_failures(memory, name, want.digest)
    served_path = served.adapters.get(name)
    known = memory.loaded.get(name)
    if served_path is not None and known == want.digest and served_path == want.path:
        return None, AdapterPodState(name=name, state=AdapterState.READY, digest=want.digest)
    state = AdapterState.FAILED if attempts >= max_attempts else AdapterState.LOADING
    pod_state = AdapterPodState(
        name=name, state=state, digest=want.digest, attempts=attempts, message=last_error
    )
    if state is AdapterState.FAILED:
        return None, pod_state
    kind, reason = _load_reason(want, served_path, known)
    return AdapterAction(kind=kind, name=name, path=want.path, digest=want.digest, reason=reason), pod_state


def _load_reason(want: DesiredAdapter, served_path: str | None, known: str | None) -> tuple[ActionKind, str]:
    """Whether to load or reload in place, and why, for a desired adapter that is not Ready."""
    if served_path is None:
        return ActionKind.LOAD, "not served"
    if known is None:
        return ActionKind.LOAD_INPLACE, "served with unknown digest"
    if known == want.digest:
        return ActionKind.LOAD_INPLACE, f"served from {served_path}"
    reason = f"digest changed from {known}"
    if served_path == want.path:
        # vLLM keys prefix-cache blocks by (name, path); same-path reloads can reuse old KV blocks
        reason += " at the same path (stale prefix-cache blocks possible: use a digest-specific path)"
    return ActionKind.LOAD_INPLACE, reason


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
    pod_state = AdapterPodState(
        name=name,
        state=state,
        desired=False,
        digest=memory.loaded.get(name, ""),
        attempts=attempts,
        message=last_error,
    )
    return action, pod_state


def record_results(
    memory: PodMemory,
    results: Iterable[ActionResult],
    served_after: ServedModels | None,
) -> PodMemory:
    """Fold the answers to one pass's actions, and what the pod lists afterwards, into the pod's memory.

    A load the server accepted but does not list afterwards counts as a failed attempt, so a server that
    answers 200 and drops the adapter cannot keep it Loading forever.
    """
    loaded = dict(memory.loaded)
    failures = dict(memory.failures)

    def fail(name: str, digest: str, message: str) -> None:
        previous = failures.get(name)
        attempts = previous.attempts + 1 if previous is not None and previous.digest == digest else 1
        failures[name] = FailureRecord(digest=digest, attempts=attempts, message=message)

    for result in results:
        action = result.action
        if action.kind is ActionKind.UNLOAD:
            # an unload answered 404 because the adapter is already gone is done, as the listing shows
            gone = served_after is not None and action.name not in served_after.adapters
            if result.ok or gone:
                loaded.pop(action.name, None)
                failures.pop(action.name, None)
            else:
                fail(action.name, "", result.message)
            continue
        if not result.ok:
            # a failed in-place load leaves the previous weights serving, so the known digest stays
            fail(action.name, action.digest, result.message)
            continue
        if served_after is not None and action.name not in served_after.adapters:
            fail(action.name, action.digest, "the server accepted the load but does not list the adapter")
            continue
        loaded[action.name] = action.digest
        failures.pop(action.name, None)
    if served_after is not None:
        # a restarted pod, or an adapter unloaded by someone else: what it no longer lists has no digest
        loaded = {name: digest for name, digest in loaded.items() if name in served_after.adapters}
    return PodMemory(loaded=loaded, failures=failures)
