"""The cluster side of a service's LoRAAdapter verdicts (validation.attach decides): the adapters that ask, and
the labels of their namespaces."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.kube import client as k
from tuneops.kube import types as kt
from tuneops.validation.attach import NamespaceLabels, Verdict, decide, targets

__all__ = ["Verdict", "list_adapters", "namespace_labels", "service_decision"]


def list_adapters(kube: k.Kube, service_ns: str, service: str) -> list[dict[str, Any]]:
    """The LoRAAdapters the operator sees that ask for this service: from its informers (every namespace it
    watches, which is all it may read), or, without them, one list across the cluster, and where that is not
    allowed (namespaced RBAC), the service's own namespace."""
    rtype = kt.CUSTOM["LoRAAdapter"]
    informers = [inf for (rt, _), inf in getattr(kube, "informers", {}).items() if rt == rtype]
    found: list[dict[str, Any]] = []
    if informers:
        for inf in informers:
            found += inf.store.list(inf.namespace, None)
    else:
        try:
            found = kube.list(rtype, None)
        except k.NotFound:
            return []  # the CRD is not installed yet
        except k.ApiError:
            try:
                found = kube.list(rtype, service_ns)
            except k.ApiError:
                return []
    return [a for a in found if targets(a, service_ns, service)]


def namespace_labels(kube: k.Kube) -> NamespaceLabels:
    """Labels of a namespace, read when a Selector rule needs them (once per namespace per decision)."""
    seen: dict[str, dict[str, str] | None] = {}

    def read(namespace: str) -> dict[str, str] | None:
        if namespace not in seen:
            try:
                obj = kube.get(kt.NAMESPACE, None, namespace)
            except k.ApiError:
                obj = None
            seen[namespace] = None if obj is None else dict((obj.get("metadata") or {}).get("labels") or {})
        return seen[namespace]

    return read


def service_decision(
    kube: k.Kube, service: dict[str, Any], spec: InferenceServiceSpec, taken: Iterable[str]
) -> list[Verdict]:
    meta = service.get("metadata") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    return decide(ns, spec, list_adapters(kube, ns, name), namespace_labels(kube), taken)
