"""Data types shared by the runtime LoRA adapter planner, executor and status summary."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

DEFAULT_MAX_ATTEMPTS = 3


class DesiredAdapter(BaseModel):
    """An adapter the InferenceService asks for: the path the server reads it from and its content digest.

    The path is the adapter's identity on a server: an adapter published by a FineTunedModel has a
    content-addressed path (`<output>/<digest>`), so new weights come under a new path; one given by `uri` is
    the weights at that path, whatever they are. The digest is only reported."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: str
    digest: str
    # s3:// or hf://...@revision: the Pod's adapter loader fetches it, and its answer gives the path (per Pod)
    uri: str = ""
    # the credential role of the adapter's Secret in the loader's environment ("" for none)
    role: str = ""


# Entries read from one /v1/models answer; a server listing more is reported, and the rest ignored.
MAX_LISTED_MODELS = 1024
# Longer names are not vLLM adapters anyone asked for; they are counted as ignored, never echoed.
MAX_MODEL_NAME = 256


class ServedModels(BaseModel):
    """What one server reports on GET /v1/models: base models and LoRA adapters (entries with a parent)."""

    model_config = ConfigDict(frozen=True)

    base_models: tuple[str, ...] = ()
    # adapter name -> the path vLLM loaded it from (the entry's `root`): the truth the planner compares
    adapters: dict[str, str] = Field(default_factory=dict)
    # adapter name -> the base model it is served on (the entry's `parent`)
    parents: dict[str, str] = Field(default_factory=dict)
    # entries beyond MAX_LISTED_MODELS, or with over-long names: neither planned for nor shown
    ignored: int = 0

    @classmethod
    def from_openai_models(cls, body: Mapping[str, Any], limit: int = MAX_LISTED_MODELS) -> ServedModels:
        """Parse an OpenAI-style model list; vLLM marks a LoRA entry by a non-null `parent`."""
        data = body.get("data")
        if not isinstance(data, list):
            raise ValueError("model list has no 'data' array")
        bases: list[str] = []
        adapters: dict[str, str] = {}
        parents: dict[str, str] = {}
        ignored = max(0, len(data) - limit)
        for entry in data[:limit]:
            if not isinstance(entry, Mapping) or not isinstance(entry.get("id"), str):
                raise ValueError(f"malformed model entry: {str(entry)[:100]!r}")
            name: str = entry["id"]
            parent = entry.get("parent")
            if not name or len(name) > MAX_MODEL_NAME:
                ignored += 1
            elif parent:
                adapters[name] = str(entry.get("root") or "")[:4096]
                parents[name] = str(parent)[:MAX_MODEL_NAME]
            else:
                bases.append(name)
        return cls(base_models=tuple(bases), adapters=adapters, parents=parents, ignored=ignored)


class ActionKind(StrEnum):
    LOAD = "load"
    # new weights under a name the server already lists: unload, then load (never vLLM's load_inplace, which
    # vLLM keeps on the stored request and so re-reads the adapter from disk at every engine step: vllm#41482)
    RELOAD = "reload"
    UNLOAD = "unload"


class AdapterAction(BaseModel):
    """One call to the server's runtime LoRA API."""

    model_config = ConfigDict(frozen=True)

    kind: ActionKind
    name: str
    path: str = ""
    digest: str = ""
    reason: str = ""


class AdapterState(StrEnum):
    READY = "Ready"
    LOADING = "Loading"
    FAILED = "Failed"
    # served by the pod but no longer desired; being unloaded
    UNLOADING = "Unloading"


class AdapterPodState(BaseModel):
    """The state of one adapter on one pod."""

    model_config = ConfigDict(frozen=True)

    name: str
    state: AdapterState
    desired: bool = True
    digest: str = ""
    attempts: int = 0
    message: str = ""


class FailureRecord(BaseModel):
    """Failed attempts to bring one adapter to its desired state on one pod."""

    model_config = ConfigDict(frozen=True)

    # what the attempts were for: the desired path ("" for unloads); a new path starts a fresh count
    target: str = ""
    attempts: int = 0
    message: str = ""


class PodMemory(BaseModel):
    """What the reconciler remembers about one pod between passes: only its failed attempts, kept in the
    operator's own memory (never on the Pod, where its owner could write it).

    What a pod serves is never remembered: every pass reads it from the server (/v1/models lists each adapter
    with the path it was loaded from, and the desired path carries the digest), so a restarted operator, or one
    that lost this memory, only retries a failing adapter up to max_attempts once more.
    """

    model_config = ConfigDict(frozen=True)

    failures: dict[str, FailureRecord] = Field(default_factory=dict)


class PodPlan(BaseModel):
    """The actions one pass runs against one pod, and the state each adapter is in before they run."""

    model_config = ConfigDict(frozen=True)

    actions: tuple[AdapterAction, ...] = ()
    states: dict[str, AdapterPodState] = Field(default_factory=dict)


class ActionResult(BaseModel):
    """The server's answer to one action."""

    model_config = ConfigDict(frozen=True)

    action: AdapterAction
    ok: bool
    status: int = 0
    message: str = ""
    seconds: float = 0.0


class PodResult(BaseModel):
    """The outcome of one reconcile pass on one pod: the truth read back from /v1/models afterwards."""

    model_config = ConfigDict(frozen=True)

    pod: str
    reachable: bool
    error: str = ""
    served: ServedModels | None = None
    results: tuple[ActionResult, ...] = ()
    states: dict[str, AdapterPodState] = Field(default_factory=dict)
    memory: PodMemory = Field(default_factory=PodMemory)


class PodProblem(BaseModel):
    """A ready Pod that does not serve what it should, and why, in a line (status.pods)."""

    model_config = ConfigDict(frozen=True)

    pod: str
    ready_adapters: int = 0
    message: str = ""


class AdapterSummary(BaseModel):
    """Per adapter: on how many ready pods it is served (status.adapters[])."""

    model_config = ConfigDict(frozen=True)

    name: str
    digest: str
    ready_pods: int
    total_pods: int
    state: AdapterState
    message: str = ""


class AdaptersSummary(BaseModel):
    """Per-adapter counts and the AdaptersReady condition for an InferenceService."""

    model_config = ConfigDict(frozen=True)

    adapters: tuple[AdapterSummary, ...] = ()
    ready: bool
    reason: str
    message: str
