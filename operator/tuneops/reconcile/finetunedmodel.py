"""FineTunedModel: inspect the adapter, refuse incompatible combinations, merge when asked, record the artifact."""

from __future__ import annotations

from typing import Any

from tuneops import labels, metrics
from tuneops.api import FINETUNEDMODEL, INFERENCESERVICE, SpecError
from tuneops.api.common import Artifact
from tuneops.api.conditions import BENCHMARKED, INSPECTED, MERGED, READY, Reason
from tuneops.api.finetunedmodel import AdapterFacts, BenchmarkStatus, FineTunedModelSpec, FineTunedModelStatus
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.kube import client as k
from tuneops.reconcile.base import (
    Invalid,
    Outcome,
    StatusBuilder,
    Step,
    Waiting,
    blocked,
    reconciler,
    retry_hint,
    run_step,
)
from tuneops.reconcile.common import artifact_from_result
from tuneops.reconcile.jobs import JobOutcome
from tuneops.render import finetunedmodel as render
from tuneops.validation.references import check_reference, references

Builder = StatusBuilder[FineTunedModelSpec, FineTunedModelStatus]

INSPECT = Step(render.INSPECT, INSPECTED, "inspecting the adapter", "inspecting the adapter failed")
MERGE = Step(render.MERGE, MERGED, "merging", "merge failed")
BENCHMARK = Step(render.BENCHMARK, BENCHMARKED, "benchmarking", "benchmark failed")

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
    if refused := _refused_reference(sb, spec):
        return sb.conclude(blocked(Invalid(refused)))
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
    if spec.benchmark is None or not spec.benchmark.enabled:
        _no_benchmark(sb)
        return sb.ready("merged model is ready")
    return _benchmark(sb, spec)


def _benchmark(sb: Builder, spec: FineTunedModelSpec) -> Outcome:
    """Measure the merged model against the LoRA path (spec.benchmark). The merged model is Ready meanwhile and
    whatever the figures say; only a failed serving-level check (the two answer differently: a broken merge)
    takes Ready away."""
    status = sb.status
    assert status.artifact is not None  # the merge step succeeded
    try:
        service = _service_of(sb, spec)
    except Invalid as err:
        return sb.conclude(blocked(err))
    except Waiting as err:
        sb.condition(BENCHMARKED, None, err.reason, err.message)
        return sb.ready("merged model is ready (its benchmark waits: see the Benchmarked condition)")
    facts = status.adapter
    job = render.render_benchmark_job(spec, sb.owner, sb.ctx.config, merged_uri=status.artifact.uri,
                                      merged_digest=status.artifact.digest,
                                      max_lora_rank=(facts.max_rank or facts.rank) if facts else None,
                                      service=service, adapter_digest=status.adapter_digest)  # fmt: skip
    outcome = run_step(sb, BENCHMARK, job)
    name = job["metadata"]["name"]  # a retry renames it
    measured = benchmark_status(name, outcome.result.get("benchmark"))
    if measured is not None:
        status.benchmark = measured
        if outcome.result.get("passed") is False:
            failed = JobOutcome("Failed", Reason.QUALITY_CHECK_FAILED, measured.reason or "the two differ")
            outcome = sb.record_step(BENCHMARK.name, name, failed)
    if outcome.state == "Succeeded" and (status.benchmark is None or status.benchmark.job != name):
        # A Job that ends well without figures (a worker of another version, a lost termination message) has
        # measured nothing: say so rather than report a recommendation of an earlier Job, or none.
        lost = JobOutcome(
            "Failed", Reason.JOB_FAILED, "the benchmark Job ended without figures in its result"
        )
        outcome = sb.record_step(BENCHMARK.name, name, lost)
    publish_benchmark(sb.owner.namespace, sb.owner.name, status.benchmark)
    if outcome.state == "Succeeded":
        assert status.benchmark is not None
        sb.condition(BENCHMARKED, True, Reason.SUCCEEDED, status.benchmark.reason or "measured")
        return sb.ready("merged model is ready")
    if outcome.state == "Failed":
        reason = outcome.reason or Reason.JOB_FAILED
        detail = f"{outcome.message or reason}; {retry_hint(reason, name)}"
        sb.condition(BENCHMARKED, False, reason, detail)
        if reason == Reason.QUALITY_CHECK_FAILED:
            sb.condition(READY, False, reason, f"{BENCHMARK.failed}: {detail}")
            return sb.finish()
        return sb.ready("merged model is ready (its benchmark failed: see the Benchmarked condition)")
    sb.condition(BENCHMARKED, None, outcome.reason or Reason.JOB_PENDING,
                 f"{BENCHMARK.name} Job {name}: {outcome.message or BENCHMARK.doing}")  # fmt: skip
    sb.condition(READY, True, Reason.SUCCEEDED, "merged model is ready (benchmark running)")
    return sb.finish(requeue=True)


def _refused_reference(sb: Builder, spec: FineTunedModelSpec) -> str | None:
    """Why the spec's one reference (benchmark.serviceRef) cannot be followed, if it cannot: another namespace
    while the operator follows none."""
    for ref in references(spec):
        refused = check_reference(ref, kind=FINETUNEDMODEL.kind, namespace=sb.owner.namespace,
                                  name=sb.owner.name, config=sb.ctx.config)  # fmt: skip
        if refused is not None:
            return str(refused)
    return None


def _service_of(sb: Builder, spec: FineTunedModelSpec) -> InferenceServiceSpec | None:
    """The spec of benchmark.serviceRef, whose hardware the benchmark runs on (None without one). Only its spec
    is read: it need not be Ready (it may wait for this very model)."""
    assert spec.benchmark is not None
    ref = spec.benchmark.service_ref
    if ref is None:
        return None
    field = "spec.benchmark.serviceRef"
    target_ns = (
        ref.namespace or sb.owner.namespace
    )  # a reference the operator may follow (_refused_reference)
    target = sb.ctx.kube.get(k.INFERENCESERVICE, target_ns, ref.name)
    if target is None:
        raise Waiting(f"InferenceService {target_ns}/{ref.name} ({field}) does not exist yet")
    try:
        return INFERENCESERVICE.parse_spec(target)
    except SpecError as err:
        raise Waiting(
            f"InferenceService {target_ns}/{ref.name} ({field}) has an invalid spec: {err}"
        ) from err


def _no_benchmark(sb: Builder) -> None:
    """No benchmark asked for (any more): forget its step, figures and condition."""
    sb.drop_step(BENCHMARK.name)
    sb.status.benchmark = None
    if sb.status.conditions:
        sb.status.conditions = [c for c in sb.status.conditions if c.type != BENCHMARKED]
    publish_benchmark(sb.owner.namespace, sb.owner.name, None)


def benchmark_status(job: str, raw: Any) -> BenchmarkStatus | None:
    """The benchmark worker's result (untrusted shape: anything else is ignored) as status."""
    if not isinstance(raw, dict):
        return None
    try:
        listed = raw.get("figures")
        figures: list[Any] = listed if isinstance(listed, list) else []
        return BenchmarkStatus.model_validate(
            {
                "job": job,
                "recommendation": raw.get("recommendation"),
                "reason": str(raw.get("reason") or "")[:1000] or None,
                "loraThroughputRatio": raw.get("loraThroughputRatio"),
                "qualityGap": raw.get("qualityGap"),
                "accelerator": raw.get("accelerator"),
                "figures": figures[:32],
            }
        )
    except ValueError:
        return None


def publish_benchmark(namespace: str, name: str, bench: BenchmarkStatus | None) -> None:
    """tuneops_benchmark_* gauges of one FineTunedModel, from its status (None removes its series)."""
    if bench is None:
        metrics.forget_benchmark(namespace, name)
        return
    rows = [(f.variant, f.concurrency, f.output_tokens_per_s, f.ttft_p50_ms / 1000, f.itl_p50_ms / 1000,
             f.accelerator_s_per_thousand_tokens) for f in bench.figures or []]  # fmt: skip
    metrics.set_benchmark(namespace, name, rows, bench.lora_throughput_ratio)


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
