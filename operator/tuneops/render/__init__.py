"""Pure renderers: a typed resource, its resolved inputs and the operator config in, complete manifests out."""

from tuneops.render.common import (
    Manifest,
    Owner,
    Problem,
    RenderError,
    ResolvedAdapter,
    ResolvedModel,
    model_format,
)
from tuneops.render.finetunedmodel import render_finetunedmodel, render_inspect_job, render_merge_job
from tuneops.render.inferenceservice import (
    Note,
    ServingRender,
    check_inferenceservice,
    llamacpp_args,
    render_inferenceservice,
    vllm_args,
)
from tuneops.render.quantizationjob import (
    check_quantizationjob,
    render_evaluate_job,
    render_quantizationjob,
    render_quantize_job,
)

__all__ = [
    "Manifest",
    "Note",
    "Owner",
    "Problem",
    "RenderError",
    "ResolvedAdapter",
    "ResolvedModel",
    "ServingRender",
    "check_inferenceservice",
    "check_quantizationjob",
    "llamacpp_args",
    "model_format",
    "render_evaluate_job",
    "render_finetunedmodel",
    "render_inferenceservice",
    "render_inspect_job",
    "render_merge_job",
    "render_quantizationjob",
    "render_quantize_job",
    "vllm_args",
]
