"""The worker's termination message: one short camelCase JSON object the operator reads from the Pod status."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

DEFAULT_TERMINATION_LOG = "/dev/termination-log"
MAX_BYTES = 4096  # Kubernetes truncates termination messages beyond this
_BUDGET = 3500

log = logging.getLogger("tuneops.workers")


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class ArtifactResult(_Camel):
    uri: str
    digest: str
    size_bytes: int = Field(ge=0)
    format: str
    """safetensors, compressed-tensors, gguf or peft."""
    files: list[str] | None = None
    """Notable files (one per GGUF type, in the order asked)."""
    reused: bool | None = None
    """True when a complete artifact from the same inputs and parameters was found and kept."""


class AdapterFacts(_Camel):
    type: str
    rank: int
    alpha: float
    rs_lora: bool
    target_modules: list[str]
    modules_to_save: list[str]
    base_model_name: str | None = None
    use_dora: bool | None = None
    max_rank: int | None = None
    """Largest rank across rank_pattern (what a server's max-lora-rank must cover)."""


class Metrics(_Camel):
    perplexity: float
    reference_perplexity: float
    increase_pct: float
    tokens: int | None = None


class BenchmarkFigures(_Camel):
    variant: str
    concurrency: int
    output_tokens_per_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    itl_p50_ms: float
    accelerator_s_per_thousand_tokens: float


class Benchmark(_Camel):
    """compare: both variants' figures, the quality check and the recommendation."""

    figures: list[BenchmarkFigures]
    recommendation: str
    reason: str
    lora_throughput_ratio: float | None = None
    quality_gap: float
    accelerator: str
    differences: list[str] | None = None


class WorkerResult(_Camel):
    """Every field but artifact is kind-specific; error is set (alone) when a worker fails."""

    artifact: ArtifactResult | None = None
    adapter: AdapterFacts | None = None
    problems: list[str] | None = None
    metrics: Metrics | None = None
    passed: bool | None = None
    method: str | None = None
    dtype: str | None = None
    """merge: the precision the merged weights were written in (what `auto` resolved to)."""
    benchmark: Benchmark | None = None
    error: str | None = None
    reason: str | None = None
    """With error: a condition reason of its own (DigestMismatch), where JobFailed would say too little."""

    def dumps(self) -> str:
        """Compact JSON that fits the Kubernetes limit: long lists and messages are cut first."""
        data = self.model_dump(by_alias=True, exclude_none=True)
        text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) <= _BUDGET:
            return text
        if isinstance(data.get("problems"), list):
            data["problems"] = [p[:200] for p in data["problems"][:8]]
        if isinstance(data.get("benchmark"), dict) and data["benchmark"].get("differences"):
            data["benchmark"]["differences"] = [d[:200] for d in data["benchmark"]["differences"][:4]]
        if data.get("artifact", {}).get("files"):
            data["artifact"]["files"] = data["artifact"]["files"][:16]
        if isinstance(data.get("error"), str):
            data["error"] = data["error"][-1500:]
        text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > _BUDGET and isinstance(data.get("benchmark"), dict):
            # the figures and the recommendation matter; the reason already names the first differences
            data["benchmark"].pop("differences", None)
            data["benchmark"]["reason"] = str(data["benchmark"].get("reason", ""))[:400]
            text = json.dumps(data, separators=(",", ":"))
        if len(text.encode()) > _BUDGET:
            text = json.dumps({"error": "result too large for the termination message"})
        return text


def parse(message: str) -> WorkerResult:
    """The operator's side: a termination message back into the model."""
    return WorkerResult.model_validate(json.loads(message))


def termination_path() -> Path:
    return Path(os.environ.get("TUNEOPS_TERMINATION_LOG") or DEFAULT_TERMINATION_LOG)


def write(result: WorkerResult) -> None:
    """Writes the message. Kubernetes creates the default path in the container; outside a Pod it is
    absent (or unwritable) and the message only goes to stdout."""
    path = termination_path()
    explicit = bool(os.environ.get("TUNEOPS_TERMINATION_LOG"))
    if not explicit and not path.exists():
        log.debug("no termination log at %s", path)
        return
    try:
        path.write_text(result.dumps())
    except OSError as exc:
        if explicit:
            raise
        log.debug("termination log %s not writable (%s)", path, exc)
