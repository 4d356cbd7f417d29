"""FineTunedModel: inspect the adapter, refuse incompatible combinations, merge when asked, record the artifact."""

from __future__ import annotations

from typing import Any

from tuneops.api import FINETUNEDMODEL
from tuneops.api.common import Artifact
from tuneops.api.conditions import INSPECTED, MERGED, READY, Reason
from tuneops.api.finetunedmodel import AdapterFacts, FineTunedModelSpec, FineTunedModelStatus
from tuneops.reconcile.base import Context, Outcome, StatusBuilder, run_step
from tuneops.reconcile.common import artifact_from_result, owner_of
from tuneops.reconcile.jobs import JobOutcome
from tuneops.render import finetunedmodel as render

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


def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
    sb = StatusBuilder(ctx, obj, FINETUNEDMODEL)
    spec = sb.spec()
    if spec is None:
        return sb.finish()
    assert isinstance(spec, FineTunedModelSpec)
    status = sb.status
    assert isinstance(status, FineTunedModelStatus)
    owner = owner_of(obj)

    # Step 1: inspect the adapter (facts, digest, compatibility with the base).
    inspect_job = render.render_inspect_job(spec, owner, ctx.config)
    inspected = run_step(ctx, sb, render.INSPECT, inspect_job)
    if inspected.result:
        facts = adapter_facts(inspected.result)
        if facts is not None:
            status.adapter = facts
        digest = (inspected.result.get("adapter") or {}).get("digest") or (
            inspected.result.get("artifact") or {}
        ).get("digest")
        status.adapter_digest = str(digest) if digest else None
        published = artifact_from_result(inspected.result)
        if not spec.merge.enabled and published is not None:
            status.artifact = published.model_copy(update={"format": "peft"})
        problems = [str(p) for p in inspected.result.get("problems") or []]
        if problems:
            incompatible = JobOutcome("Failed", Reason.INCOMPATIBLE_ADAPTER, "; ".join(problems))
            sb.record_step(render.INSPECT, inspect_job["metadata"]["name"], incompatible)
    step = sb.step(render.INSPECT)
    if step is not None and step.state == "Failed":
        reason = step.reason or Reason.JOB_FAILED
        sb.condition(INSPECTED, False, reason, step.message or "")
        sb.condition(READY, False, reason, f"inspecting the adapter failed: {step.message or reason}")
        return sb.finish()
    if inspected.state != "Succeeded":
        sb.condition(INSPECTED, None, inspected.reason, "inspecting the adapter")
        sb.condition(
            READY,
            False,
            inspected.reason,
            f"inspect Job {inspect_job['metadata']['name']}: {inspected.state}",
        )
        return sb.finish(requeue=True)
    sb.condition(INSPECTED, True, Reason.SUCCEEDED, _describe(status.adapter))

    if not spec.merge.enabled:
        sb.drop_step(render.MERGE)
        sb.condition(
            MERGED, False, Reason.MERGE_DISABLED, "merge.enabled is false; serve the adapter on the base"
        )
        # The inspect step published the adapter at a content-addressed path (see render_inspect_job).
        published = (
            status.artifact if status.artifact is not None and status.artifact.format == "peft" else None
        )
        status.artifact = published or Artifact(
            uri=spec.adapter.uri, digest=status.adapter_digest, format="peft"
        )
        sb.condition(READY, True, Reason.SUCCEEDED, "adapter inspected; ready to be served on its base model")
        return sb.finish()

    # Step 2: merge. A new adapter digest gives a new Job name, so new weights under the same URI re-merge.
    merge_job = render.render_merge_job(spec, owner, ctx.config, adapter_digest=status.adapter_digest)
    merged = run_step(ctx, sb, render.MERGE, merge_job)
    if merged.result:
        artifact = artifact_from_result(merged.result)
        if artifact is not None:
            status.artifact = artifact
    if merged.state == "Failed":
        # The previous artifact (if any) stays in status: it is still intact where it was written.
        sb.condition(MERGED, False, merged.reason, merged.message)
        sb.condition(READY, False, merged.reason, f"merge failed: {merged.message}")
        return sb.finish()
    if merged.state != "Succeeded":
        sb.condition(MERGED, None, merged.reason, "merging")
        sb.condition(
            READY, False, merged.reason, f"merge Job {merge_job['metadata']['name']}: {merged.state}"
        )
        return sb.finish(requeue=True)
    sb.condition(
        MERGED, True, Reason.SUCCEEDED, f"merged into {status.artifact.uri if status.artifact else '?'}"
    )
    sb.condition(READY, True, Reason.SUCCEEDED, "merged model is ready")
    return sb.finish()


def _describe(facts: AdapterFacts | None) -> str:
    if facts is None:
        return "adapter inspected"
    return (
        f"{facts.type or 'LORA'} rank {facts.rank} alpha {facts.alpha:g} on {', '.join(facts.target_modules or [])}"
        if facts.rank is not None and facts.alpha is not None
        else "adapter inspected"
    )
