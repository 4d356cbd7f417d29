"""An InferenceService's runtime adapters: ask each ready vLLM Pod what it serves and bring it in line."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tuneops.adapters import (
    AdapterClient,
    DesiredAdapter,
    PodMemory,
    PodResult,
    plan_pod,
    reconcile_pod,
    summarize,
)
from tuneops.api.inferenceservice import InferenceServiceSpec, PodAdapters
from tuneops.reconcile.base import Context
from tuneops.reconcile.service_status import Adapters
from tuneops.reconcile.sources import Sources
from tuneops.render import serving as render
from tuneops.render.types import Owner

# What the adapter reconciler remembers per Pod between passes (digest loaded under each name, failures).
# Losing it (operator restart) only costs one in-place reload per adapter.
_POD_MEMORY: dict[tuple[str, str, str], PodMemory] = {}
_MEMORY_LOCK = threading.Lock()


def lora_enabled(spec: InferenceServiceSpec, sources: Sources) -> bool:
    return spec.runtime == "vllm" and bool((spec.lora and spec.lora.adapters) or sources.adapters)


def reconcile_adapters(
    ctx: Context, spec: InferenceServiceSpec, owner: Owner, pods: list[dict[str, Any]], sources: Sources
) -> tuple[Adapters, list[PodAdapters]]:
    """Load and unload adapters on every ready Pod of `pods` (the service's; or, with lora.dynamic false, only
    read what they serve); the truth comes from each Pod's /v1/models afterwards."""
    desired = {
        a.name: DesiredAdapter(
            name=a.name, path=render.adapter_path(a.uri, ctx.config), digest=a.digest or ""
        )
        for a in sources.servable
    }
    ready = ready_pods(pods)
    lora = render.effective_lora(spec, sources.adapters)
    results: list[PodResult] = []
    if ready:
        results = asyncio.run(
            _reconcile_pods(owner, ready, desired, sources.api_key, dynamic=bool(lora and lora.dynamic))
        )
    served = [PodAdapters(pod=r.pod, adapters=sorted(r.served.adapters) if r.served else []) for r in results]
    return Adapters(summarize(desired, results), sources.refused, sources.pending), served


def ready_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for p in pods:
        st = p.get("status") or {}
        if (p.get("metadata") or {}).get("deletionTimestamp") or not st.get("podIP"):
            continue
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in st.get("conditions") or []):
            out.append(p)
    return sorted(out, key=lambda p: p["metadata"]["name"])


async def _observe_pod(pod: str, client: AdapterClient, desired: dict[str, DesiredAdapter]) -> PodResult:
    """Static adapters (lora.dynamic false): read what the Pod serves; it loaded them from --lora-modules."""
    try:
        served = await client.list_models()
    except Exception as exc:  # an unreachable Pod serves nothing this pass
        return PodResult(pod=pod, reachable=False, error=str(exc) or type(exc).__name__)
    started = PodMemory(loaded={n: d.digest for n, d in desired.items() if served.adapters.get(n) == d.path})
    plan = plan_pod(desired, served, started)
    return PodResult(pod=pod, reachable=True, served=served, states=plan.states, memory=started)


async def _reconcile_pods(
    owner: Owner,
    pods: list[dict[str, Any]],
    desired: dict[str, DesiredAdapter],
    api_key: str | None,
    dynamic: bool,
) -> list[PodResult]:
    ns, name = owner.namespace, owner.name

    async def one(pod: dict[str, Any]) -> PodResult:
        key = (ns, name, pod["metadata"].get("uid", pod["metadata"]["name"]))
        with _MEMORY_LOCK:
            memory = _POD_MEMORY.get(key, PodMemory())
        async with AdapterClient(f"http://{pod['status']['podIP']}:{render.PORT}", api_key=api_key) as client:
            if not dynamic:
                return await _observe_pod(pod["metadata"]["name"], client, desired)
            result = await reconcile_pod(pod["metadata"]["name"], client, desired, memory)
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
