"""What the renderers take and give: resolved inputs, the owner, problems, and the error they raise."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from tuneops.api.common import SecretKeyRef

Manifest = dict[str, Any]

ModelFormat = Literal["hf", "compressed-tensors", "awq", "gguf"]


class RenderError(ValueError):
    """The resource cannot be rendered as given (the reconciler reports it as InvalidSpec)."""


@dataclass(frozen=True)
class Owner:
    """The custom resource that owns what is rendered (from its metadata)."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": self.api_version,
            "blockOwnerDeletion": True,
            "controller": True,
            "kind": self.kind,
            "name": self.name,
            "uid": self.uid,
        }


@dataclass(frozen=True)
class ResolvedModel:
    """A model artifact after the reconciler followed references: where it is and what it is.

    `digest` is the content address (sha256 of the artifact manifest, or a pinned revision); a new digest
    under the same URI gives new Job names and rolls serving Pods. `files` lists notable files inside the
    artifact (one per GGUF quantization type). `num_attention_heads` and `base_model_name` come from the
    model's config when known and feed the compatibility checks.
    """

    uri: str
    digest: str | None = None
    format: ModelFormat = "hf"
    files: tuple[str, ...] = ()
    num_attention_heads: int | None = None
    base_model_name: str | None = None
    size_bytes: int | None = None
    token_secret: SecretKeyRef | None = None
    # The base's served name when an adapter takes the service's (a FineTunedModel served as LoRA by
    # model.serve): clients keep one model name whichever form is served.
    base_name: str | None = None


@dataclass(frozen=True)
class ResolvedAdapter:
    """A LoRA adapter to serve, with the facts the inspect step read from adapter_config.json."""

    name: str
    uri: str
    digest: str | None = None
    rank: int | None = None
    base_model_name: str | None = None
    use_dora: bool = False
    modules_to_save: tuple[str, ...] = ()
    # the Secret of an s3:// or hf:// adapter given by uri (the Pod's adapter loader reads it with it)
    token_secret: SecretKeyRef | None = None


@dataclass(frozen=True)
class Problem:
    """A reason the resource cannot be served or run as specified; `reason` is a condition reason."""

    reason: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


def model_format(artifact_format: str | None) -> ModelFormat:
    """Map an artifact's recorded format (status.artifact.format) to the format the renderers reason about."""
    mapping: dict[str | None, ModelFormat] = {
        None: "hf",
        "safetensors": "hf",
        "hf": "hf",
        "compressed-tensors": "compressed-tensors",
        "awq": "awq",
        "gguf": "gguf",
    }
    if artifact_format not in mapping:
        raise RenderError(f"unknown model artifact format {artifact_format!r}")
    return mapping[artifact_format]
