"""Helpers shared by the reconcilers: references to other tuneops resources, worker results into status."""

from __future__ import annotations

from typing import Any

from tuneops.api import KINDS
from tuneops.api.common import Artifact, ObjectRef
from tuneops.api.conditions import READY, find
from tuneops.kube import client as k
from tuneops.reconcile.base import Context, Invalid, Waiting
from tuneops.validation.references import Reference, check_reference


def resolve_ref(ctx: Context, obj: dict[str, Any], ref: ObjectRef, kind: str, field: str) -> dict[str, Any]:
    """Follow a reference to a Ready tuneops resource, or say what we wait for.

    Other namespaces are refused unless the operator allows them; a missing or not-yet-Ready target is
    waited for (it may be created later, e.g. by the same `kubectl apply`).
    """
    ns = obj["metadata"]["namespace"]
    target_ns = ref.namespace or ns
    refused = check_reference(
        Reference(field, kind, ref), kind=obj["kind"], namespace=ns, name=obj["metadata"]["name"],
        config=ctx.config,
    )  # fmt: skip
    if refused is not None:
        raise Invalid(str(refused))
    target = ctx.kube.get(k.TYPES[(obj["apiVersion"], kind)], target_ns, ref.name)
    if target is None:
        raise Waiting(f"{kind} {target_ns}/{ref.name} ({field}) does not exist yet")
    status = KINDS[kind].parse_status(target.get("status"))
    ready = find(status.conditions, READY)
    stale = status.observed_generation != (target.get("metadata") or {}).get("generation")
    if ready is None or ready.status != "True" or stale:
        why = f": {ready.reason} {ready.message}".rstrip() if ready is not None and not stale else ""
        raise Waiting(f"{kind} {target_ns}/{ref.name} ({field}) is not Ready yet{why}")
    return target


def artifact_from_result(result: dict[str, Any]) -> Artifact | None:
    """The artifact block of a worker's termination message, checked against the status model."""
    raw = result.get("artifact")
    if not isinstance(raw, dict) or not raw.get("uri"):
        return None
    files = raw.get("files")
    return Artifact(
        uri=str(raw["uri"]),
        digest=str(raw["digest"]) if raw.get("digest") else None,
        size_bytes=int(raw["sizeBytes"]) if isinstance(raw.get("sizeBytes"), int) else None,
        format=str(raw["format"]) if raw.get("format") else None,
        files=[str(f) for f in files][:64] if isinstance(files, list) else None,
    )
