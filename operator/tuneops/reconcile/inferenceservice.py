"""InferenceService: resolve the model and adapters, apply the workload and Service, report what Pods serve."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any

from tuneops import labels
from tuneops.adapters import (
    AdapterClient,
    DesiredAdapter,
    PodMemory,
    PodResult,
    plan_pod,
    reconcile_pod,
    summarize,
)
from tuneops.api import FINETUNEDMODEL, INFERENCESERVICE, QUANTIZATIONJOB, SpecError
from tuneops.api.common import ObjectRef
from tuneops.api.conditions import ADAPTERS_READY, AVAILABLE, READY, Reason
from tuneops.api.finetunedmodel import FineTunedModelSpec, FineTunedModelStatus
from tuneops.api.inferenceservice import (
    AdapterState,
    InferenceServiceSpec,
    InferenceServiceStatus,
    PodAdapters,
)
from tuneops.api.quantizationjob import QuantizationJobStatus
from tuneops.kube import client as k
from tuneops.reconcile.base import Context, Invalid, Outcome, StatusBuilder, Waiting, parse, parse_status
from tuneops.reconcile.common import owner_of, resolve_ref
from tuneops.render import inferenceservice as render
from tuneops.render.common import ModelFormat, ResolvedAdapter, ResolvedModel, content_hash, model_format
from tuneops.render.finetunedmodel import base_uri, merge_output_uri

log = logging.getLogger(__name__)

_ADAPTER_FIELD = re.compile(r"^spec\.lora\.adapters\[(\d+)\]")

# What the adapter reconciler remembers per Pod between passes (digest loaded under each name, failures).
# Losing it (operator restart) only costs one in-place reload per adapter.
_POD_MEMORY: dict[tuple[str, str, str], PodMemory] = {}
_MEMORY_LOCK = threading.Lock()


@dataclass
class Resolved:
    model: ResolvedModel
    adapters: list[ResolvedAdapter]
    pending: dict[str, str]  # adapter name -> why it is not served yet
    sources: list[str]  # every URI an adapter of the spec may be loaded from (for the Pods' volumes)


def _ftm(
    ctx: Context, obj: dict[str, Any], ref: Any, field: str
) -> tuple[FineTunedModelSpec, FineTunedModelStatus]:
    target = resolve_ref(ctx, obj, ref, "FineTunedModel", field)
    spec = parse(FINETUNEDMODEL, target)
    status = parse_status(FINETUNEDMODEL, target.get("status"))
    assert isinstance(spec, FineTunedModelSpec) and isinstance(status, FineTunedModelStatus)
    return spec, status


def _adapter_from_ftm(name: str, spec: FineTunedModelSpec, status: FineTunedModelStatus) -> ResolvedAdapter:
    facts = status.adapter
    # An unmerged FineTunedModel publishes its adapter at a content-addressed path: serve that copy.
    published = (
        status.artifact.uri if status.artifact is not None and status.artifact.format == "peft" else None
    )
    return ResolvedAdapter(
        name=name,
        uri=published or spec.adapter.uri,
        digest=status.adapter_digest,
        rank=(facts.max_rank or facts.rank) if facts else None,
        base_model_name=facts.base_model_name if facts else None,
        use_dora=bool(facts.use_dora) if facts else False,
        modules_to_save=tuple(facts.modules_to_save or ()) if facts else (),
    )


def _last_good_adapter(
    ctx: Context, obj: dict[str, Any], name: str, ref: ObjectRef
) -> ResolvedAdapter | None:
    """The adapter version a FineTunedModel published last, while it is not Ready (re-inspecting, or a new
    version was refused): its published copy is intact, so the service keeps it rather than dropping it."""
    ns = ref.namespace or obj["metadata"]["namespace"]
    if ns != obj["metadata"]["namespace"] and not ctx.config.allow_cross_namespace_refs:
        return None
    target = ctx.kube.get(k.FINETUNEDMODEL, ns, ref.name)
    if target is None:
        return None
    status = parse_status(FINETUNEDMODEL, target.get("status"))
    assert isinstance(status, FineTunedModelStatus)
    if status.artifact is None or status.artifact.format != "peft" or status.adapter is None:
        return None
    try:
        spec = parse(FINETUNEDMODEL, target)
    except SpecError:
        return None
    assert isinstance(spec, FineTunedModelSpec)
    return _adapter_from_ftm(name, spec, status)


def resolve(ctx: Context, obj: dict[str, Any], spec: InferenceServiceSpec) -> Resolved:
    """Follow the model reference to a Ready artifact; adapters whose source is not Ready yet are left out
    (and reported) rather than holding the whole service back."""
    adapters: list[ResolvedAdapter] = []
    pending: dict[str, str] = {}
    src = spec.model
    if src.uri is not None:
        fmt: ModelFormat = "gguf" if spec.runtime == "llamacpp" or src.uri.lower().endswith(".gguf") else "hf"
        model = ResolvedModel(uri=src.uri, format=fmt, token_secret=src.token_secret_ref)
    elif src.fine_tuned_model_ref is not None:
        fspec, fstatus = _ftm(ctx, obj, src.fine_tuned_model_ref, "spec.model.fineTunedModelRef")
        base_name = fstatus.adapter.base_model_name if fstatus.adapter else None
        if fstatus.artifact is None or fstatus.artifact.format == "peft":
            # merge disabled: serve the base with the adapter on top, under the FineTunedModel's name
            model = ResolvedModel(uri=base_uri(fspec), base_model_name=base_name,
                                  token_secret=fspec.base_model.token_secret_ref)  # fmt: skip
            adapters.append(_adapter_from_ftm(src.fine_tuned_model_ref.name, fspec, fstatus))
        else:
            model = ResolvedModel(
                uri=fstatus.artifact.uri,
                digest=fstatus.artifact.digest,
                format=model_format(fstatus.artifact.format),
                base_model_name=base_name,
                size_bytes=fstatus.artifact.size_bytes,
            )
    else:
        assert src.quantization_job_ref is not None
        target = resolve_ref(
            ctx, obj, src.quantization_job_ref, "QuantizationJob", "spec.model.quantizationJobRef"
        )
        qstatus = parse_status(QUANTIZATIONJOB, target.get("status"))
        assert isinstance(qstatus, QuantizationJobStatus)
        if qstatus.artifact is None:
            raise Waiting(f"QuantizationJob {target['metadata']['name']} has no artifact yet")
        model = ResolvedModel(
            uri=qstatus.artifact.uri,
            digest=qstatus.artifact.digest,
            format=model_format(qstatus.artifact.format),
            files=tuple(qstatus.artifact.files or ()),
            size_bytes=qstatus.artifact.size_bytes,
        )
    for i, a in enumerate(spec.lora.adapters if spec.lora else []):
        if a.uri is not None:
            adapters.append(ResolvedAdapter(name=a.name, uri=a.uri))
            continue
        assert a.fine_tuned_model_ref is not None
        field = f"spec.lora.adapters[{i}].fineTunedModelRef"
        try:
            fspec, fstatus = _ftm(ctx, obj, a.fine_tuned_model_ref, field)
        except Waiting as w:
            previous = _last_good_adapter(ctx, obj, a.name, a.fine_tuned_model_ref)
            if previous is None:
                pending[a.name] = w.message
            else:
                # A new version is being inspected (or was refused): keep serving the last good one.
                adapters.append(previous)
            continue
        adapters.append(_adapter_from_ftm(a.name, fspec, fstatus))
    return Resolved(model, adapters, pending, adapter_sources(ctx, obj, spec))


def adapter_sources(ctx: Context, obj: dict[str, Any], spec: InferenceServiceSpec) -> list[str]:
    """Where each listed adapter is, or will be published, whether its FineTunedModel is Ready or not."""
    out: set[str] = set()
    for a in spec.lora.adapters if spec.lora else []:
        if a.uri is not None:
            out.add(a.uri)
            continue
        assert a.fine_tuned_model_ref is not None
        ns = a.fine_tuned_model_ref.namespace or obj["metadata"]["namespace"]
        target = ctx.kube.get(k.FINETUNEDMODEL, ns, a.fine_tuned_model_ref.name)
        if target is None:
            continue
        try:
            fspec = parse(FINETUNEDMODEL, target)
        except SpecError:
            continue
        assert isinstance(fspec, FineTunedModelSpec)
        out.update({fspec.adapter.uri, merge_output_uri(fspec, owner_of(target), ctx.config)})
    return sorted(out)


def _stamp(manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the manifest's own hash on it, so an unchanged child is recognised without writing it again."""
    meta = manifest.setdefault("metadata", {})
    meta.setdefault("annotations", {})[labels.SPEC_HASH] = content_hash(manifest)[:16]
    return manifest


def apply_children(ctx: Context, owner_ns: str, owner_uid: str, manifests: list[dict[str, Any]]) -> int:
    """Apply what changed, delete what is no longer desired; returns the number of writes."""
    writes = 0
    desired: set[tuple[str, str]] = set()
    for m in manifests:
        m = _stamp(m)
        rtype = k.type_of(m)
        desired.add((rtype.kind, m["metadata"]["name"]))
        current = ctx.kube.get(rtype, owner_ns, m["metadata"]["name"])
        have = ((current or {}).get("metadata") or {}).get("annotations", {}).get(labels.SPEC_HASH)
        if have != m["metadata"]["annotations"][labels.SPEC_HASH]:
            ctx.kube.apply(m)
            writes += 1
    selector = {labels.OWNER: owner_uid, labels.KIND: INFERENCESERVICE.kind}
    pdb = k.PDB if ctx.config.features.pdb_v1 else k.PDB_BETA
    for rtype in (k.DEPLOYMENT, k.SERVICE, k.CONFIGMAP, pdb, k.LWS):
        try:
            children = ctx.kube.list(rtype, owner_ns, selector)
        except k.NotFound:
            continue  # LeaderWorkerSet's CRD is not installed: there is nothing of that kind to clean up
        for child in children:
            if (rtype.kind, child["metadata"]["name"]) not in desired:
                ctx.kube.delete(rtype, owner_ns, child["metadata"]["name"])
                writes += 1
    return writes


def _api_key(ctx: Context, ns: str, spec: InferenceServiceSpec) -> str | None:
    ref = spec.api_key_secret_ref
    if ref is None:
        return None
    secret = ctx.kube.get(k.SECRET, ns, ref.name)
    raw = ((secret or {}).get("data") or {}).get(ref.key)
    if raw is None:
        raise Invalid(f"spec.apiKeySecretRef: Secret {ref.name!r} has no key {ref.key!r}")
    return base64.b64decode(raw).decode()


def _ready_pods(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
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
    ns: str,
    name: str,
    pods: list[dict[str, Any]],
    port: int,
    desired: dict[str, DesiredAdapter],
    api_key: str | None,
    dynamic: bool,
) -> list[PodResult]:
    async def one(pod: dict[str, Any]) -> PodResult:
        key = (ns, name, pod["metadata"].get("uid", pod["metadata"]["name"]))
        with _MEMORY_LOCK:
            memory = _POD_MEMORY.get(key, PodMemory())
        async with AdapterClient(f"http://{pod['status']['podIP']}:{port}", api_key=api_key) as client:
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


def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
    sb = StatusBuilder(ctx, obj, INFERENCESERVICE)
    spec = sb.spec()
    if spec is None:
        return sb.finish()
    assert isinstance(spec, InferenceServiceSpec)
    status = sb.status
    assert isinstance(status, InferenceServiceStatus)
    owner = owner_of(obj)
    ns = owner.namespace

    try:
        resolved = resolve(ctx, obj, spec)
        api_key = _api_key(ctx, ns, spec)
    except Waiting as w:
        sb.condition(READY, False, Reason.WAITING_FOR_SOURCE, w.message)
        return sb.finish(requeue=True)
    except Invalid as err:
        sb.condition(READY, False, err.reason, err.message)
        return sb.finish()

    problems = render.check_inferenceservice(spec, model=resolved.model, adapters=resolved.adapters)
    names = [a.name for a in (spec.lora.adapters if spec.lora else [])]
    refused: dict[str, str] = {}
    service_problems = []
    for p in problems:
        m = _ADAPTER_FIELD.match(p.field)
        if p.reason == Reason.INCOMPATIBLE_ADAPTER and m and int(m.group(1)) < len(names):
            refused.setdefault(names[int(m.group(1))], p.message)
        elif p.reason == Reason.INCOMPATIBLE_ADAPTER and p.field.startswith("spec.lora.adapters"):
            refused.setdefault(resolved.adapters[0].name if resolved.adapters else "?", p.message)
        else:
            service_problems.append(p)
    if service_problems:
        reason = service_problems[0].reason
        sb.condition(READY, False, reason, "; ".join(str(p) for p in service_problems))
        return sb.finish()
    # An incompatible adapter is refused alone; the base model and the other adapters are still served.
    servable = [a for a in resolved.adapters if a.name not in refused]

    rendered = render.render_inferenceservice(
        spec, owner, ctx.config, model=resolved.model, adapters=servable, adapter_sources=resolved.sources
    )
    apply_children(ctx, ns, owner.uid, list(rendered.manifests))
    for note in rendered.notes:
        sb.condition(
            note.type, note.status == "True" if note.status != "Unknown" else None, note.reason, note.message
        )

    workload_type = k.LWS if rendered.workload_kind == "LeaderWorkerSet" else k.DEPLOYMENT
    workload = ctx.kube.get(workload_type, ns, rendered.workload_name) or {}
    wstatus = workload.get("status") or {}
    ready_replicas = int(wstatus.get("readyReplicas") or 0)
    status.replicas = int(wstatus.get("replicas") or 0)
    status.ready_replicas = ready_replicas
    status.selector = rendered.selector_string
    status.url = rendered.url
    status.model_digest = resolved.model.digest
    status.served_models = list(rendered.served_models)

    generation_seen = (workload.get("metadata") or {}).get("generation") == wstatus.get("observedGeneration")
    updated = int(wstatus.get("updatedReplicas") or 0)
    if spec.replicas == 0:
        available, avail_reason, avail_msg = True, Reason.SCALED_TO_ZERO, "replicas is 0"
    elif ready_replicas >= 1:
        available, avail_reason = True, Reason.MINIMUM_REPLICAS_AVAILABLE
        avail_msg = f"{ready_replicas}/{spec.replicas} replicas ready"
    else:
        available, avail_reason = False, Reason.MINIMUM_REPLICAS_UNAVAILABLE
        avail_msg = f"0/{spec.replicas} replicas ready (models can take minutes to load)"
    sb.condition(AVAILABLE, available, avail_reason, avail_msg)
    rolled_out = generation_seen and updated >= spec.replicas and ready_replicas >= spec.replicas

    # Adapters: truth comes from each ready Pod's /v1/models.
    adapters_ok = True
    desired = {
        a.name: DesiredAdapter(
            name=a.name, path=render.adapter_path(a.uri, ctx.config), digest=a.digest or ""
        )
        for a in servable
    }
    lora_on = spec.runtime == "vllm" and (bool(names) or bool(resolved.adapters))
    if lora_on:
        pods = _ready_pods(ctx.kube.list(k.POD, ns, dict(rendered.selector)))
        lora = render.effective_lora(spec, resolved.adapters)
        dynamic = bool(lora and lora.dynamic)
        results: list[PodResult] = []
        if pods:
            results = asyncio.run(
                _reconcile_pods(ns, owner.name, pods, render.PORT, desired, api_key, dynamic)
            )
        summary = summarize(desired, results) if pods else None
        states: list[AdapterState] = []
        for name in sorted(set(desired) | set(refused) | set(resolved.pending)):
            if name in refused:
                states.append(AdapterState(name=name, state="Failed", message=refused[name][:4000]))
            elif name in resolved.pending:
                states.append(AdapterState(name=name, state="Pending", message=resolved.pending[name][:4000]))
            else:
                s = next((x for x in summary.adapters if x.name == name), None) if summary else None
                states.append(
                    AdapterState(
                        name=name,
                        digest=desired[name].digest or None,
                        ready_pods=s.ready_pods if s else 0,
                        state=str(s.state) if s and str(s.state) in ("Ready", "Loading", "Failed") else "Pending",
                        message=(s.message or None) if s else None,
                    )
                )  # fmt: skip
        status.adapters = states or None
        status.pods = [
            PodAdapters(pod=r.pod, adapters=sorted(r.served.adapters) if r.served else []) for r in results
        ] or None
        failed = [s for s in states if s.state == "Failed"]
        waiting = [s for s in states if s.state in ("Pending", "Loading")]
        if failed:
            adapters_ok = False
            reason = (
                Reason.INCOMPATIBLE_ADAPTER
                if any(s.name in refused for s in failed)
                else Reason.ADAPTER_LOAD_FAILED
            )
            sb.condition(ADAPTERS_READY, False, reason, "; ".join(f"{s.name}: {s.message}" for s in failed))
        elif waiting or not pods:
            adapters_ok = False
            msg = "; ".join(f"{s.name}: {s.message or s.state}" for s in waiting) or "no ready Pod yet"
            sb.condition(ADAPTERS_READY, False, Reason.ADAPTERS_LOADING, msg)
        else:
            sb.condition(
                ADAPTERS_READY,
                True,
                Reason.SUCCEEDED,
                f"{len(states)} adapter(s) served on {len(pods)} Pod(s)",
            )
    else:
        status.adapters = None
        status.pods = None

    if not available:
        sb.condition(READY, False, Reason.DEPLOYING, avail_msg)
        return sb.finish(requeue=True)
    failed_adapters = [s for s in status.adapters or [] if s.state == "Failed"]
    if failed_adapters:
        first = failed_adapters[0]
        reason = Reason.INCOMPATIBLE_ADAPTER if first.name in refused else Reason.ADAPTER_LOAD_FAILED
        sb.condition(READY, False, reason, f"adapter {first.name}: {first.message}")
        return sb.finish(requeue=not rolled_out)
    if not adapters_ok:
        sb.condition(READY, False, Reason.ADAPTERS_LOADING, "loading adapters")
        return sb.finish(requeue=True)
    if not rolled_out:
        sb.condition(
            READY, True, Reason.MINIMUM_REPLICAS_AVAILABLE, f"serving; rollout in progress ({avail_msg})"
        )
        return sb.finish(requeue=True)
    sb.condition(
        READY, True, Reason.SUCCEEDED, f"serving {', '.join(status.served_models or [])} at {status.url}"
    )
    return sb.finish()
