"""The adapter loader beside vLLM: a native sidecar (or a plain container) that fetches s3:// and
hf://...@revision adapters into a per-Pod cache vLLM reads from (tuneops.workers.loader).

What goes into the Pod template depends on the spec only, never on which adapters are Ready: the loader is there
when `spec.lora.adapters` names an adapter it fetches, and its credentials are one set of variables per Secret
those adapters name (`TUNEOPS_ADAPTER_<hash>_*`). Adding an adapter that uses no Secret, or a Secret already
named, changes nothing in the template, so running Pods get it through the runtime API without a restart; a new
Secret adds variables and so rolls the Pods (a Pod's environment cannot change). Which variables read which URI
is said by the operator in each sync request, never by the Pod.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from tuneops.api.common import SecretKeyRef, fetched_by_loader
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.env import env_secret, env_value, merge_env
from tuneops.render.pod import (
    TERMINATION_LOG,
    TMP_VOLUME,
    container_defaults,
    empty_dir,
    sorted_resources,
    with_scratch_request,
)
from tuneops.render.serving.pod import api_key_env
from tuneops.render.serving.types import LOADER_PORT
from tuneops.render.types import ResolvedAdapter
from tuneops.storage.credentials import AMBIENT_ENV, AWS_KEYS, credential_prefix

CONTAINER = "adapter-loader"
VOLUME = "adapters"
CACHE_DIR = "/mnt/adapters"
API_KEY_ENV = "TUNEOPS_LOADER_API_KEY"
_BINARY = {
    "": 1,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def needs_loader(spec: InferenceServiceSpec) -> bool:
    """Whether the service's Pods run the loader: runtime adapters, one of which the loader fetches."""
    lora = spec.lora
    return (
        spec.runtime == "vllm"
        and lora is not None
        and lora.dynamic
        and (
            lora.allowed_adapters is not None
            or any(a.uri is not None and fetched_by_loader(a.uri) for a in lora.adapters)
        )
    )


def secret_role(secret: SecretKeyRef) -> str:
    """The credential role of one Secret (and key) among a service's adapters: its variables' prefix, stable
    whatever else the spec holds."""
    digest = hashlib.sha256(f"{secret.name}\0{secret.key}".encode()).hexdigest()[:12]
    return f"adapter-{digest}"


def cache_bytes(spec: InferenceServiceSpec) -> int:
    """lora.cacheSize in bytes (a Kubernetes quantity)."""
    raw = str(spec.lora.cache_size if spec.lora else "10Gi").strip()
    number = raw.rstrip("KMGTikm")
    suffix = raw[len(number) :]
    return int(Decimal(number) * _BINARY.get(suffix, 1))


def _secrets(
    spec: InferenceServiceSpec, adapters: Sequence[ResolvedAdapter]
) -> list[tuple[str, str, SecretKeyRef]]:
    """(role, scheme, Secret) of every fetched adapter with a Secret: the spec's, and attached LoRAAdapters' (of
    the service's namespace: others may name none), sorted so the template does not depend on their order."""
    found: dict[tuple[str, str], SecretKeyRef] = {}
    uris = [(a.uri, a.token_secret_ref) for a in (spec.lora.adapters if spec.lora else [])]
    uris += [(a.uri, a.token_secret) for a in adapters]
    pairs = [
        (uri.partition("://")[0], ref)
        for uri, ref in uris
        if ref is not None and uri and fetched_by_loader(uri)
    ]
    lent = spec.lora.allowed_adapters.token_secret_ref if spec.lora and spec.lora.allowed_adapters else None
    if lent is not None:  # in the template from the start: an adapter attached later rolls no Pod
        pairs += [("s3", lent), ("hf", lent)]
    for scheme, ref in pairs:
        found.setdefault((secret_role(ref), scheme), ref)
    return [(role, scheme, ref) for (role, scheme), ref in sorted(found.items())]


def _secret_env(spec: InferenceServiceSpec, adapters: Sequence[ResolvedAdapter]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for role, scheme, ref in _secrets(spec, adapters):
        prefix = credential_prefix(role)
        if scheme == "hf":
            # the token, and optionally a Hub mirror's address (the Secret's HF_ENDPOINT key)
            out.append(env_secret(f"{prefix}HF_TOKEN", ref.name, ref.key))
            out.append(env_secret(f"{prefix}HF_ENDPOINT", ref.name, "HF_ENDPOINT", optional=True))
        else:
            out += [env_secret(prefix + k, ref.name, k, optional=True) for k in AWS_KEYS]
    return out


def volume(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The cache both containers share. Its sizeLimit leaves room for one download in staging beside a full
    cache; the loader itself keeps the published folders within lora.cacheSize."""
    mib = -(-cache_bytes(spec) * 2 // 2**20)
    return empty_dir(VOLUME, f"{mib}Mi")


def server_mount() -> dict[str, Any]:
    return {"mountPath": CACHE_DIR, "name": VOLUME, "readOnly": True}


def container(
    spec: InferenceServiceSpec, config: OperatorConfig, adapters: Sequence[ResolvedAdapter] = ()
) -> dict[str, Any]:
    """The loader; with config.native_sidecars an init container that keeps running (restartPolicy Always:
    started before vLLM, stopped after it, restarted on its own)."""
    ambient = config.allow_ambient_credentials and any(
        (a.uri or "").startswith("s3://") for a in (spec.lora.adapters if spec.lora else [])
    )
    env = merge_env(
        [
            env_value("HOME", "/tmp"),
            env_value("HF_HOME", "/tmp/huggingface"),
            env_value("TUNEOPS_TERMINATION_LOG", TERMINATION_LOG),
            *([env_value(AMBIENT_ENV, "1")] if ambient else []),
            *_secret_env(spec, adapters),
            *api_key_env(spec, API_KEY_ENV),
        ]
    )
    out: dict[str, Any] = {
        "args": [
            "worker",
            "adapter-loader",
            "--cache",
            CACHE_DIR,
            "--max-bytes",
            str(cache_bytes(spec)),
            "--port",
            str(LOADER_PORT),
            "--host",
            "0.0.0.0",
        ],
        "command": ["tuneops"],
        "env": env,
        "image": config.images.worker,
        "name": CONTAINER,
        "ports": [{"containerPort": LOADER_PORT, "name": "loader", "protocol": "TCP"}],
        "readinessProbe": {
            "failureThreshold": 3,
            "httpGet": {"path": "/healthz", "port": "loader"},
            "periodSeconds": 5,
            "timeoutSeconds": 3,
        },
        # Downloads are network- and disk-bound: a small fixed footprint, off the server's budget.
        "resources": sorted_resources(
            {"memory": "1Gi"}, with_scratch_request({"cpu": "250m", "memory": "512Mi"}, config)
        ),
        "volumeMounts": [
            {"mountPath": CACHE_DIR, "name": VOLUME},
            {"mountPath": "/tmp", "name": TMP_VOLUME},
        ],
        **container_defaults(),
    }
    if native(config):
        out["restartPolicy"] = "Always"
    return out


def native(config: OperatorConfig) -> bool:
    """A native sidecar: asked for, and known to the cluster's API server (an older one would drop the field and
    wait for the loader to exit before starting vLLM)."""
    return config.native_sidecars and config.features.native_sidecars


def add_to_pod(
    pod: dict[str, Any],
    spec: InferenceServiceSpec,
    config: OperatorConfig,
    adapters: Sequence[ResolvedAdapter],
) -> None:
    """The loader, its cache volume, and the server's read-only mount of it, into a rendered server Pod spec."""
    pod["volumes"] = sorted([*pod.get("volumes", []), volume(spec)], key=lambda v: str(v["name"]))
    server = pod["containers"][0]
    server["volumeMounts"] = [*server.get("volumeMounts", []), server_mount()]
    if native(config):
        pod["initContainers"] = [*pod.get("initContainers", []), container(spec, config, adapters)]
    else:
        pod["containers"] = [*pod["containers"], container(spec, config, adapters)]
