"""LoRAAdapter: report where a team's adapter stands on the service it asks for.

The service decides (reconcile.attach, when it reconciles) and serves; this side reads the verdict from the
service's status (`attachedAdapters`, written by the operator only) and the adapter's state there (`adapters[]`:
on how many ready Pods its served name is listed), and says so in the adapter's own status. A change to the
adapter wakes its service (the controller's attach wake), and a change to the service wakes the adapter (it
references the service).
"""

from __future__ import annotations

from tuneops.api import INFERENCESERVICE, LORAADAPTER
from tuneops.api.conditions import READY, Reason
from tuneops.api.loraadapter import LoRAAdapterSpec, LoRAAdapterStatus, ServiceSide
from tuneops.kube import client as k
from tuneops.kube import types as kt
from tuneops.reconcile.base import Cond, Outcome, StatusBuilder, Verdict, reconciler

Builder = StatusBuilder[LoRAAdapterSpec, LoRAAdapterStatus]


@reconciler(LORAADAPTER)
def reconcile(sb: Builder, spec: LoRAAdapterSpec) -> Outcome:
    meta = sb.obj["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    svc_ns = spec.service_ref.namespace or namespace
    where = f"{svc_ns}/{spec.service_ref.name}"
    served_name = spec.served_name or name
    try:
        service = sb.ctx.kube.get(kt.CUSTOM["InferenceService"], svc_ns, spec.service_ref.name)
    except k.ApiError as err:  # a namespace the operator does not watch (namespaced RBAC)
        sb.status.served = None
        why = f"InferenceService {where} (spec.serviceRef) cannot be read by the operator: {err}"[:1000]
        return sb.conclude(Verdict((Cond(READY, False, Reason.WAITING_FOR_SOURCE, why),)))
    if service is None:
        sb.status.served = None
        why = f"InferenceService {where} (spec.serviceRef) does not exist (yet)"
        return sb.conclude(Verdict((Cond(READY, False, Reason.WAITING_FOR_SOURCE, why),)))
    status = INFERENCESERVICE.parse_status(service.get("status"))
    key = f"{namespace}/{name}"
    entry = next((a for a in status.attached_adapters or [] if a.adapter == key), None)
    side = ServiceSide(service=where, served_name=served_name)
    if entry is None or entry.served_name != served_name:
        sb.status.served = side
        why = f"waiting for InferenceService {where} to take this adapter in"
        return sb.conclude(Verdict((Cond(READY, False, Reason.WAITING_FOR_SOURCE, why),)))
    if not entry.accepted:
        sb.status.served = side.model_copy(update={"state": "Refused", "message": entry.message})
        reason = entry.reason or Reason.NOT_ALLOWED
        why = f"InferenceService {where} refuses it: {entry.message or reason}"
        return sb.conclude(Verdict((Cond(READY, False, reason, why),)))
    total = status.ready_replicas or 0
    state = next((a for a in status.adapters or [] if a.name == served_name), None)
    if state is None:
        sb.status.served = side.model_copy(update={"total_pods": total})
        why = f"accepted by InferenceService {where}; not served yet"
        return sb.conclude(Verdict((Cond(READY, False, Reason.ADAPTERS_LOADING, why),)))
    sb.status.served = side.model_copy(
        update={"state": state.state, "ready_pods": state.ready_pods, "total_pods": total, "digest": state.digest,
                "message": state.message},
    )  # fmt: skip
    if state.state == "Ready":
        return sb.ready(f"served as {served_name!r} on {state.ready_pods}/{total} ready Pods of {where}")
    reason = Reason.ADAPTER_LOAD_FAILED if state.state == "Failed" else Reason.ADAPTERS_LOADING
    why = (
        f"{served_name!r} on {state.ready_pods}/{total} ready Pods of {where}: {state.message or state.state}"
    )
    return sb.conclude(Verdict((Cond(READY, False, reason, why),)))
