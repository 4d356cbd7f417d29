"""Pure renderers: a typed resource, its resolved inputs and the operator config in, complete manifests out."""

from tuneops.render.finetunedmodel import render_finetunedmodel, render_inspect_job, render_merge_job
from tuneops.render.quantizationjob import (
    render_evaluate_job,
    render_quantizationjob,
    render_quantize_job,
)
from tuneops.render.serving import render_inferenceservice
from tuneops.render.serving.args import llamacpp_args, vllm_args
from tuneops.render.serving.types import Note, ServingRender
from tuneops.render.types import (
    Manifest,
    Owner,
    Problem,
    RenderError,
    ResolvedAdapter,
    ResolvedModel,
    model_format,
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
