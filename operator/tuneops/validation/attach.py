"""Which LoRAAdapters a service accepts: one decision, made from the service's spec and the adapters' own, read by
both sides (the service serves the accepted ones; each adapter reports its own verdict).

Nothing a tenant writes on its adapter decides for the service: the service's `spec.lora.allowedAdapters` says
which namespaces may attach (by name, or by the namespace's labels, which only cluster admins set), names are
first come first served (an older adapter keeps its name; the service's own adapters always win), and what a Pod
of the service cannot read (a Secret of another namespace) is refused with why.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from tuneops.api import LORAADAPTER, SpecError
from tuneops.api.conditions import Reason
from tuneops.api.inferenceservice import AllowedAdapters, AttachedAdapter, InferenceServiceSpec
from tuneops.api.loraadapter import LoRAAdapterSpec
from tuneops.render.types import ResolvedAdapter

NamespaceLabels = Callable[[str], dict[str, str] | None]


@dataclass(frozen=True)
class Verdict:
    """One LoRAAdapter's standing on one service."""

    key: str  # namespace/name of the LoRAAdapter
    served_name: str
    accepted: bool
    reason: str
    message: str
    adapter: ResolvedAdapter | None = None
    # refused only because a Selector needs namespace labels that could not be read (validate: not checked)
    labels_unknown: bool = False

    def wire(self) -> AttachedAdapter:
        return AttachedAdapter(
            adapter=self.key, served_name=self.served_name, accepted=self.accepted, reason=self.reason,
            message=self.message or None,
        )  # fmt: skip


def targets(adapter: dict[str, Any], service_ns: str, service: str) -> bool:
    """Whether a LoRAAdapter object asks for this service (read from its raw spec: a malformed one is judged
    and refused by the decision, not skipped)."""
    meta = adapter.get("metadata") or {}
    ref = (adapter.get("spec") or {}).get("serviceRef") or {}
    if not isinstance(ref, dict):
        return False
    return ref.get("name") == service and (ref.get("namespace") or meta.get("namespace")) == service_ns


def _allowed(
    rule: AllowedAdapters | None, namespace: str, service_ns: str, labels: NamespaceLabels
) -> tuple[str | None, bool]:
    """Why an adapter of `namespace` may not attach (None: it may), and whether that is only because the
    namespace's labels could not be read."""
    if rule is None:
        return "the service does not accept LoRAAdapters (its spec.lora.allowedAdapters is not set)", False
    allowed = rule.namespaces
    if allowed.from_ == "All" or namespace == service_ns:
        return None, False
    if allowed.from_ == "Same":
        return f"the service accepts LoRAAdapters from its own namespace {service_ns!r} only", False
    found = labels(namespace)
    if found is None:
        why = (
            f"the labels of namespace {namespace!r} cannot be read: allowedAdapters from: Selector needs the "
            "operator's cluster scope (chart value rbac.scope: cluster), which may get namespaces"
        )
        return why, True
    wanted = allowed.selector or {}
    if all(found.get(key) == value for key, value in wanted.items()):
        return None, False
    shown = ",".join(f"{key}={value}" for key, value in sorted(wanted.items()))
    return f"namespace {namespace!r} does not carry the labels the service allows ({shown})", False


def _order(adapter: dict[str, Any]) -> tuple[str, str, str]:
    meta = adapter.get("metadata") or {}
    return (
        str(meta.get("creationTimestamp") or ""),
        str(meta.get("namespace") or ""),
        str(meta.get("name") or ""),
    )


def decide(
    service_ns: str,
    spec: InferenceServiceSpec,
    adapters: Iterable[dict[str, Any]],
    labels: NamespaceLabels,
    taken: Iterable[str] = (),
) -> list[Verdict]:
    """The verdict on every LoRAAdapter that asks for the service, oldest first. `taken`: served names the service
    itself uses (its model's name, its own adapters)."""
    names = set(taken)
    rule = spec.lora.allowed_adapters if spec.lora else None
    out: list[Verdict] = []
    for obj in sorted(adapters, key=_order):
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        key = f"{namespace}/{name}"

        def refuse(
            reason: str, message: str, served: str = name, key: str = key, unknown: bool = False
        ) -> None:
            out.append(Verdict(key, served, False, reason, message, labels_unknown=unknown))

        if meta.get("deletionTimestamp"):
            continue
        try:
            a = LORAADAPTER.parse_spec(obj)
        except SpecError as err:
            refuse(Reason.INVALID_SPEC, "; ".join(err.problems))
            continue
        assert isinstance(a, LoRAAdapterSpec)
        served = a.served_name or name
        why, unknown = _allowed(rule, namespace, service_ns, labels)
        if spec.runtime != "vllm" or not (spec.lora and spec.lora.dynamic):
            why, unknown = (
                "the service does not load adapters at runtime (runtime vllm with lora.dynamic true)",
                False,
            )
        if why is not None:
            refuse(Reason.NOT_ALLOWED, why, served, unknown=unknown)
            continue
        if namespace != service_ns and a.token_secret_ref is not None:
            refuse(Reason.NOT_ALLOWED, f"Secret {a.token_secret_ref.name!r} is in namespace {namespace!r}: the "
                   f"service's Pods, in {service_ns!r}, cannot read it; ask the service's owners for a Secret there "
                   "and attach from their namespace, or use a source that needs none", served)  # fmt: skip
            continue
        if served in names:
            refuse(Reason.NAME_CONFLICT, f"the name {served!r} is already served by this service (by its own "
                   "adapters or an older LoRAAdapter): set spec.servedName", served)  # fmt: skip
            continue
        names.add(served)
        lent = rule.token_secret_ref if rule is not None else None
        resolved = ResolvedAdapter(
            name=served, uri=a.uri, digest=a.digest, token_secret=a.token_secret_ref or lent
        )
        out.append(Verdict(key, served, True, Reason.SUCCEEDED, "", resolved))
    return out
