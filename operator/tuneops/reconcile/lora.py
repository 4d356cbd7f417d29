"""An InferenceService's runtime adapters: ask each ready vLLM Pod what it serves and bring it in line."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

from tuneops.adapters import (
    AdapterClient,
    AdapterState,
    Deadline,
    DesiredAdapter,
    PodMemory,
    PodResult,
    describe,
    gate,
    plan_pod,
    pod_problems,
    pod_url,
    reconcile_pod,
    summarize,
)
from tuneops.adapters.client import PASS_DEADLINE_S, POD_ERRORS
from tuneops.adapters.fetching import Fetched, LoaderClient, kept_paths, resolve
from tuneops.adapters.passes import PassRunner
from tuneops.api.common import fetched_by_loader
from tuneops.api.inferenceservice import InferenceServiceSpec, PodAdapters
from tuneops.kube import client as k
from tuneops.kube.types import POD
from tuneops.reconcile.base import Context
from tuneops.reconcile.service_status import Adapters
from tuneops.reconcile.sources import Sources
from tuneops.render import serving as render
from tuneops.render.serving import loader
from tuneops.render.serving.types import LOADER_PORT
from tuneops.render.serving.vllm import LWS_WORKER_INDEX
from tuneops.render.types import Owner, ResolvedAdapter

log = logging.getLogger(__name__)
# Pods of one service talked to at once; the rest wait their turn within the same pass deadline.
POD_CONCURRENCY = 8
# Passes run off the operator's reconcile threads: a reconcile waits a few seconds for its pass, then reports
# the Pods as not answering yet, while the pass goes on to its deadline and queues the service again when done.
_PASSES: PassRunner[list[PodResult]] = PassRunner("tuneops-adapters")


class PassInputs(NamedTuple):
    """What a pass is made from; a finished pass answers only a call made from the same."""

    desired: tuple[tuple[str, str, str, str, str], ...]  # name, path, digest, uri, role
    pods: tuple[tuple[str, str | None, str], ...]  # name, uid, podIP
    api_key: str | None
    dynamic: bool


def desired_adapter(a: ResolvedAdapter, ctx: Context) -> DesiredAdapter:
    """What the Pods should serve of one adapter: a path vLLM reads, or a URI their adapter loader fetches."""
    if fetched_by_loader(a.uri):
        role = loader.secret_role(a.token_secret) if a.token_secret else ""
        return DesiredAdapter(name=a.name, path="", digest=a.digest or "", uri=a.uri, role=role)
    return DesiredAdapter(name=a.name, path=render.adapter_path(a.uri, ctx.config), digest=a.digest or "")


def lora_enabled(spec: InferenceServiceSpec, sources: Sources) -> bool:
    return spec.runtime == "vllm" and bool((spec.lora and spec.lora.adapters) or sources.adapters)


def reconcile_adapters(
    ctx: Context, spec: InferenceServiceSpec, owner: Owner, pods: list[dict[str, Any]], sources: Sources
) -> tuple[Adapters, list[PodAdapters]]:
    """Load and unload adapters on every ready serving Pod of `pods` (the service's; or, with lora.dynamic
    false, only read what they serve); the truth comes from each Pod's /v1/models afterwards.

    Returns the verdict and status.pods: only the Pods that do not serve what they should, at most ten."""
    desired = {a.name: desired_adapter(a, ctx) for a in sources.servable}
    ready = ready_pods(pods)
    lora = render.effective_lora(spec, sources.adapters)
    dynamic = bool(lora and lora.dynamic)
    results: list[PodResult] = []
    if ready:
        inputs = PassInputs(
            tuple(sorted((d.name, d.path, d.digest, d.uri, d.role) for d in desired.values())),
            tuple((p["metadata"]["name"], p["metadata"].get("uid"), p["status"]["podIP"]) for p in ready),
            sources.api_key,
            dynamic,
        )
        service = (owner.namespace, owner.name)
        memories = MEMORIES.of(service, ready)

        def superseded(made_from: Hashable, done: list[PodResult]) -> None:
            # A pass made from older inputs failed what it failed: count that, and start the next pass from it.
            if isinstance(made_from, PassInputs) and made_from.dynamic:
                MEMORIES.keep(service, made_from, done)
                memories.update(MEMORIES.of(service, ready))

        finished = _PASSES.run(
            (owner.namespace, owner.name),
            inputs,
            lambda: reconcile_pods(owner, ready, desired, sources.api_key, dynamic, memories=memories),
            superseded,
            late=lambda: ctx.wake("InferenceService", owner.namespace, owner.name, "adapters"),
        )
        if finished is not None and dynamic:
            MEMORIES.keep(service, inputs, finished)
            if _more_to_do(finished):
                # A pass does a bounded number of calls per Pod; the rest is the next pass's, at once. Nothing
                # else would wake the service: the Pods' answers are not objects the operator watches.
                ctx.wake("InferenceService", owner.namespace, owner.name, "adapters", NEXT_PASS_S)
        results = finished if finished is not None else [_no_answer_yet(p) for p in ready]
    if dynamic:
        set_gates(ctx, owner, pods, results)
    problems = [PodAdapters(pod=p.pod, ready_adapters=p.ready_adapters, message=p.message)
                for p in pod_problems(desired, results)]  # fmt: skip
    return Adapters(summarize(desired, results), sources.refused, sources.pending), problems


# The next adapter pass when a pass left work (more adapters than its per-Pod call budget, or a failed load
# still under its attempt limit): soon, but not in the same breath.
NEXT_PASS_S = 0.5


def _more_to_do(results: list[PodResult]) -> bool:
    """Whether a reachable Pod still has an adapter on its way in or out (Loading, Unloading): failed ones past
    their attempts are Failed and wait for a person."""
    busy = {AdapterState.LOADING, AdapterState.UNLOADING}
    return any(r.reachable and any(s.state in busy for s in r.states.values()) for r in results)


class Memories:
    """Each serving Pod's failed adapter attempts, in the operator's own memory, by service and Pod uid.

    Nothing here says what a Pod serves (every pass asks the Pod), so losing it (a restart) costs at most
    max_attempts more tries of an adapter that keeps failing. Only the Pods of a service's latest pass are kept,
    and only those with failures; services beyond ``limit`` are forgotten oldest first."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self._by_service: OrderedDict[tuple[str, str], dict[str, PodMemory]] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, service: tuple[str, str], pods: list[dict[str, Any]]) -> dict[str, PodMemory]:
        """By Pod name: what each of ``pods`` (the same Pod: its uid) remembers."""
        with self._lock:
            kept = self._by_service.get(service, {})
            return {p["metadata"]["name"]: kept.get(str(p["metadata"].get("uid")), PodMemory()) for p in pods}

    def keep(self, service: tuple[str, str], made_from: PassInputs, results: list[PodResult]) -> None:
        """What a finished pass leaves each of its Pods remembering; the service's other Pods are forgotten."""
        uids = {name: str(uid) for name, uid, _ in made_from.pods}
        fresh = {uids[r.pod]: r.memory for r in results if r.pod in uids and r.memory.failures}
        with self._lock:
            if fresh:
                self._by_service[service] = fresh
                self._by_service.move_to_end(service)
                while len(self._by_service) > self.limit:
                    self._by_service.popitem(last=False)
            else:
                self._by_service.pop(service, None)

    def forget(self, service: tuple[str, str]) -> None:
        with self._lock:
            self._by_service.pop(service, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_service)


MEMORIES = Memories()


def _no_answer_yet(pod: dict[str, Any]) -> PodResult:
    name = pod["metadata"]["name"]
    return PodResult(pod=name, reachable=False, error="no answer yet (the adapter pass is still running)")


def ready_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pods whose servers take adapters: ready ones (those the Service sends requests to), and those held
    back only by the adapters gate (containers ready, adapters not yet all served); for a LeaderWorkerSet only the
    leaders (a worker runs no API server; the Service selects worker index 0)."""
    out = []
    for p in pods:
        meta, st = p.get("metadata") or {}, p.get("status") or {}
        if meta.get("deletionTimestamp") or not st.get("podIP"):
            continue
        if (meta.get("labels") or {}).get(LWS_WORKER_INDEX, "0") != "0":
            continue
        if gate.is_true(p, "Ready") or (gate.gated(p) and gate.is_true(p, "ContainersReady")):
            out.append(p)
    return sorted(out, key=lambda p: p["metadata"]["name"])


def set_gates(ctx: Context, owner: Owner, pods: list[dict[str, Any]], results: list[PodResult]) -> int:
    """Sets the adapters gate of each of the service's gated Pods from this pass (gate.decide); writes only
    what changed. Returns the number of Pods written."""
    by_pod = {r.pod: r for r in results}
    written = 0
    for p in pods:
        meta = p.get("metadata") or {}
        if meta.get("deletionTimestamp") or not gate.gated(p):
            continue
        want = gate.decide(p, by_pod.get(meta["name"]), results)
        if want is None or not gate.differs(p, want):
            continue
        try:
            ctx.kube.patch(
                POD,
                owner.namespace,
                meta["name"],
                gate.patch_body(p, want, ctx.clock()),
                "status",
                strategic=True,
            )
            written += 1
        except k.NotFound:
            continue  # gone meanwhile
        except k.ApiError as exc:  # the next pass tries again; the Pod keeps its last gate meanwhile
            log.warning("adapters gate of Pod %s/%s: %s", owner.namespace, meta["name"], exc)
    return written


async def _observe_pod(pod: str, client: AdapterClient, desired: dict[str, DesiredAdapter]) -> PodResult:
    """Static adapters (lora.dynamic false): read what the Pod serves; it loaded them from --lora-modules."""
    try:
        served = await client.list_models()
    except POD_ERRORS as exc:  # an unreachable Pod serves nothing this pass
        return PodResult(pod=pod, reachable=False, error=describe(exc))
    plan = plan_pod(desired, served, PodMemory())
    # A ready server has read its --lora-modules: an adapter it does not serve was left out at start (the
    # launcher refuses one vLLM would fail on, and logs why), and nothing loads it later without the runtime API.
    states = {
        name: state
        if state.state is AdapterState.READY or not state.desired
        else state.model_copy(
            update={
                "state": AdapterState.FAILED,
                "message": "left out at start: the server did not load it (its log names why); with lora.dynamic "
                "false adapters load only at start: fix the adapter, then restart the Pods or set lora.dynamic",
            }
        )
        for name, state in plan.states.items()
    }
    return PodResult(pod=pod, reachable=True, served=served, states=states)


async def reconcile_pods(
    owner: Owner,
    pods: list[dict[str, Any]],
    desired: dict[str, DesiredAdapter],
    api_key: str | None,
    dynamic: bool,
    *,
    memories: Mapping[str, PodMemory] | None = None,
    deadline_s: float = PASS_DEADLINE_S,
    port: int = render.PORT,
    loader_port: int = LOADER_PORT,
) -> list[PodResult]:
    """One pass over the Pods, in parallel up to POD_CONCURRENCY, all within one deadline; whatever one Pod
    answers (or fails to) becomes its own result and never the others'.

    Each Pod starts from ``memories`` (by Pod name: its failed attempts; none when absent); what it remembers
    afterwards is in its result, for the caller to keep."""
    ns = owner.namespace
    deadline = Deadline(deadline_s)
    turns = asyncio.Semaphore(POD_CONCURRENCY)

    async def one(pod: dict[str, Any]) -> PodResult:
        pod_name = pod["metadata"]["name"]
        memory = (memories or {}).get(pod_name) or PodMemory()
        try:
            async with turns, asyncio.timeout(deadline.remaining() + 2.0):
                url = pod_url(pod["status"]["podIP"], port)
                async with AdapterClient(url, api_key=api_key, deadline=deadline) as client:
                    if not dynamic:
                        return await _observe_pod(pod_name, client, desired)
                    if not any(d.uri for d in desired.values()):
                        return await reconcile_pod(pod_name, client, desired, memory)
                    loader_url = pod_url(pod["status"]["podIP"], loader_port)
                    return await _with_loader(
                        pod_name, client, loader_url, api_key, desired, memory, deadline
                    )
        except POD_ERRORS as exc:
            return PodResult(pod=pod_name, reachable=False, error=describe(exc), memory=memory)
        except Exception as exc:  # a bug met on one Pod's answer must not cost the other Pods their pass
            log.exception("adapters on Pod %s/%s", ns, pod_name)
            return PodResult(pod=pod_name, reachable=False, error=describe(exc), memory=memory)

    return list(await asyncio.gather(*(one(p) for p in pods)))


async def _with_loader(
    pod: str,
    client: AdapterClient,
    loader_url: str,
    api_key: str | None,
    desired: dict[str, DesiredAdapter],
    memory: PodMemory,
    deadline: Deadline,
) -> PodResult:
    """A Pod with adapters its loader fetches: sync the loader first (what the server still reads stays in its
    cache), plan the server with the folders that are ready, and report the others as Loading or Failed."""
    try:
        served = await client.list_models()
    except POD_ERRORS as exc:
        return PodResult(pod=pod, reachable=False, error=describe(exc), memory=memory)
    wanted = {n: d for n, d in desired.items() if d.uri}

    async def sync(keep: list[str]) -> dict[str, Fetched]:
        lc = LoaderClient(loader_url, api_key=api_key, deadline=deadline)
        async with lc:
            return await lc.sync(wanted, keep)

    try:
        fetched = await sync(kept_paths(served))
    except POD_ERRORS as exc:
        # No loader (a Pod from before the spec named such an adapter) or one that fails: the others go on.
        note = f"the Pod's adapter loader does not answer: {describe(exc)}"
        fetched = {n: Fetched(state="Fetching", message=note) for n in wanted}
    plan, waiting = resolve(desired, served, fetched)
    result = await reconcile_pod(pod, client, plan, memory)
    if not result.reachable:
        return result
    after = kept_paths(result.served) if result.served is not None else None
    if after is not None and set(kept_paths(served)) - set(after):
        # The server let go of cached folders (an unload, a reload from a new version): the loader frees them now
        # rather than at the next pass. Best effort: the next sync frees them anyway.
        with contextlib.suppress(*POD_ERRORS):
            await sync(after)
    return result.model_copy(update={"states": {**result.states, **waiting}})
