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
        want = desired[name]
        if want.name != name:
            raise ValueError(f"desired adapter keyed {name!r} is named {want.name!r}")
        failure = _failure_for(memory, name, want.digest)
        attempts = failure.attempts if failure else 0
        last_error = failure.message if failure else ""
        served_path = served.adapters.get(name)
        known = memory.loaded.get(name)
        if served_path is not None and known == want.digest and served_path == want.path:
            states[name] = AdapterPodState(name=name, state=AdapterState.READY, digest=want.digest)
            continue
        if attempts >= max_attempts:
            states[name] = AdapterPodState(
                name=name,
                state=AdapterState.FAILED,
                digest=want.digest,
                attempts=attempts,
                message=last_error,
            )
            continue
        if served_path is None:
            kind, reason = ActionKind.LOAD, "not served"
        else:
            kind = ActionKind.LOAD_INPLACE
            if known is None:
                reason = "served with unknown digest"
            elif known != want.digest:
                reason = f"digest changed from {known}"
                if served_path == want.path:
                    # vLLM keys prefix-cache blocks by (name, path); same-path reloads can reuse old KV blocks
                    reason += (
                        " at the same path (stale prefix-cache blocks possible: use a digest-specific path)"
                    )
            else:
                reason = f"served from {served_path}"
        loads.append(AdapterAction(kind=kind, name=name, path=want.path, digest=want.digest, reason=reason))
        states[name] = AdapterPodState(
            name=name,
            state=AdapterState.LOADING,
            digest=want.digest,
            attempts=attempts,
            message=last_error,
        )
    for name in sorted(set(served.adapters) - set(desired)):
        failure = _failure_for(memory, name, "")
        attempts = failure.attempts if failure else 0
        last_error = failure.message if failure else ""
        if attempts >= max_attempts:
            state = AdapterState.FAILED
        else:
            state = AdapterState.UNLOADING
            unloads.append(AdapterAction(kind=ActionKind.UNLOAD, name=name, reason="not desired"))
        states[name] = AdapterPodState(
            name=name,
            state=state,
            desired=False,
            digest=memory.loaded.get(name, ""),
            attempts=attempts,
            message=last_error,
        )
    # unloads first: they free the server's adapter slots (--max-cpu-loras) the loads may need
    return PodPlan(actions=(*unloads, *loads), states=states)


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
