"""FineTunedModel: inspect the adapter, refuse incompatible combinations, merge when asked, record the artifact."""

from __future__ import annotations

from typing import Any

from tuneops import labels
from tuneops.api import FINETUNEDMODEL
from tuneops.api.common import Artifact
from tuneops.api.conditions import INSPECTED, MERGED, Reason
from tuneops.api.finetunedmodel import AdapterFacts, FineTunedModelSpec, FineTunedModelStatus
from tuneops.reconcile.base import Outcome, StatusBuilder, Step, reconciler, run_step
from tuneops.reconcile.common import artifact_from_result
from tuneops.reconcile.jobs import JobOutcome
from tuneops.render import finetunedmodel as render

Builder = StatusBuilder[FineTunedModelSpec, FineTunedModelStatus]

INSPECT = Step(render.INSPECT, INSPECTED, "inspecting the adapter", "inspecting the adapter failed")
MERGE = Step(render.MERGE, MERGED, "merging", "merge failed")

_FACT_KEYS = {
    "type": "type",
    "rank": "rank",
    "alpha": "alpha",
    "rsLora": "rs_lora",
    "useDora": "use_dora",
    "targetModules": "target_modules",
    "modulesToSave": "modules_to_save",
    "baseModelName": "base_model_name",
    "maxRank": "max_rank",
}


def adapter_facts(result: dict[str, Any]) -> AdapterFacts | None:
    raw = result.get("adapter")
    if not isinstance(raw, dict):
        return None
    data = {py: raw[wire] for wire, py in _FACT_KEYS.items() if raw.get(wire) is not None}
    if "max_rank" not in data and "rank" in data:
        data["max_rank"] = data["rank"]
    for key in ("target_modules", "modules_to_save"):
        if key in data:
            data[key] = [str(x)[:63] for x in data[key]][:64]
    return AdapterFacts.model_validate(data)


@reconciler(FINETUNEDMODEL)
def reconcile(sb: Builder, spec: FineTunedModelSpec) -> Outcome:
    status = sb.status
    _stop_stale_merge(sb, spec)
    refresh = (sb.obj["metadata"].get("annotations") or {}).get(labels.REFRESH)
    inspect_job = render.render_inspect_job(spec, sb.owner, sb.ctx.config, refresh=refresh)
    inspected = _inspected(sb, spec, inspect_job, run_step(sb, INSPECT, inspect_job))
    if stop := sb.gate(INSPECT, inspect_job, inspected, _describe(status.adapter)):
        return stop
    if not spec.merge.enabled:
        return _unmerged(sb, spec)

    # A new adapter digest gives a new Job name: new weights under the same URI, once read by an inspect Job
    # (a spec change, or a new tuneops.io/refresh annotation), re-merge; the same digest re-uses the merge.
    merge_job = render.render_merge_job(spec, sb.owner, sb.ctx.config, adapter_digest=status.adapter_digest)
    merged = run_step(sb, MERGE, merge_job)
    # A failed merge leaves the previous artifact (if any) in status: it is still intact where it was written.
    status.artifact = artifact_from_result(merged.result) or status.artifact
    where = status.artifact.uri if status.artifact else "?"
    if stop := sb.gate(MERGE, merge_job, merged, f"merged into {where}"):
        return stop
    return sb.ready("merged model is ready")


def _stop_stale_merge(sb: Builder, spec: FineTunedModelSpec) -> None:
    """A merge still running for a spec that changed since (merge disabled, or other inputs) stops now, not
    once the inspect step has re-run: it would write the output meanwhile."""
    running = sb.step(MERGE.name)
    if running is None or running.state in ("Succeeded", "Failed"):
        return
    if spec.merge.enabled:
        digest = sb.status.adapter_digest
        current = render.render_merge_job(spec, sb.owner, sb.ctx.config, adapter_digest=digest)
        if current["metadata"]["name"] == running.job:
            return
    sb.drop_step(MERGE.name)


def _inspected(sb: Builder, spec: FineTunedModelSpec, job: dict[str, Any], outcome: JobOutcome) -> JobOutcome:
    """Copy the inspect worker's findings into status; problems it found refuse the adapter."""
    result, status = outcome.result, sb.status
    if not result:
        return outcome
    facts = adapter_facts(result)
    if facts is not None:
        status.adapter = facts
    digest = (result.get("adapter") or {}).get("digest") or (result.get("artifact") or {}).get("digest")
    status.adapter_digest = str(digest) if digest else None
    published = artifact_from_result(result)
    if not spec.merge.enabled and published is not None:
        status.artifact = published.model_copy(update={"format": "peft"})
    problems = [str(p) for p in result.get("problems") or []]
    if not problems:
        return outcome
    refused = JobOutcome("Failed", Reason.INCOMPATIBLE_ADAPTER, "; ".join(problems))
    return sb.record_step(INSPECT.name, job["metadata"]["name"], refused)


def _unmerged(sb: Builder, spec: FineTunedModelSpec) -> Outcome:
    """merge.enabled false: the adapter itself is the artifact, served on its base model."""
    status = sb.status
    sb.drop_step(MERGE.name)
    sb.condition(
        MERGED, False, Reason.MERGE_DISABLED, "merge.enabled is false; serve the adapter on the base"
    )
    # The inspect step published the adapter at a content-addressed path (see render_inspect_job).
    published = status.artifact if status.artifact is not None and status.artifact.format == "peft" else None
    status.artifact = published or Artifact(uri=spec.adapter.uri, digest=status.adapter_digest, format="peft")
    return sb.ready("adapter inspected; ready to be served on its base model")


def _describe(facts: AdapterFacts | None) -> str:
    if facts is None or facts.rank is None or facts.alpha is None:
        return "adapter inspected"
    return f"{facts.type or 'LORA'} rank {facts.rank} alpha {facts.alpha:g} on {', '.join(facts.target_modules or [])}"
