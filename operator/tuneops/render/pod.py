"""Pod pieces every workload shares: security contexts, quantities, GPU scheduling, scheduling fields."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from tuneops.config import OperatorConfig
from tuneops.render.names import canonical_json
from tuneops.render.types import RenderError

TERMINATION_LOG = "/dev/termination-log"
RUN_AS_USER = 65532
"""The user every rendered Pod runs as: the project images' numeric USER (the distroless `nonroot` convention)."""
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
EPHEMERAL_STORAGE = "ephemeral-storage"
TMP_VOLUME = "tmp"


def pod_security_context() -> dict[str, Any]:
    return {
        "fsGroup": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_security_context() -> dict[str, Any]:
    # The root filesystem is read-only: what a container writes goes to its emptyDirs, which have sizeLimits.
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def container_defaults() -> dict[str, Any]:
    """What every container gets: the restricted security context, and a termination message where a worker
    leaves its result (and a server its last words) for status."""
    return {
        "imagePullPolicy": "IfNotPresent",
        "securityContext": container_security_context(),
        "terminationMessagePath": TERMINATION_LOG,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def empty_dir(name: str, size_limit: str, *, medium: str | None = None) -> dict[str, Any]:
    """A scratch volume, bounded: a Pod that writes more than `size_limit` is evicted, not the node's disk filled."""
    source: dict[str, Any] = {"sizeLimit": size_limit}
    if medium:
        source["medium"] = medium
    return {"emptyDir": source, "name": name}


def tmp_volume(config: OperatorConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """/tmp of a container whose root filesystem is read-only."""
    return empty_dir(TMP_VOLUME, config.scratch.tmp), {"mountPath": "/tmp", "name": TMP_VOLUME}


def with_scratch_request(requests: Mapping[str, int | str], config: OperatorConfig) -> dict[str, int | str]:
    """Requests with the container's ephemeral-storage (the spec's own value wins)."""
    return {EPHEMERAL_STORAGE: config.scratch.request, **requests}


def cpu_cores(q: int | str | None) -> int | None:
    """Whole cores of a CPU quantity, rounded up ("500m" -> 1, "2" -> 2)."""
    if q is None:
        return None
    text = str(q).strip()
    try:
        value = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError as err:
        raise RenderError(f"cannot read CPU quantity {q!r}") from err
    return max(1, math.ceil(value))


def sorted_resources(limits: Mapping[str, int | str], requests: Mapping[str, int | str]) -> dict[str, Any]:
    """A resources block: quantities as strings, sorted keys, no empty halves."""
    out: dict[str, Any] = {}
    if limits:
        out["limits"] = {k: str(v) for k, v in sorted(limits.items())}
    if requests:
        out["requests"] = {k: str(v) for k, v in sorted(requests.items())}
    return out


def gpu_tolerations(
    user: Sequence[Mapping[str, Any]], gpus: int, config: OperatorConfig
) -> list[dict[str, Any]]:
    out = [dict(t) for t in user]
    if gpus > 0 and config.gpu_toleration:
        tol = {"effect": "NoSchedule", "key": GPU_RESOURCE, "operator": "Exists"}
        if tol not in out:
            out.append(tol)
    return out


def with_gpu_product(affinity: Mapping[str, Any] | None, product: str | None) -> dict[str, Any] | None:
    """The user's affinity with a required nvidia.com/gpu.product term ANDed into every node selector term."""
    if not product:
        return dict(affinity) if affinity else None
    out = json.loads(canonical_json(affinity or {}))
    expr = {"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [product]}
    node = out.setdefault("nodeAffinity", {})
    required = node.setdefault("requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.setdefault("nodeSelectorTerms", [])
    if not terms:
        terms.append({})
    for term in terms:
        term.setdefault("matchExpressions", []).append(expr)
    return dict(out)


def pod_spec(
    config: OperatorConfig,
    *,
    containers: list[dict[str, Any]],
    volumes: list[dict[str, Any]],
    gpus: int,
    node_selector: Mapping[str, str] | None,
    tolerations: Sequence[Mapping[str, Any]],
    affinity: Mapping[str, Any] | None,
    priority_class_name: str | None,
    service_account_name: str | None,
    runtime_class_name: str | None = None,
    gpu_product: str | None = None,
) -> dict[str, Any]:
    """A Pod spec: its containers and volumes, restricted, and where and as whom it runs (the user's
    choices, plus what a Pod with `gpus` GPUs needs)."""
    out: dict[str, Any] = {
        "containers": containers,
        "enableServiceLinks": False,
        "securityContext": pod_security_context(),
        "volumes": volumes,
    }
    if node_selector:
        out["nodeSelector"] = dict(sorted(node_selector.items()))
    all_tolerations = gpu_tolerations(tolerations, gpus, config)
    if all_tolerations:
        out["tolerations"] = all_tolerations
    full_affinity = with_gpu_product(affinity, gpu_product if gpus else None)
    if full_affinity:
        out["affinity"] = full_affinity
    if priority_class_name:
        out["priorityClassName"] = priority_class_name
    if service_account_name:
        out["serviceAccountName"] = service_account_name
        out["automountServiceAccountToken"] = True
    else:
        # Workers and servers never talk to the API server; no token in the Pod unless a ServiceAccount
        # (for workload identity, say) is asked for.
        out["automountServiceAccountToken"] = False
    if runtime_class_name:
        out["runtimeClassName"] = runtime_class_name
    return out
