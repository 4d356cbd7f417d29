"""QuantizationJob: wait for the source, quantize, then hold the result to the quality gate."""

from __future__ import annotations

from typing import Any

from tuneops.api import FINETUNEDMODEL, QUANTIZATIONJOB
from tuneops.api.conditions import QUALITY_GATE_PASSED, QUANTIZED, Reason
from tuneops.api.quantizationjob import (
    QualityGateSpec,
    QualityStatus,
    QuantizationJobSpec,
    QuantizationJobStatus,
)
from tuneops.reconcile.base import (
    Context,
    Invalid,
    Outcome,
    StatusBuilder,
    Step,
    Waiting,
    blocked,
    reconciler,
    run_step,
)
from tuneops.reconcile.common import artifact_from_result, resolve_ref
from tuneops.reconcile.jobs import JobOutcome
from tuneops.render import quantizationjob as render
from tuneops.render.types import ResolvedModel, model_format
from tuneops.validation.quantization import AdapterOnly, check_quantization_source

Builder = StatusBuilder[QuantizationJobSpec, QuantizationJobStatus]

QUANTIZE = Step(render.QUANTIZE, QUANTIZED, "quantizing", "quantization failed")
EVALUATE = Step(render.EVALUATE, QUALITY_GATE_PASSED, "evaluating", "quality gate failed")


def resolve_source(ctx: Context, obj: dict[str, Any], spec: QuantizationJobSpec) -> ResolvedModel:
    """The model to quantize; Waiting while a referenced FineTunedModel is not Ready, Invalid when the
    combination cannot work."""
    source = _source(ctx, obj, spec)
    problems = check_quantization_source(spec, source)
    if problems:
        raise Invalid("; ".join(str(p) for p in problems), problems[0].reason)
    assert isinstance(source, ResolvedModel)  # an adapter alone is always refused
    return source


def _source(ctx: Context, obj: dict[str, Any], spec: QuantizationJobSpec) -> ResolvedModel | AdapterOnly:
    if spec.source.uri is not None:
        return ResolvedModel(uri=spec.source.uri, token_secret=spec.source.token_secret_ref)
    assert spec.source.fine_tuned_model_ref is not None  # the model validates exactly one
    target = resolve_ref(
        ctx, obj, spec.source.fine_tuned_model_ref, "FineTunedModel", "spec.source.fineTunedModelRef"
    )
    status = FINETUNEDMODEL.parse_status(target.get("status"))
    if status.artifact is None or status.artifact.format == "peft":
        return AdapterOnly(target["metadata"]["name"])
    return ResolvedModel(
        uri=status.artifact.uri,
        digest=status.artifact.digest,
        format=model_format(status.artifact.format),
        base_model_name=status.adapter.base_model_name if status.adapter else None,
        size_bytes=status.artifact.size_bytes,
    )


@reconciler(QUANTIZATIONJOB)
def reconcile(sb: Builder, spec: QuantizationJobSpec) -> Outcome:
    status = sb.status
    try:
        source = resolve_source(sb.ctx, sb.obj, spec)
    except (Waiting, Invalid) as err:
        return sb.conclude(blocked(err))
    status.source_digest = source.digest

    quantize_job = render.render_quantize_job(spec, sb.owner, sb.ctx.config, source=source)
    quantized = _quantized(sb, run_step(sb, QUANTIZE, quantize_job))
    where = status.artifact.uri if status.artifact else "?"
    if stop := sb.gate(QUANTIZE, quantize_job, quantized, f"{spec.method} artifact at {where}"):
        return stop

    gate = spec.quality_gate
    if gate is None:
        sb.drop_step(EVALUATE.name)
        sb.condition(QUALITY_GATE_PASSED, None, Reason.QUALITY_GATE_SKIPPED, "no qualityGate set")
        return sb.ready("quantized model is ready")
    assert status.artifact is not None  # the quantize step only succeeds with an artifact (see _quantized)
    quantized_model = ResolvedModel(
        uri=status.artifact.uri,
        digest=status.artifact.digest,
        format=model_format(status.artifact.format),
        files=tuple(status.artifact.files or ()),
    )
    evaluate_job = render.render_evaluate_job(
        spec, sb.owner, sb.ctx.config, source=source, artifact=quantized_model
    )
    evaluated = _evaluated(sb, gate, evaluate_job, run_step(sb, EVALUATE, evaluate_job))
    if stop := sb.gate(EVALUATE, evaluate_job, evaluated, _gate_message(status.quality)):
        return stop
    return sb.ready("quantized model passed the quality gate")


def _quantized(sb: Builder, outcome: JobOutcome) -> JobOutcome:
    """Record a new artifact (not measured yet); a Job that succeeded without one is not done."""
    artifact = artifact_from_result(outcome.result)
    if artifact is not None:
        sb.status.artifact = artifact
        sb.status.quality = None
    if outcome.state == "Succeeded" and sb.status.artifact is None:
        return JobOutcome("Pending", Reason.JOB_PENDING)
    return outcome


def _evaluated(sb: Builder, gate: QualityGateSpec, job: dict[str, Any], outcome: JobOutcome) -> JobOutcome:
    """Record the measured quality; a result above the limit fails the step."""
    metrics = outcome.result.get("metrics")
    if not isinstance(metrics, dict):
        return outcome
    quality = QualityStatus(
        perplexity=_num(metrics.get("perplexity")),
        reference_perplexity=_num(metrics.get("referencePerplexity")),
        increase_pct=_num(metrics.get("increasePct")),
        max_increase_pct=gate.max_perplexity_increase_pct,
        passed=bool(outcome.result.get("passed")),
    )
    sb.status.quality = quality
    if quality.passed:
        return outcome
    failed = JobOutcome("Failed", Reason.QUALITY_GATE_FAILED, _gate_message(quality))
    return sb.record_step(EVALUATE.name, job["metadata"]["name"], failed)


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
