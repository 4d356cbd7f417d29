"""QuantizationJob: wait for the source, quantize, then hold the result to the quality gate."""

from __future__ import annotations

from typing import Any

from tuneops.api import QUANTIZATIONJOB
from tuneops.api.conditions import QUALITY_GATE_PASSED, QUANTIZED, READY, Reason
from tuneops.api.finetunedmodel import FineTunedModelStatus
from tuneops.api.quantizationjob import QualityStatus, QuantizationJobSpec, QuantizationJobStatus
from tuneops.reconcile.base import (
    Context,
    Invalid,
    Outcome,
    StatusBuilder,
    Waiting,
    parse_status,
    run_step,
)
from tuneops.reconcile.common import artifact_from_result, owner_of, resolve_ref
from tuneops.reconcile.jobs import JobOutcome
from tuneops.render import quantizationjob as render
from tuneops.render.common import ResolvedModel, model_format


def resolve_source(ctx: Context, obj: dict[str, Any], spec: QuantizationJobSpec) -> ResolvedModel:
    if spec.source.uri is not None:
        return ResolvedModel(uri=spec.source.uri, token_secret=spec.source.token_secret_ref)
    assert spec.source.fine_tuned_model_ref is not None
    from tuneops.api import FINETUNEDMODEL

    target = resolve_ref(
        ctx, obj, spec.source.fine_tuned_model_ref, "FineTunedModel", "spec.source.fineTunedModelRef"
    )
    status = parse_status(FINETUNEDMODEL, target.get("status"))
    assert isinstance(status, FineTunedModelStatus)
    if status.artifact is None or status.artifact.format == "peft":
        raise Invalid(
            f"FineTunedModel {target['metadata']['name']} has merge.enabled false; quantization needs a merged "
            "model: enable the merge or point source.uri at a full model"
        )
    return ResolvedModel(
        uri=status.artifact.uri,
        digest=status.artifact.digest,
        format=model_format(status.artifact.format),
        base_model_name=status.adapter.base_model_name if status.adapter else None,
        size_bytes=status.artifact.size_bytes,
    )


def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
    sb = StatusBuilder(ctx, obj, QUANTIZATIONJOB)
    spec = sb.spec()
    if spec is None:
        return sb.finish()
    assert isinstance(spec, QuantizationJobSpec)
    status = sb.status
    assert isinstance(status, QuantizationJobStatus)
    owner = owner_of(obj)

    try:
        source = resolve_source(ctx, obj, spec)
    except Waiting as w:
        sb.condition(READY, False, Reason.WAITING_FOR_SOURCE, w.message)
        return sb.finish(requeue=True)
    except Invalid as err:
        sb.condition(READY, False, err.reason, err.message)
        return sb.finish()
    problems = render.check_quantizationjob(spec, source)
    if problems:
        sb.condition(READY, False, problems[0].reason, "; ".join(str(p) for p in problems))
        return sb.finish()
    status.source_digest = source.digest

    quantize_job = render.render_quantize_job(spec, owner, ctx.config, source=source)
    quantized = run_step(ctx, sb, render.QUANTIZE, quantize_job)
    if quantized.result:
        artifact = artifact_from_result(quantized.result)
        if artifact is not None:
            status.artifact = artifact
            status.quality = None  # a new artifact has not been measured yet
    if quantized.state == "Failed":
        sb.condition(QUANTIZED, False, quantized.reason, quantized.message)
        sb.condition(READY, False, quantized.reason, f"quantization failed: {quantized.message}")
        return sb.finish()
    if quantized.state != "Succeeded" or status.artifact is None:
        sb.condition(QUANTIZED, None, quantized.reason or Reason.JOB_PENDING, "quantizing")
        sb.condition(READY, False, quantized.reason or Reason.JOB_PENDING,
                     f"quantize Job {quantize_job['metadata']['name']}: {quantized.state}")  # fmt: skip
        return sb.finish(requeue=True)
    sb.condition(QUANTIZED, True, Reason.SUCCEEDED, f"{spec.method} artifact at {status.artifact.uri}")

    gate = spec.quality_gate
    if gate is None:
        sb.drop_step(render.EVALUATE)
        sb.condition(QUALITY_GATE_PASSED, None, Reason.QUALITY_GATE_SKIPPED, "no qualityGate set")
        sb.condition(READY, True, Reason.SUCCEEDED, "quantized model is ready")
        return sb.finish()

    quantized_model = ResolvedModel(
        uri=status.artifact.uri,
        digest=status.artifact.digest,
        format=model_format(status.artifact.format),
        files=tuple(status.artifact.files or ()),
    )
    evaluate_job = render.render_evaluate_job(
        spec, owner, ctx.config, source=source, artifact=quantized_model
    )
    evaluated = run_step(ctx, sb, render.EVALUATE, evaluate_job)
    metrics = evaluated.result.get("metrics") if evaluated.result else None
    if isinstance(metrics, dict):
        status.quality = QualityStatus(
            perplexity=_num(metrics.get("perplexity")),
            reference_perplexity=_num(metrics.get("referencePerplexity")),
            increase_pct=_num(metrics.get("increasePct")),
            max_increase_pct=gate.max_perplexity_increase_pct,
            passed=bool(evaluated.result.get("passed")),
        )
        if status.quality.passed is False:
            gate_failed = JobOutcome("Failed", Reason.QUALITY_GATE_FAILED, _gate_message(status.quality))
            sb.record_step(render.EVALUATE, evaluate_job["metadata"]["name"], gate_failed)
    step = sb.step(render.EVALUATE)
    if step is not None and step.state == "Failed":
        reason = step.reason or Reason.JOB_FAILED
        if status.quality is not None and status.quality.passed is False:
            reason = Reason.QUALITY_GATE_FAILED
        message = (
            _gate_message(status.quality) if reason == Reason.QUALITY_GATE_FAILED else step.message or ""
        )
        sb.condition(QUALITY_GATE_PASSED, False, reason, message)
        sb.condition(READY, False, reason, message)
        return sb.finish()
    if evaluated.state != "Succeeded":
        sb.condition(QUALITY_GATE_PASSED, None, evaluated.reason or Reason.JOB_PENDING, "evaluating")
        sb.condition(READY, False, evaluated.reason or Reason.JOB_PENDING,
                     f"evaluate Job {evaluate_job['metadata']['name']}: {evaluated.state}")  # fmt: skip
        return sb.finish(requeue=True)
    sb.condition(QUALITY_GATE_PASSED, True, Reason.SUCCEEDED, _gate_message(status.quality))
    sb.condition(READY, True, Reason.SUCCEEDED, "quantized model passed the quality gate")
    return sb.finish()


def _num(value: Any) -> float | None:
    return round(float(value), 4) if isinstance(value, int | float) else None


def _gate_message(q: QualityStatus | None) -> str:
    if q is None or q.perplexity is None or q.reference_perplexity is None:
        return "quality gate measured"
    verdict = "within" if q.passed else "above"
    return (
        f"perplexity {q.perplexity:.3f} vs {q.reference_perplexity:.3f} for the source "
        f"(+{q.increase_pct or 0:.2f}%), {verdict} the limit of {q.max_increase_pct or 0:g}%"
    )
