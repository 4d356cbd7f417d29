"""An InferenceService's runtime adapters: ask each ready vLLM Pod what it serves and bring it in line."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping
from typing import Any, NamedTuple

from tuneops import labels
from tuneops.adapters import (
    AdapterClient,
    Deadline,
    DesiredAdapter,
    PodMemory,
    PodResult,
    decode_memory,
    describe,
    encode_memory,
    plan_pod,
    pod_problems,
    pod_url,
    reconcile_pod,
    summarize,
)
from tuneops.adapters.client import PASS_DEADLINE_S, POD_ERRORS
from tuneops.adapters.passes import PassRunner
from tuneops.api.inferenceservice import InferenceServiceSpec, PodAdapters
from tuneops.kube import client as k
from tuneops.reconcile.base import Context
from tuneops.reconcile.service_status import Adapters
from tuneops.reconcile.sources import Sources
from tuneops.render import serving as render
from tuneops.render.serving.vllm import LWS_WORKER_INDEX
from tuneops.render.types import Owner

log = logging.getLogger(__name__)
# Pods of one service talked to at once; the rest wait their turn within the same pass deadline.
POD_CONCURRENCY = 8
# Passes run off the operator's reconcile threads: a reconcile waits a few seconds for its pass, then reports
# the Pods as not answering yet, while the pass goes on to its deadline and queues the service again when done.
_PASSES: PassRunner[list[PodResult]] = PassRunner("tuneops-adapters")


class PassInputs(NamedTuple):
    """What a pass is made from; a finished pass answers only a call made from the same."""

    desired: tuple[tuple[str, str, str], ...]  # name, path, digest
    pods: tuple[tuple[str, str | None, str], ...]  # name, uid, podIP
    api_key: str | None
    dynamic: bool


def lora_enabled(spec: InferenceServiceSpec, sources: Sources) -> bool:
    return spec.runtime == "vllm" and bool((spec.lora and spec.lora.adapters) or sources.adapters)


def reconcile_adapters(
    ctx: Context, spec: InferenceServiceSpec, owner: Owner, pods: list[dict[str, Any]], sources: Sources
) -> tuple[Adapters, list[PodAdapters]]:
    """Load and unload adapters on every ready serving Pod of `pods` (the service's; or, with lora.dynamic
    false, only read what they serve); the truth comes from each Pod's /v1/models afterwards.

    Returns the verdict and status.pods: only the Pods that do not serve what they should, at most ten."""
    desired = {
        a.name: DesiredAdapter(
            name=a.name, path=render.adapter_path(a.uri, ctx.config), digest=a.digest or ""
        )
        for a in sources.servable
    }
    ready = ready_pods(pods)
    lora = render.effective_lora(spec, sources.adapters)
    dynamic = bool(lora and lora.dynamic)
    results: list[PodResult] = []
    if ready:
        inputs = PassInputs(
            tuple(sorted((d.name, d.path, d.digest) for d in desired.values())),
            tuple((p["metadata"]["name"], p["metadata"].get("uid"), p["status"]["podIP"]) for p in ready),
            sources.api_key,
            dynamic,
        )
        memories = {p["metadata"]["name"]: pod_memory(p, desired) for p in ready}

        def superseded(made_from: Hashable, done: list[PodResult]) -> None:
            # A pass made from older inputs loaded what it loaded: record that, and start the next pass from it.
            if isinstance(made_from, PassInputs) and made_from.dynamic:
                fresh = remember(ctx, owner.namespace, pods, made_from, done)
                memories.update((n, m) for n, m in fresh.items() if n in memories)

        finished = _PASSES.run(
            (owner.namespace, owner.name),
            inputs,
            lambda: reconcile_pods(owner, ready, desired, sources.api_key, dynamic, memories=memories),
            superseded,
            late=lambda: ctx.wake("InferenceService", owner.namespace, owner.name, "adapters"),
        )
        if finished is not None and dynamic:
            remember(ctx, owner.namespace, pods, inputs, finished)
        results = finished if finished is not None else [_no_answer_yet(p) for p in ready]
    problems = [PodAdapters(pod=p.pod, ready_adapters=p.ready_adapters, message=p.message)
                for p in pod_problems(desired, results)]  # fmt: skip
    return Adapters(summarize(desired, results), sources.refused, sources.pending), problems


def pod_memory(pod: Mapping[str, Any], desired: Mapping[str, DesiredAdapter]) -> PodMemory:
    """What the Pod's annotation says was loaded there and failed (nothing, for a value the operator did not
    write: the Pod's owner can edit it, and then reloads or skips a reload of its own adapters)."""
    return decode_memory(_annotation(pod), desired)


def _annotation(pod: Mapping[str, Any]) -> object:
    annotations = (pod.get("metadata") or {}).get("annotations")
    return annotations.get(labels.ADAPTER_MEMORY) if isinstance(annotations, dict) else None


def memory_writes(
    pods: list[dict[str, Any]], made_from: PassInputs, results: list[PodResult]
) -> tuple[list[tuple[str, str | None]], dict[str, PodMemory]]:
    """What a finished pass leaves each Pod remembering: the annotation values to write (None removes it), only
    where the Pod's annotation says otherwise, and the memories by Pod name.

    Only Pods the pass was made from count: a Pod gone since, or a new one under the same name, gets nothing."""
    uids = {name: uid for name, uid, _ in made_from.pods}
    by_name = {p["metadata"]["name"]: p for p in pods}
    writes: list[tuple[str, str | None]] = []
    fresh: dict[str, PodMemory] = {}
    for result in results:
        pod = by_name.get(result.pod)
        if pod is None or result.pod not in uids or pod["metadata"].get("uid") != uids[result.pod]:
            continue
        fresh[result.pod] = result.memory
        value = encode_memory(result.memory)
        if value != _annotation(pod):
            writes.append((result.pod, value))
    return writes, fresh


def remember(
    ctx: Context, namespace: str, pods: list[dict[str, Any]], made_from: PassInputs, results: list[PodResult]
) -> dict[str, PodMemory]:
    """Write what a finished pass leaves each Pod remembering onto the Pods whose annotation says otherwise.

    A failed write costs a reload on the next pass, which writes again; it never fails the reconcile."""
    writes, fresh = memory_writes(pods, made_from, results)
    for name, value in writes:
        body = {"metadata": {"annotations": {labels.ADAPTER_MEMORY: value}}}
        try:
            ctx.kube.patch(k.POD, namespace, name, body)
        except k.NotFound:
            continue  # the Pod is gone, and what it remembered with it
        except Exception as exc:  # the API server is away: the rest waits for the next pass too
            log.warning(
                "adapters on Pod %s/%s: not recorded (tried again next pass): %s", namespace, name, exc
            )
            break
    return fresh


def _no_answer_yet(pod: dict[str, Any]) -> PodResult:
    name = pod["metadata"]["name"]
    return PodResult(pod=name, reachable=False, error="no answer yet (the adapter pass is still running)")


def ready_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Pods the Service sends requests to: ready, and for a LeaderWorkerSet only the leaders (a worker
    runs no API server; the Service selects worker index 0)."""
    out = []
    for p in pods:
        meta, st = p.get("metadata") or {}, p.get("status") or {}
        if meta.get("deletionTimestamp") or not st.get("podIP"):
            continue
        if (meta.get("labels") or {}).get(LWS_WORKER_INDEX, "0") != "0":
            continue
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []):
            out.append(p)
    return sorted(out, key=lambda p: p["metadata"]["name"])


async def _observe_pod(pod: str, client: AdapterClient, desired: dict[str, DesiredAdapter]) -> PodResult:
    """Static adapters (lora.dynamic false): read what the Pod serves; it loaded them from --lora-modules."""
    try:
        served = await client.list_models()
    except POD_ERRORS as exc:  # an unreachable Pod serves nothing this pass
        return PodResult(pod=pod, reachable=False, error=describe(exc))
    started = PodMemory(loaded={n: d.digest for n, d in desired.items() if served.adapters.get(n) == d.path})
    plan = plan_pod(desired, served, started)
    return PodResult(pod=pod, reachable=True, served=served, states=plan.states, memory=started)


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
) -> list[PodResult]:
    """One pass over the Pods, in parallel up to POD_CONCURRENCY, all within one deadline; whatever one Pod
    answers (or fails to) becomes its own result and never the others'.

    Each Pod starts from ``memories`` (by Pod name) or else from its annotation; what it remembers afterwards
    is in its result, for the caller to write."""
    ns = owner.namespace
    deadline = Deadline(deadline_s)
    turns = asyncio.Semaphore(POD_CONCURRENCY)

    async def one(pod: dict[str, Any]) -> PodResult:
        pod_name = pod["metadata"]["name"]
        memory = memories.get(pod_name) if memories is not None else None
        if memory is None:
            memory = pod_memory(pod, desired)
        try:
            async with turns, asyncio.timeout(deadline.remaining() + 2.0):
                url = pod_url(pod["status"]["podIP"], port)
                async with AdapterClient(url, api_key=api_key, deadline=deadline) as client:
                    if not dynamic:
                        return await _observe_pod(pod_name, client, desired)
                    return await reconcile_pod(pod_name, client, desired, memory)
        except POD_ERRORS as exc:
            return PodResult(pod=pod_name, reachable=False, error=describe(exc), memory=memory)
        except Exception as exc:  # a bug met on one Pod's answer must not cost the other Pods their pass
            log.exception("adapters on Pod %s/%s", ns, pod_name)
            return PodResult(pod=pod_name, reachable=False, error=describe(exc), memory=memory)

    return list(await asyncio.gather(*(one(p) for p in pods)))
