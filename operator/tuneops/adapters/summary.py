"""Summarises per-pod adapter truth into per-adapter counts and the AdaptersReady condition."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tuneops.adapters.client import excerpt
from tuneops.adapters.types import (
    AdapterPodState,
    AdaptersSummary,
    AdapterState,
    AdapterSummary,
    DesiredAdapter,
    PodProblem,
    PodResult,
)
from tuneops.api.conditions import Reason

# Status stays a few KiB at any fleet size: lists in messages name this many items, then count the rest.
NAMED_MAX = 5
# status.pods names at most this many Pods (those that do not serve what they should).
PODS_NAMED_MAX = 10


def summarize(desired: Mapping[str, DesiredAdapter], pods: Sequence[PodResult]) -> AdaptersSummary:
    """Count, per desired adapter, the ready pods that serve it, and decide AdaptersReady.

    ``pods`` holds one result per pod whose server takes adapters (Ready, or held back only by the adapters
    readiness gate, tuneops.adapters.gate); an unreachable pod counts in the total
    but serves nothing. AdaptersReady is True only when every desired adapter is served on every such pod
    and no adapter that was removed from the spec is still served.
    """
    adapters = [_adapter_summary(name, desired[name], pods) for name in sorted(desired)]
    failures = [a.message for a in adapters if a.state is AdapterState.FAILED]
    stale, stale_failed = _stale(pods)
    unreachable = [f"{pod.pod}: {excerpt(pod.error)}" for pod in pods if not pod.reachable]
    if failures:
        return _done(adapters, False, Reason.ADAPTER_LOAD_FAILED, named(failures, "; "))
    if stale_failed:
        return _done(adapters, False, Reason.ADAPTER_UNLOAD_FAILED, named(stale_failed, "; "))
    if not desired and not stale and not unreachable:
        return _done(adapters, True, Reason.NO_ADAPTERS, "no adapters requested")
    return _served(adapters, len(pods), stale, unreachable)


def _adapter_summary(name: str, want: DesiredAdapter, pods: Sequence[PodResult]) -> AdapterSummary:
    """One desired adapter's count of ready pods, and its aggregate state (Failed if any pod failed it)."""
    total = len(pods)
    ready = 0
    failed: list[tuple[str, AdapterPodState]] = []
    for pod in pods:
        state = pod.states.get(name)
        if state is None:
            continue
        if state.state is AdapterState.READY:
            ready += 1
        elif state.state is AdapterState.FAILED:
            failed.append((pod.pod, state))
    if failed:
        aggregate = AdapterState.FAILED
        pod_name, first = failed[0]
        message = excerpt(
            f"adapter {name} failed to load on {len(failed)}/{total} pod(s) "
            f"(pod {pod_name}, {first.attempts} attempt(s)): {first.message}"
        )
    elif total and ready == total:
        aggregate, message = AdapterState.READY, ""
    else:
        aggregate, message = AdapterState.LOADING, f"served on {ready}/{total} ready pod(s)"
    return AdapterSummary(
        name=name,
        digest=want.digest,
        ready_pods=ready,
        total_pods=total,
        state=aggregate,
        message=message,
    )


def _stale(pods: Sequence[PodResult]) -> tuple[list[str], list[str]]:
    """Adapters still served though no longer desired: those being unloaded, and those that failed to."""
    stale: list[str] = []
    stale_failed: list[str] = []
    for pod in pods:
        for state in pod.states.values():
            if state.desired:
                continue
            if state.state is AdapterState.FAILED:
                stale_failed.append(
                    f"adapter {excerpt(state.name, 80)} could not be unloaded on pod {pod.pod}: "
                    f"{excerpt(state.message)}"
                )
            else:
                stale.append(f"{excerpt(state.name, 80)} on {pod.pod}")
    return stale, stale_failed


def _served(
    adapters: list[AdapterSummary], total: int, stale: list[str], unreachable: list[str]
) -> AdaptersSummary:
    """AdaptersReady once nothing has failed: whether every ready pod serves exactly the desired set."""
    if total == 0:
        return _done(adapters, False, Reason.NO_READY_PODS, "no ready pods to serve adapters on")
    if unreachable:
        return _done(
            adapters, False, Reason.POD_UNREACHABLE, "cannot read adapters from " + named(unreachable, "; ")
        )
    pending = [a for a in adapters if a.state is not AdapterState.READY]
    if pending or stale:
        parts = [f"{a.name} served on {a.ready_pods}/{a.total_pods} pod(s)" for a in pending]
        message = named(parts, "; ")
        if stale:
            message = "; ".join(filter(None, (message, "unloading " + named(stale, ", "))))
        return _done(adapters, False, Reason.ADAPTERS_LOADING, message)
    return _done(
        adapters,
        True,
        Reason.ALL_ADAPTERS_SERVED,
        f"{len(adapters)} adapter(s) served on {total} ready pod(s)",
    )


def _done(adapters: list[AdapterSummary], ready: bool, reason: str, message: str) -> AdaptersSummary:
    return AdaptersSummary(adapters=tuple(adapters), ready=ready, reason=reason, message=message)


def named(items: Sequence[str], sep: str, limit: int = NAMED_MAX) -> str:
    """The first ``limit`` items joined, and how many more there are."""
    shown = sep.join(items[:limit])
    return f"{shown}{sep}and {len(items) - limit} more" if len(items) > limit else shown


def pod_problems(
    desired: Mapping[str, DesiredAdapter], pods: Sequence[PodResult], limit: int = PODS_NAMED_MAX
) -> tuple[PodProblem, ...]:
    """status.pods: the first ``limit`` Pods that do not serve exactly the desired adapters, each with a
    one-line reason. Pods that do are only counted (status.adapters[].readyPods)."""
    problems: list[PodProblem] = []
    for pod in pods:
        if len(problems) >= limit:
            break
        if not pod.reachable:
            problems.append(PodProblem(pod=pod.pod, message=excerpt(f"unreachable: {pod.error}")))
            continue
        ready = sum(
            1 for n in desired if (s := pod.states.get(n)) is not None and s.state is AdapterState.READY
        )
        issues = [
            f"{excerpt(s.name, 80)} {s.state.value.lower()}" + (f": {s.message}" if s.message else "")
            for s in sorted(pod.states.values(), key=lambda s: (s.state is not AdapterState.FAILED, s.name))
            if s.state is not AdapterState.READY
        ]
        if pod.served is not None and pod.served.ignored:
            issues.append(f"lists {pod.served.ignored} more model(s) than are read; ignored")
        if issues:
            problems.append(
                PodProblem(pod=pod.pod, ready_adapters=ready, message=excerpt(named(issues, "; ", 3)))
            )
    return tuple(problems)
