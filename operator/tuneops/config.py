"""Operator configuration: images, artifact root, watched namespaces and defaults, from env or a YAML file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class Images(BaseModel):
    """Container images of each step and runtime (pinned tags; the chart overrides them)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    worker: str = "ghcr.io/tuneops/worker:0.1.0"
    """merge, AWQ, evaluate, inspect and fetch (CUDA base)."""
    gguf: str = "ghcr.io/tuneops/gguf:0.1.0"
    """GGUF conversion and quantization (llama.cpp tools)."""
    vllm: str = "vllm/vllm-openai:v0.32.0"
    """vLLM's OpenAI-compatible server."""
    llamacpp: str = "ghcr.io/ggml-org/llama.cpp:server-b6000"
    """llama.cpp's OpenAI-compatible server."""


class Features(BaseModel):
    """API features that depend on the cluster's Kubernetes version (discovered at startup)."""

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    pod_failure_policy: bool = False
    """Job.spec.podFailurePolicy (Kubernetes 1.26+)."""
    pdb_v1: bool = True
    """policy/v1 PodDisruptionBudget (Kubernetes 1.21+); older servers get policy/v1beta1."""


class OperatorConfig(BaseModel):
    """Everything the renderers and reconcilers read that is not in a resource's spec.

    Keys may be written camelCase (allowCrossNamespaceRefs), as in the chart's values, or snake_case.
    """

    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)

    images: Images = Field(default_factory=Images)
    artifact_root: str = "pvc://tuneops-artifacts"
    """Where outputs go when a resource names none: <root>/<namespace>/<kind plural>/<name>."""
    pvc_mount_root: str = "/mnt/pvc"
    """Where PersistentVolumeClaims are mounted in Pods; pvc://claim/path is <root>/<claim>/path."""
    namespaces: list[str] = Field(default_factory=list)
    """Namespaces to watch; empty means all."""
    allow_cross_namespace_refs: bool = False
    """Whether a resource may reference resources in other namespaces."""
    job_ttl_seconds: int = 86400
    """ttlSecondsAfterFinished of the Jobs (the operator has copied the result into status by then)."""
    cluster_domain: str = "cluster.local"
    features: Features = Field(default_factory=Features)
    worker_cpu: str = "2"
    """Default CPU request of a worker Job when the spec sets none."""
    worker_memory: str = "8Gi"
    """Default memory request of a worker Job when the spec sets none."""
    gpu_toleration: bool = True
    """Add the nvidia.com/gpu NoSchedule toleration to Pods that request GPUs."""
    spare_gpus: bool = False
    """Whether the cluster keeps spare GPUs for a rolling update's surge Pod (else maxSurge is 0)."""
    allow_custom_code: bool = False
    """Let GGUF conversion take model folders that carry their own Python code (an auto_map, *.py files).
    llama.cpp's converter runs that code for some architectures (Qwen v1, ChatGLM); off, such sources are
    refused and the converter cannot turn trust_remote_code on. Either way it runs without credentials."""

    @classmethod
    def load(cls, path: str | os.PathLike[str] | None = None) -> OperatorConfig:
        """From a YAML file ($TUNEOPS_CONFIG when no path), with TUNEOPS_IMAGE_* env overrides."""
        data: dict[str, Any] = {}
        chosen = path or os.environ.get("TUNEOPS_CONFIG")
        if chosen:
            loaded = yaml.safe_load(Path(chosen).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{chosen}: operator config must be a mapping")
            data = loaded
        cfg = cls.model_validate(data)
        for field in Images.model_fields:
            env = os.environ.get(f"TUNEOPS_IMAGE_{field.upper()}")
            if env:
                setattr(cfg.images, field, env)
        if os.environ.get("TUNEOPS_ARTIFACT_ROOT"):
            cfg.artifact_root = os.environ["TUNEOPS_ARTIFACT_ROOT"]
        return cfg
