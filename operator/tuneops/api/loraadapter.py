"""LoRAAdapter: a team's adapter attached to a shared base InferenceService, in the team's own namespace.

The service's owners say which namespaces may attach (`spec.lora.allowedAdapters` of the InferenceService, as
Gateway API's `allowedRoutes`); the adapter's owners need no rights on the service. Both sides show the outcome:
the adapter's status says whether it was accepted and on how many of the service's ready Pods it is served; the
service's `status.attachedAdapters` lists every adapter that asked, accepted or refused, with why.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import field_validator, model_validator

from tuneops.api.common import (
    AdapterDigest,
    BaseStatus,
    DNSLabel,
    DNSName,
    Message,
    Model,
    SecretKeyRef,
    Str,
    Uri,
    fetched_by_loader,
)
from tuneops.api.inferenceservice import ServedName

KIND = "LoRAAdapter"
PLURAL = "loraadapters"
SINGULAR = "loraadapter"
SHORT_NAMES = ["lora"]


class ServiceRef(Model):
    """The InferenceService to attach to."""

    name: DNSName
    """Name of the InferenceService."""
    namespace: DNSLabel | None = None
    """Its namespace; defaults to this adapter's. The service must allow this namespace
    (spec.lora.allowedAdapters)."""


class LoRAAdapterSpec(Model):
    """An adapter for a shared base model, served by name on the service's vLLM Pods."""

    service_ref: ServiceRef
    uri: Uri
    """The adapter folder: s3://bucket/prefix or hf://org/name@revision (fetched by each Pod's adapter loader
    into its cache), or an unpinned hf://org/name (read by vLLM). Not pvc://: a claim the service's Pods do not
    mount already would need a new volume, a restart of every replica (and a Pod mounts no claim of another
    namespace); an adapter on a claim goes into the service's own spec.lora.adapters."""
    served_name: ServedName | None = None
    """The name clients put in the request's model field; defaults to this resource's name. It must be unique on
    the service: a name already taken there (by the service's own adapters or an older LoRAAdapter) is refused."""
    token_secret_ref: SecretKeyRef | None = None
    """Secret with the credentials of a private s3:// or hf:// adapter. The service's Pods read it, so it must be
    in the service's namespace: only an adapter in that namespace may name one."""
    digest: AdapterDigest | None = None
    """The adapter's recorded digest (sha256:<64 hex>): the loader refuses any other content (DigestMismatch).
    s3:// and hf://...@revision only."""

    @field_validator("uri")
    @classmethod
    def _remote(cls, uri: str) -> str:
        if not uri.startswith(("s3://", "hf://")):
            raise ValueError(
                "a LoRAAdapter comes from s3:// or hf://: the service's Pods would need a new volume (a restart of "
                "every replica) for a claim, and mount none of another namespace; put an adapter on a claim into "
                "the service's own spec.lora.adapters"
            )
        return uri

    @model_validator(mode="after")
    def _fetched_fields(self) -> LoRAAdapterSpec:
        if self.digest is not None and not fetched_by_loader(self.uri):
            raise ValueError(
                "digest is checked by the adapter loader, which fetches s3:// and hf://...@revision adapters only"
            )
        if self.token_secret_ref is not None and not self.uri.startswith(("s3://", "hf://")):
            raise ValueError("tokenSecretRef applies to s3:// and hf:// adapters only")
        return self


class ServiceSide(Model):
    """Where this adapter stands on its service."""

    service: Str
    """namespace/name of the InferenceService."""
    served_name: ServedName
    state: Literal["Ready", "Loading", "Failed", "Pending", "Refused"] = "Pending"
    ready_pods: int = 0
    """The service's ready Pods whose /v1/models lists this adapter."""
    total_pods: int = 0
    digest: Str | None = None
    message: Message | None = None


class LoRAAdapterStatus(BaseStatus):
    """Observed state of a LoRAAdapter."""

    served: ServiceSide | None = None


PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
    {"name": "Reason", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].reason'},
    {"name": "Service", "type": "string", "jsonPath": ".status.served.service"},
    {"name": "Served-As", "type": "string", "jsonPath": ".status.served.servedName"},
    {"name": "Pods", "type": "integer", "jsonPath": ".status.served.readyPods"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]

__all__ = ["KIND", "LoRAAdapterSpec", "LoRAAdapterStatus", "ServiceRef", "ServiceSide"]
