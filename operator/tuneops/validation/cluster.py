"""The checks that need the cluster: what `tuneops validate` cannot tell from files, and says so.

Everything in this package refuses from the spec alone (and from the other resources in the same input). What
follows is known only where the objects live: whether a claim exists and holds the path, whether a Secret
exists and has the key, and the facts of an adapter named by `uri` (its rank, base model and target modules,
read from its adapter_config.json when a Pod or Job first reads it). `validate` lists them per resource, with
where the cluster reports each one when it is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from tuneops.api.inferenceservice import InferenceServiceSpec

# What the cluster reports when one of these is wrong (see docs/troubleshooting.md).
CLUSTER_CHECKS: dict[str, str] = {
    "claim": "claim {claim!r} exists and holds {path} (else ClaimPending, or the step or server fails)",
    "secret": "Secret {secret!r} exists with key {key!r} and may be read "
    "(else CreateContainerConfigError or SecretUnreadable)",
    "adapter": "adapter {adapter!r}: rank vs maxLoraRank, base model, target modules "
    "(read when the server starts; else AdapterLoadFailed)",
    "hub": "{uri} exists on the Hub and the token may read it (else the step fails: JobFailed)",
}


def _walk(value: Any, path: str) -> Iterator[tuple[str, Any]]:
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, f"{path}[{i}]")


def cluster_checks(spec: BaseModel) -> list[str]:
    """What the operator, the Jobs or the servers will check in the cluster for `spec`, that files cannot tell
    (each a sentence starting with the field: `spec.model.uri: that PersistentVolumeClaim ...`)."""
    out: list[str] = []
    seen: set[str] = set()
    wire = spec.model_dump(by_alias=True, exclude_none=True, mode="json")

    def add(text: str) -> None:
        if text not in seen:
            seen.add(text)
            out.append(text)

    for path, value in _walk(wire, "spec"):
        if isinstance(value, str) and value.startswith("pvc://"):
            claim, _, rest = value[len("pvc://") :].partition("/")
            add(f"{path}: " + CLUSTER_CHECKS["claim"].format(claim=claim, path="/" + rest))
        elif isinstance(value, str) and value.startswith("hf://"):
            add(f"{path}: " + CLUSTER_CHECKS["hub"].format(uri=value))
        elif isinstance(value, dict) and path.endswith("SecretRef") and "name" in value:
            key = value.get("key") or "(the default key)"
            add(f"{path}: " + CLUSTER_CHECKS["secret"].format(secret=value["name"], key=key))
        elif isinstance(value, dict) and path.endswith("secretKeyRef") and "name" in value:
            add(f"{path}: " + CLUSTER_CHECKS["secret"].format(secret=value["name"], key=value.get("key")))
    if isinstance(spec, InferenceServiceSpec) and spec.lora is not None:
        for i, adapter in enumerate(spec.lora.adapters):
            if adapter.uri is not None:
                text = CLUSTER_CHECKS["adapter"].format(adapter=adapter.name, uri=adapter.uri)
                add(f"spec.lora.adapters[{i}].uri: {text}")
    return out
