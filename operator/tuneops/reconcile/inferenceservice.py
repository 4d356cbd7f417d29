"""InferenceService: resolve the model and adapters, apply the workload and Service, report what Pods serve."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import replace
from typing import Any

from tuneops import labels, metrics
from tuneops.api import INFERENCESERVICE
from tuneops.api.conditions import Reason
from tuneops.api.inferenceservice import AdapterState, InferenceServiceSpec, InferenceServiceStatus
from tuneops.kube import client as k
from tuneops.kube import types as kt
from tuneops.reconcile.base import (
    Cond,
    Context,
    Invalid,
    Outcome,
    StatusBuilder,
    Waiting,
    controlled_by,
    name_conflict,
    read_child,
    reconciler,
)
from tuneops.reconcile.drift import APPLIED, drifted, pin_defaults
from tuneops.reconcile.lora import MEMORIES, lora_enabled, reconcile_adapters
from tuneops.reconcile.service_status import Adapters, Observed, Workload, adapter_states, decide
from tuneops.reconcile.sources import Sources, resolve
from tuneops.reconcile.workload import diagnose, pod_events, progress_deadline
from tuneops.render import serving as render
from tuneops.render.names import content_hash
from tuneops.render.serving import autoscaling
from tuneops.render.serving.types import ServingRender
from tuneops.render.types import Owner
from tuneops.validation.references import check_routing

log = logging.getLogger(__name__)

Builder = StatusBuilder[InferenceServiceSpec, InferenceServiceStatus]


@reconciler(INFERENCESERVICE)
def reconcile(sb: Builder, spec: InferenceServiceSpec) -> Outcome:
    refused = check_routing(spec, sb.ctx.config)
    if refused:
        return sb.conclude(decide(Invalid("; ".join(map(str, refused)), refused[0].reason)))
    try:
        sources = resolve(sb.ctx, sb.obj, spec)
    except (Waiting, Invalid) as err:
        return sb.conclude(decide(err))
    # Every LoRAAdapter that asked, and the service's verdict: each adapter reads its own from here.
    sb.status.attached_adapters = [v.wire() for v in sources.attached] or None
    sb.status.form = sources.form
    rendered = render.render_inferenceservice(
        spec, sb.owner, sb.ctx.config, model=sources.model, adapters=sources.servable,
        adapter_sources=sources.sources,
    )  # fmt: skip
    refresh = (sb.obj["metadata"].get("annotations") or {}).get(labels.REFRESH)
    manifests = (
        [restarted(m, str(refresh)) for m in rendered.manifests] if refresh else list(rendered.manifests)
    )
    try:
        apply_children(sb.ctx, sb.owner, manifests)
    except Waiting as err:
        return sb.conclude(decide(err))
    workload, pods = observe_workload(sb, spec, rendered, sources)
    adapters = _adapters(sb, spec, sources, pods)
    notes = tuple(
        Cond(n.type, None if n.status == "Unknown" else n.status == "True", n.reason, n.message)
        for n in rendered.notes
    )
    seen = Observed(workload, adapters, notes, tuple(rendered.served_models), rendered.url)
    return sb.conclude(decide(seen))


def restarted(manifest: dict[str, Any], refresh: str) -> dict[str, Any]:
    """The workload with `tuneops.io/refresh` on its Pod templates: a new value rolls the Pods (as `kubectl rollout
    restart` does), which retries what failed in them (a crash after its cause is fixed, adapters that failed to
    load: new Pods start with no failed attempts). Other manifests are returned as they are."""
    spec = manifest.get("spec") or {}
    if manifest.get("kind") == "Deployment":
        templates = [spec.get("template")]
    elif manifest.get("kind") == "LeaderWorkerSet":
        lws = spec.get("leaderWorkerTemplate") or {}
        templates = [lws.get("leaderTemplate"), lws.get("workerTemplate")]
    else:
        return manifest
    for t in templates:
        if isinstance(t, dict):
            meta = t.setdefault("metadata", {})
            meta["annotations"] = dict(
                sorted({**(meta.get("annotations") or {}), labels.REFRESH: refresh}.items())
            )
    return manifest


def observe_workload(
    sb: Builder, spec: InferenceServiceSpec, rendered: ServingRender, sources: Sources
) -> tuple[Workload, list[dict[str, Any]]]:
    """Read the workload's own status (and publish what the scale subresource and clients need), and while it
    is not rolled out, why its Pods do not run. The Pods are listed only when needed (adapters, or a rollout
    under way), and returned for the adapter step."""
    kube, ns = sb.ctx.kube, sb.owner.namespace
    rtype = k.LWS if rendered.workload_kind == "LeaderWorkerSet" else k.DEPLOYMENT
    workload = kube.get(rtype, ns, rendered.workload_name) or {}
    wstatus = workload.get("status") or {}
    status = sb.status
    status.replicas = int(wstatus.get("replicas") or 0)
    status.ready_replicas = int(wstatus.get("readyReplicas") or 0)
    status.selector = rendered.selector_string
    status.url = rendered.url
    status.model_digest = sources.model.digest
    status.served_models = list(rendered.served_models)
    auto = spec.autoscaling
    status.autoscaler = autoscaling.bounds(auto) if auto else None
    # A replica of a multi-node service is a group of Pods; each takes its GPUs.
    per_replica = spec.gpus_per_pod() * (spec.vllm_settings().nodes if spec.runtime == "vllm" else 1)
    status.max_gpus = auto.max_replicas * per_replica if auto else None
    seen = Workload(
        desired=spec.replicas,
        ready=status.ready_replicas,
        updated=int(wstatus.get("updatedReplicas") or 0),
        current=(workload.get("metadata") or {}).get("generation") == wstatus.get("observedGeneration"),
        total=status.replicas,
    )
    # A workload not made yet has no Pods to explain.
    settling = bool(workload) and (not seen.rolled_out or progress_deadline(workload) is not None)
    if not (settling or lora_enabled(spec, sources)):
        return seen, []
    pods = kube.list(k.POD, ns, dict(rendered.selector))
    if settling:
        seen = replace(seen, cause=diagnose(pods, pod_events(kube, ns, pods), workload))
    return seen, pods


def _adapters(
    sb: Builder, spec: InferenceServiceSpec, sources: Sources, pods: list[dict[str, Any]]
) -> Adapters | None:
    if not lora_enabled(spec, sources):
        sb.status.adapters = sb.status.pods = None
        publish_adapters(sb.owner.namespace, sb.owner.name, None)
        MEMORIES.forget((sb.owner.namespace, sb.owner.name))
        return None
    adapters, served = reconcile_adapters(sb.ctx, spec, sb.owner, pods, sources)
    sb.status.adapters = adapter_states(adapters) or None
    sb.status.pods = served or None
    publish_adapters(sb.owner.namespace, sb.owner.name, sb.status.adapters or [])
    return adapters


ADAPTER_STATES = ("Ready", "Loading", "Pending", "Failed")


def publish_adapters(namespace: str, name: str, states: list[AdapterState] | None) -> None:
    """tuneops_adapters_served: the service's adapters by state as its status reports them (every state, so a
    count that drops to zero reads 0); None removes the service's series (no LoRA, or deleted)."""
    counts = Counter(str(s.state) for s in states or [])
    for state in ADAPTER_STATES:
        if states is None:
            with contextlib.suppress(KeyError):  # never published
                metrics.ADAPTERS_SERVED.remove(namespace, name, state)
        else:
            metrics.ADAPTERS_SERVED.labels(resource_namespace=namespace, name=name, state=state).set(
                counts[state]
            )


def _stamp(manifest: dict[str, Any]) -> dict[str, Any]:
    """Record the manifest's own hash on it, so a changed manifest is recognised without comparing it; the
    server's defaults the drift check relies on (drift.pin_defaults) are part of it."""
    pin_defaults(manifest)
    meta = manifest.setdefault("metadata", {})
    meta.setdefault("annotations", {})[labels.SPEC_HASH] = content_hash(manifest)[:16]
    return manifest


# Kinds of other projects that spec.autoscaling and spec.routing render, and what installs each.
EXTENSIONS = {
    kt.SCALEDOBJECT: "KEDA",
    kt.INFERENCEPOOL: "Gateway API Inference Extension",
    kt.HTTPROUTE: "Gateway API",
}


# Conflicts named in one condition message; the rest are counted.
CONFLICTS_NAMED = 3


def _needs_apply(manifest: dict[str, Any], current: dict[str, Any] | None) -> bool:
    """Missing, made from another manifest, or edited since (anything the manifest sets differs)."""
    if current is None:
        return True
    have = ((current.get("metadata") or {}).get("annotations") or {}).get(labels.SPEC_HASH)
    if have != manifest["metadata"]["annotations"][labels.SPEC_HASH]:
        return True
    changed = drifted(manifest, current)
    if changed:
        meta = manifest["metadata"]
        log.info("%s %s/%s was changed by hand (%s): applying it again", manifest["kind"],
                 meta.get("namespace", ""), meta["name"], ", ".join(changed))  # fmt: skip
    return bool(changed)


def apply_children(ctx: Context, owner: Owner, manifests: list[dict[str, Any]]) -> int:
    """Apply what changed or drifted, delete what is no longer desired; returns the number of writes.

    A child is applied when it is missing, its spec-hash annotation differs from the manifest's, or it no longer
    holds a value the manifest sets (a hand edit: drift.drifted, compared in memory, so a settled pass makes no
    request).

    A child whose name is held by an object this service does not control (another resource's child, or one
    a person made) stops the pass before anything is written: `Waiting` with reason NameConflict, naming both
    and what to do, looked at again until that object is gone. Only children this service controls are
    deleted."""
    stamped = [_stamp(m) for m in manifests]
    found: list[tuple[dict[str, Any], k.ResourceType, dict[str, Any] | None]] = []
    conflicts: list[str] = []
    for m in stamped:
        rtype = k.type_of(m)
        current = read_child(ctx.kube, rtype, owner.namespace, m["metadata"]["name"])
        conflict = name_conflict(owner, rtype.kind, current) if current is not None else None
        if conflict is not None:
            conflicts.append(conflict)
        found.append((m, rtype, current))
    if conflicts:
        more = len(conflicts) - CONFLICTS_NAMED
        named = "; ".join(conflicts[:CONFLICTS_NAMED]) + (f"; and {more} more" if more > 0 else "")
        raise Waiting(named, Reason.NAME_CONFLICT)
    writes = 0
    desired: set[tuple[str, str]] = set()
    for m, rtype, current in found:
        desired.add((rtype.kind, m["metadata"]["name"]))
        if not _needs_apply(m, current):
            continue
        try:
            APPLIED.record(ctx.kube.apply(m))
        except k.NotFound as exc:
            if rtype not in EXTENSIONS:
                raise
            raise Waiting(
                f"{rtype.kind} ({rtype.api_version}) is not served by this cluster: install its CRD "
                f"({EXTENSIONS[rtype]}) or remove spec.autoscaling / spec.routing",
                Reason.EXTENSION_NOT_INSTALLED,
            ) from exc
        writes += 1
    selector = {labels.OWNER: owner.uid, labels.KIND: INFERENCESERVICE.kind}
    pdb = k.PDB if ctx.config.features.pdb_v1 else k.PDB_BETA
    hpa = kt.HPA if ctx.config.features.hpa_v2 else kt.HPA_BETA
    for rtype in (k.DEPLOYMENT, k.SERVICE, k.CONFIGMAP, pdb, k.LWS, k.NETWORKPOLICY, hpa, *EXTENSIONS):
        try:
            children = ctx.kube.list(rtype, owner.namespace, selector)
        except k.NotFound:
            continue  # the kind's CRD (LeaderWorkerSet, KEDA, Gateway API) is not installed: nothing to clean up
        for child in children:
            meta = child["metadata"]
            # Labels are anyone's to write: only what this service controls is its to delete.
            if (rtype.kind, meta["name"]) not in desired and controlled_by(child, owner.uid):
                ctx.kube.delete(rtype, owner.namespace, meta["name"], uid=meta.get("uid"))
                writes += 1
    return writes
