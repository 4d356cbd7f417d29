"""Manifests of an InferenceService: vLLM (Deployment or LeaderWorkerSet) or llama.cpp, Service, PDB.

This package's surface is what the reconciler uses: render, and the few facts it shares with the
adapter reconciler (the port, the adapters' paths, the effective LoRA settings).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.serving.args import adapter_path
from tuneops.render.serving.autoscaling import render_autoscaler
from tuneops.render.serving.llamacpp import render_llamacpp
from tuneops.render.serving.routing import render_routing
from tuneops.render.serving.types import PORT, ServingRender, effective_lora
from tuneops.render.serving.vllm import render_vllm
from tuneops.render.types import Owner, ResolvedAdapter, ResolvedModel

__all__ = ["PORT", "adapter_path", "effective_lora", "render_inferenceservice"]


def render_inferenceservice(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    model: ResolvedModel,
    adapters: Sequence[ResolvedAdapter] = (),
    adapter_sources: Sequence[str] = (),
) -> ServingRender:
    """All manifests of the service. Run `check_inferenceservice` first: rendering assumes a servable spec
    and raises RenderError only for what it cannot express at all (e.g. no GGUF file to point at).

    `adapter_sources` are URIs adapters may be loaded from later (adapters still waiting for their
    FineTunedModel, and where those publish): their PVC claims are mounted from the start."""
    if spec.runtime == "llamacpp":
        rendered = render_llamacpp(spec, owner, config, model)
    else:
        rendered = render_vllm(spec, owner, config, model, adapters, adapter_sources)
    extra = [
        *render_autoscaler(spec, owner, config, model.base_name),
        *render_routing(spec, owner, config, rendered.selector),
    ]
    return replace(rendered, manifests=(*rendered.manifests, *extra)) if extra else rendered
