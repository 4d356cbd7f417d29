"""The server Pod both runtimes share: where the model files come from, the server container, probes, scheduling."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuneops import labels
from tuneops.api.common import SecretKeyRef
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.env import Source, env_secret, env_value, merge_env, source_env
from tuneops.render.names import standard_labels
from tuneops.render.pod import (
    GPU_RESOURCE,
    TERMINATION_LOG,
    TMP_VOLUME,
    container_defaults,
    empty_dir,
    pod_spec,
    sorted_resources,
    with_scratch_request,
)
from tuneops.render.serving.types import CONTAINER, PORT, SERVER
from tuneops.render.types import Owner, ResolvedModel
from tuneops.render.volumes import Mounts, parse, pod_path

FETCH_CONTAINER = "fetch-model"
MODEL_DIR = "/mnt/model"
PRESTOP_SLEEP_SECONDS = 10


@dataclass(frozen=True)
class ModelFiles:
    """Where the server finds the model, and the volumes and init container that put it there."""

    path: str
    volumes: tuple[dict[str, Any], ...]
    mounts: tuple[dict[str, Any], ...]
    init: tuple[dict[str, Any], ...]


def model_secret(spec: InferenceServiceSpec, model: ResolvedModel) -> SecretKeyRef | None:
    return model.token_secret or spec.model.token_secret_ref


def model_files(
    spec: InferenceServiceSpec,
    model: ResolvedModel,
    config: OperatorConfig,
    mounts: Mounts,
    *,
    uri: str,
    file: str | None = None,
) -> ModelFiles:
    """pvc:// is mounted read-only; file:// is used as is (local use); s3:// and hf:// are downloaded by an
    init container into an emptyDir sized from the artifact when its size is known."""
    if parse(uri).scheme in ("pvc", "file"):
        mounts.add(uri)
        base = pod_path(uri, config)
        return ModelFiles(path=f"{base.rstrip('/')}/{file}" if file else base, volumes=(), mounts=(), init=())
    size = config.scratch.model
    if model.size_bytes:
        size = f"{math.ceil(model.size_bytes * 1.1 / 2**20) + 1024}Mi"
    return ModelFiles(
        path=f"{MODEL_DIR}/{file}" if file else MODEL_DIR,
        volumes=(empty_dir("model", size),),
        mounts=({"mountPath": MODEL_DIR, "name": "model", "readOnly": True},),
        init=(fetch_container(uri, model_secret(spec, model), config, model.digest),),
    )


def fetch_container(
    uri: str,
    secret: SecretKeyRef | None,
    config: OperatorConfig,
    digest: str | None = None,
    *,
    name: str = FETCH_CONTAINER,
    dest: str = MODEL_DIR,
    volume: str = "model",
    volume_path: str = MODEL_DIR,
) -> dict[str, Any]:
    """Downloads a model into `dest` (on `volume`, mounted at `volume_path`); with the artifact's recorded digest,
    refuses any other content (DigestMismatch)."""
    expect = ["--expect-digest", digest] if digest and digest.startswith("sha256:") else []
    env = merge_env(
        [
            env_value("HOME", "/tmp"),
            env_value("TUNEOPS_PVC_ROOT", config.pvc_mount_root),
            env_value("TUNEOPS_TERMINATION_LOG", TERMINATION_LOG),
            *source_env([Source("model", uri, secret)], ambient=config.allow_ambient_credentials),
        ]
    )
    return {
        "args": ["worker", "fetch", "--source", uri, "--dest", dest, *expect],
        "command": ["tuneops"],
        "env": env,
        "image": config.images.worker,
        "name": name,
        # Downloading is network- and disk-bound; a small, fixed footprint keeps it off the model's budget.
        "resources": sorted_resources(
            {"memory": "2Gi"}, with_scratch_request({"cpu": "1", "memory": "1Gi"}, config)
        ),
        "volumeMounts": [
            {"mountPath": volume_path, "name": volume},
            {"mountPath": "/tmp", "name": TMP_VOLUME},
        ],
        **container_defaults(),
    }


def _http_probe(period: int, failures: int, timeout: int) -> dict[str, Any]:
    return {
        "failureThreshold": failures,
        "httpGet": {"path": "/health", "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
    }


def probes(startup_timeout: int) -> dict[str, Any]:
    """Probes on /health; the startup probe holds the others off while a large model loads."""
    return {
        "livenessProbe": _http_probe(period=15, failures=4, timeout=10),
        "readinessProbe": _http_probe(period=5, failures=3, timeout=5),
        "startupProbe": _http_probe(period=10, failures=math.ceil(startup_timeout / 10), timeout=5),
    }


def server_resources(
    spec: InferenceServiceSpec, config: OperatorConfig, gpus: int, cpu_default: bool
) -> dict[str, Any]:
    r = spec.resources
    cpu = r.cpu if r.cpu is not None else (config.worker_cpu if cpu_default else None)
    memory = r.memory if r.memory is not None else (config.worker_memory if cpu_default else None)
    requests: dict[str, int | str] = {}
    if cpu is not None:
        requests["cpu"] = cpu
    if memory is not None:
        requests["memory"] = memory
    limits = dict(requests)
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    return sorted_resources(limits, with_scratch_request(requests, config))


def api_key_env(spec: InferenceServiceSpec, name: str) -> list[dict[str, Any]]:
    ref = spec.api_key_secret_ref
    return [env_secret(name, ref.name, ref.key)] if ref else []


def server_container(
    spec: InferenceServiceSpec,
    *,
    image: str,
    args: list[str],
    env: Sequence[Mapping[str, Any]],
    resources: dict[str, Any],
    volume_mounts: list[dict[str, Any]],
    startup_seconds: int,
) -> dict[str, Any]:
    """The server container: OpenAI API on the http port, probes, and a preStop pause so endpoints drain."""
    return {
        "args": args,
        "env": merge_env(env, [e.wire() for e in spec.env or []]),
        "image": image,
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SLEEP_SECONDS)]}}},
        "name": CONTAINER,
        "ports": [{"containerPort": PORT, "name": "http", "protocol": "TCP"}],
        "resources": resources,
        "volumeMounts": volume_mounts,
        **container_defaults(),
        **probes(startup_seconds),
    }


def server_pod_spec(
    spec: InferenceServiceSpec,
    config: OperatorConfig,
    container: dict[str, Any],
    *,
    volumes: list[dict[str, Any]],
    files: ModelFiles,
    gpus: int,
    shutdown_seconds: int,
) -> dict[str, Any]:
    """The server Pod; `shutdown_seconds` is what the server may take to stop after the preStop pause."""
    out = pod_spec(
        config,
        containers=[container],
        volumes=volumes,
        gpus=gpus,
        node_selector=spec.node_selector,
        tolerations=[t.wire() for t in spec.tolerations or []],
        affinity=spec.affinity,
        priority_class_name=spec.priority_class_name,
        service_account_name=spec.service_account_name,
        runtime_class_name=spec.runtime_class_name,
        gpu_product=spec.resources.gpu_product,
    )
    out["terminationGracePeriodSeconds"] = PRESTOP_SLEEP_SECONDS + shutdown_seconds
    if files.init:
        out["initContainers"] = list(files.init)
    return out


def extra_labels(spec: InferenceServiceSpec) -> dict[str, str]:
    # The runtime label lets monitors tell vLLM Pods (which serve /metrics) from llama.cpp ones.
    out: dict[str, str] = {labels.RUNTIME: spec.runtime}
    if spec.queue_name:
        out[labels.KUEUE_QUEUE] = spec.queue_name
    return out


def pod_metadata(
    spec: InferenceServiceSpec,
    owner: Owner,
    model: ResolvedModel,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Pod template metadata. Its annotations roll the Pods when they change: a new model digest always,
    and whatever else the runtime adds (the adapters hash)."""
    rolling = {labels.MODEL_DIGEST: model.digest} if model.digest else {}
    rolling.update(annotations or {})
    meta: dict[str, Any] = {"labels": standard_labels(owner, SERVER, extra_labels(spec))}
    if rolling:
        meta["annotations"] = dict(sorted(rolling.items()))
    return meta
