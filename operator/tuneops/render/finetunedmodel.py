"""Manifests of a FineTunedModel: the inspect Job (adapter facts and digest) and the merge Job."""

from __future__ import annotations

from tuneops.api.common import SecretKeyRef
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.config import OperatorConfig
from tuneops.render.common import (
    Manifest,
    Owner,
    RenderError,
    WorkerStep,
    default_output_uri,
    render_job,
    with_revision,
    worker_cmd,
)

INSPECT = "inspect"
MERGE = "merge"


def base_uri(spec: FineTunedModelSpec) -> str:
    """The base model URI with spec.baseModel.revision pinned into it (hf:// only)."""
    return with_revision(spec.base_model.uri, spec.base_model.revision)


def merge_output_uri(spec: FineTunedModelSpec, owner: Owner, config: OperatorConfig) -> str:
    return spec.output.uri if spec.output else default_output_uri(config, owner)


def _secret(spec: FineTunedModelSpec) -> SecretKeyRef | None:
    # One token per Pod: the base model's when set (usually the gated one), else the adapter's.
    return spec.base_model.token_secret_ref or spec.adapter.token_secret_ref


def render_inspect_job(
    spec: FineTunedModelSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    base_digest: str | None = None,
    adapter_digest: str | None = None,
) -> Manifest:
    """The Job that reads adapter_config.json, digests the adapter and, when merging, checks it fits the base."""
    base = base_uri(spec)
    args = ["--adapter", spec.adapter.uri, "--base", base]
    publish = None
    if spec.merge.enabled:
        args.append("--merge")
    else:
        # Served as an adapter: publish a copy at a content-addressed path, so new weights always arrive
        # under a new path (vLLM keys its prefix cache by adapter name and path).
        publish = merge_output_uri(spec, owner, config)
        args += ["--publish", publish]
    step = WorkerStep(
        step=INSPECT,
        image=spec.job.image or config.images.worker,
        args=worker_cmd(INSPECT, *args),
        inputs=(base, spec.adapter.uri),
        output=publish,
        digests={base: base_digest, spec.adapter.uri: adapter_digest},
        secret=_secret(spec),
    )
    return render_job(owner, config, spec.job, step)


def render_merge_job(
    spec: FineTunedModelSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    base_digest: str | None = None,
    adapter_digest: str | None = None,
) -> Manifest:
    """The Job that merges the adapter into the base and writes the merged model to the output URI.

    Pass the adapter digest from the inspect step: a new adapter under the same URI then gets a new Job.
    """
    if not spec.merge.enabled:
        raise RenderError("spec.merge.enabled is false: there is no merge Job")
    base = base_uri(spec)
    output = merge_output_uri(spec, owner, config)
    args = [
        "--base", base,
        "--adapter", spec.adapter.uri,
        "--output", output,
        "--dtype", spec.merge.dtype,
        "--method", spec.merge.method,
    ]  # fmt: skip
    step = WorkerStep(
        step=MERGE,
        image=spec.job.image or config.images.worker,
        args=worker_cmd(MERGE, *args),
        inputs=(base, spec.adapter.uri),
        output=output,
        digests={base: base_digest, spec.adapter.uri: adapter_digest},
        secret=_secret(spec),
        gpus=1 if spec.merge.device == "gpu" else 0,
    )
    return render_job(owner, config, spec.job, step)


def render_finetunedmodel(
    spec: FineTunedModelSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    base_digest: str | None = None,
    adapter_digest: str | None = None,
) -> list[Manifest]:
    """Every Job the operator may create for this resource, in run order (for `tuneops render`)."""
    out = [render_inspect_job(spec, owner, config, base_digest=base_digest, adapter_digest=adapter_digest)]
    if spec.merge.enabled:
        out.append(
            render_merge_job(spec, owner, config, base_digest=base_digest, adapter_digest=adapter_digest)
        )
    return out
