"""An InferenceService's runtime adapters: ask each ready vLLM Pod what it serves and bring it in line."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from tuneops.adapters import (
    AdapterClient,
    Deadline,
    DesiredAdapter,
    PodMemory,
    PodResult,
    describe,
    plan_pod,
    pod_problems,
    pod_url,
    reconcile_pod,
    summarize,
)
from tuneops.adapters.client import PASS_DEADLINE_S, POD_ERRORS
from tuneops.adapters.passes import PassRunner
from tuneops.api.inferenceservice import InferenceServiceSpec, PodAdapters
from tuneops.reconcile.base import Context
from tuneops.reconcile.service_status import Adapters
from tuneops.reconcile.sources import Sources
from tuneops.render import serving as render
from tuneops.render.serving.vllm import LWS_WORKER_INDEX
from tuneops.render.types import Owner

# What the adapter reconciler remembers per Pod between passes (digest loaded under each name, failures).
# Losing it (operator restart) only costs one in-place reload per adapter.
_POD_MEMORY: dict[tuple[str, str, str], PodMemory] = {}
_MEMORY_LOCK = threading.Lock()
log = logging.getLogger(__name__)
# Pods of one service talked to at once; the rest wait their turn within the same pass deadline.
POD_CONCURRENCY = 8
# Passes run off kopf's handler threads: a handler waits a few seconds for its pass, then reports the Pods as
# not answering yet and looks again on its next poll, while the pass goes on to its deadline.
_PASSES: PassRunner[list[PodResult]] = PassRunner("tuneops-adapters")


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
        inputs = (
            tuple(sorted((d.name, d.path, d.digest) for d in desired.values())),
            tuple((p["metadata"]["name"], p["metadata"].get("uid"), p["status"]["podIP"]) for p in ready),
            sources.api_key,
            dynamic,
        )
        finished = _PASSES.run(
            (owner.namespace, owner.name),
            inputs,
            lambda: reconcile_pods(owner, ready, desired, sources.api_key, dynamic),
        )
        results = finished if finished is not None else [_no_answer_yet(p) for p in ready]
    problems = [PodAdapters(pod=p.pod, ready_adapters=p.ready_adapters, message=p.message)
                for p in pod_problems(desired, results)]  # fmt: skip
    return Adapters(summarize(desired, results), sources.refused, sources.pending), problems


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
    deadline_s: float = PASS_DEADLINE_S,
    port: int = render.PORT,
) -> list[PodResult]:
    """One pass over the Pods, in parallel up to POD_CONCURRENCY, all within one deadline; whatever one Pod
    answers (or fails to) becomes its own result and never the others'."""
    ns, name = owner.namespace, owner.name
    deadline = Deadline(deadline_s)
    turns = asyncio.Semaphore(POD_CONCURRENCY)

    async def one(pod: dict[str, Any]) -> PodResult:
        pod_name = pod["metadata"]["name"]
        key = (ns, name, pod["metadata"].get("uid", pod_name))
        with _MEMORY_LOCK:
            memory = _POD_MEMORY.get(key, PodMemory())
        try:
            async with turns, asyncio.timeout(deadline.remaining() + 2.0):
                url = pod_url(pod["status"]["podIP"], port)
                async with AdapterClient(url, api_key=api_key, deadline=deadline) as client:
                    if not dynamic:
                        return await _observe_pod(pod_name, client, desired)
                    result = await reconcile_pod(pod_name, client, desired, memory)
        except POD_ERRORS as exc:
            return PodResult(pod=pod_name, reachable=False, error=describe(exc), memory=memory)
        except Exception as exc:  # a bug met on one Pod's answer must not cost the other Pods their pass
            log.exception("adapters on Pod %s/%s", ns, pod_name)
            return PodResult(pod=pod_name, reachable=False, error=describe(exc), memory=memory)
        with _MEMORY_LOCK:
            _POD_MEMORY[key] = result.memory
        return result

    results = list(await asyncio.gather(*(one(p) for p in pods)))
    # Forget Pods that are gone, so the memory stays as large as the fleet.
    live = {(ns, name, p["metadata"].get("uid", p["metadata"]["name"])) for p in pods}
    with _MEMORY_LOCK:
        for key in [k_ for k_ in _POD_MEMORY if k_[:2] == (ns, name) and k_ not in live]:
            del _POD_MEMORY[key]
    return results
