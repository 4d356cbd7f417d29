"""Manifests of a FineTunedModel: the inspect Job (adapter facts and digest) and the merge Job."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict, Unpack

from tuneops.api.common import JobTemplate, ResourceRequirements
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.render.artifacts import default_output_uri
from tuneops.render.env import Source
from tuneops.render.jobs import SCRATCH_DIR, WorkerStep, job_gpus, render_job, worker_cmd
from tuneops.render.pod import GPU_RESOURCE, with_gpu_product
from tuneops.render.serving.args import cpu_kv_cache_bytes
from tuneops.render.serving.pod import fetch_container
from tuneops.render.types import Manifest, Owner, RenderError
from tuneops.storage.uri import parse_uri, with_revision

INSPECT = "inspect"
MERGE = "merge"
BENCHMARK = "benchmark"


class InputDigests(TypedDict, total=False):
    """Digests of the inputs when known: a new digest under the same URI gives a new Job."""

    base_digest: str | None
    adapter_digest: str | None


def base_uri(spec: FineTunedModelSpec) -> str:
    """The base model URI with spec.baseModel.revision pinned into it (hf:// only)."""
    return with_revision(spec.base_model.uri, spec.base_model.revision)


def merge_output_uri(spec: FineTunedModelSpec, owner: Owner, config: OperatorConfig) -> str:
    return spec.output.uri if spec.output else default_output_uri(config, owner)


def _sources(spec: FineTunedModelSpec, base: str, output: str | None) -> tuple[Source, ...]:
    """Each URI with its own Secret: a base on the Hub and an adapter in a bucket need different credentials."""
    return (
        Source("base", base, spec.base_model.token_secret_ref),
        Source("adapter", spec.adapter.uri, spec.adapter.token_secret_ref),
        Source("output", output, spec.output.token_secret_ref if spec.output else None),
    )


def _job(
    spec: FineTunedModelSpec,
    owner: Owner,
    config: OperatorConfig,
    step: str,
    args: Sequence[str],
    *,
    output: str | None,
    digests: InputDigests,
    gpus: int = 0,
    refresh: str | None = None,
) -> Manifest:
    """A worker Job that reads the base and the adapter."""
    base = base_uri(spec)
    worker = WorkerStep(
        step=step,
        image=spec.job.image or config.images.worker,
        args=worker_cmd(step, *args),
        inputs=(base, spec.adapter.uri),
        output=output,
        digests={base: digests.get("base_digest"), spec.adapter.uri: digests.get("adapter_digest")},
        sources=_sources(spec, base, output),
        gpus=gpus,
        refresh=refresh,
    )
    return render_job(owner, config, spec.job, worker)


def render_inspect_job(
    spec: FineTunedModelSpec,
    owner: Owner,
    config: OperatorConfig,
    refresh: str | None = None,
    **digests: Unpack[InputDigests],
) -> Manifest:
    """The Job that reads adapter_config.json, digests the adapter and, when merging, checks it fits the base.

    Its name follows the spec, not the adapter's bytes: `refresh` (the resource's tuneops.io/refresh
    annotation) gives a new Job that reads the adapter again, for new weights under the same URI."""
    args = ["--adapter", spec.adapter.uri, "--base", base_uri(spec)]
    publish = None
    if spec.merge.enabled:
        args.append("--merge")
    else:
        # Served as an adapter: publish a copy at a content-addressed path, so new weights always arrive
        # under a new path (vLLM keys its prefix cache by adapter name and path).
        publish = merge_output_uri(spec, owner, config)
        args += ["--publish", publish]
    return _job(spec, owner, config, INSPECT, args, output=publish, digests=digests, refresh=refresh)


def render_merge_job(
    spec: FineTunedModelSpec, owner: Owner, config: OperatorConfig, **digests: Unpack[InputDigests]
) -> Manifest:
    """The Job that merges the adapter into the base and writes the merged model to the output URI.

    Pass the adapter digest from the inspect step: a new adapter under the same URI then gets a new Job.
    """
    if not spec.merge.enabled:
        raise RenderError("spec.merge.enabled is false: there is no merge Job")
    output = merge_output_uri(spec, owner, config)
    args = [
        "--base", base_uri(spec),
        "--adapter", spec.adapter.uri,
        "--output", output,
        "--dtype", spec.merge.dtype,
        "--method", spec.merge.method,
    ]  # fmt: skip
    gpus = 1 if spec.merge.device == "gpu" else 0
    return _job(spec, owner, config, MERGE, args, output=output, digests=digests, gpus=gpus)


def render_benchmark_job(
    spec: FineTunedModelSpec,
    owner: Owner,
    config: OperatorConfig,
    *,
    merged_uri: str,
    merged_digest: str | None,
    max_lora_rank: int | None,
    service: InferenceServiceSpec | None = None,
    **digests: Unpack[InputDigests],
) -> Manifest:
    """The Job that serves the merged model, then the base with the adapter as LoRA, each under vLLM's own
    benchmark, and checks both answer alike (`tuneops worker compare`).

    It runs in the vLLM image (spec.benchmark.job.image, else the operator's), with the project's code put
    beside it by an init container of the worker image; resources and placement come from `service` (the
    spec of benchmark.serviceRef) under spec.benchmark.job. Its name follows the merged model's digest: a new
    merge is measured again."""
    bench = spec.benchmark
    if bench is None or not bench.enabled:
        raise RenderError("spec.benchmark is not enabled: there is no benchmark Job")
    if not spec.merge.enabled:
        raise RenderError("spec.merge.enabled is false: the benchmark needs the merged model")
    base = base_uri(spec)
    # vLLM's image has no S3 client: s3:// inputs are downloaded into scratch first, by init containers of the
    # worker image (each with its own Secret and the digest its producer recorded), and read from there.
    wanted = {"base": (base, digests.get("base_digest"), spec.base_model.token_secret_ref),
              "adapter": (spec.adapter.uri, digests.get("adapter_digest"), spec.adapter.token_secret_ref),
              "merged": (merged_uri, merged_digest, spec.output.token_secret_ref if spec.output else None)}  # fmt: skip
    local: dict[str, str] = {}
    fetches: list[dict[str, Any]] = []
    for role, (uri, digest, secret) in wanted.items():
        if parse_uri(uri).scheme == "s3":
            dest = f"{SCRATCH_DIR}/inputs/{role}"
            local[role] = f"file://{dest}"
            fetches.append(fetch_container(uri, secret, config, digest, name=f"fetch-{role}", dest=dest,
                                           volume="scratch", volume_path=SCRATCH_DIR))  # fmt: skip
    rank = max(max_lora_rank or 16, 8)
    # vLLM's allowed --max-lora-rank values: the rank rounded up to one of them
    lora_rank = next((r for r in (8, 16, 32, 64, 128, 256, 320, 512) if r >= rank), rank)
    args = [
        "compare", "--base", local.get("base", base), "--adapter", local.get("adapter", spec.adapter.uri),
        "--merged", local.get("merged", merged_uri),
        "--concurrency", ",".join(str(c) for c in bench.concurrency),
        "--input-len", str(bench.input_len), "--output-len", str(bench.output_len),
        "--prompts", str(bench.prompts), "--max-model-len", str(bench.max_model_len),
        "--max-lora-rank", str(lora_rank), "--adapters", str(bench.adapters),
    ]  # fmt: skip
    inputs = [base, spec.adapter.uri, merged_uri]
    if bench.dataset:
        args += ["--dataset", bench.dataset]
        inputs.append(bench.dataset)
    template = on_service_hardware(bench.job, service) if service is not None else bench.job
    gpus = job_gpus(template)
    if gpus == 0:
        # vLLM's CPU build otherwise reserves a share of the node's memory, which the Pod's limit cannot give;
        # as for a served model without GPUs, a quarter of the Pod's memory (one server runs at a time)
        res = template.resources
        memory = ((res.limits or {}).get("memory") or (res.requests or {}).get("memory")) if res else None
        args += [
            "--kv-cache-bytes",
            str(cpu_kv_cache_bytes(memory or (None if res else config.worker_memory))),
        ]
    worker = WorkerStep(
        step=BENCHMARK,
        image=bench.job.image or config.images.vllm,
        args=tuple(args),
        inputs=tuple(inputs),
        output=None,
        digests={
            base: digests.get("base_digest"),
            spec.adapter.uri: digests.get("adapter_digest"),
            merged_uri: merged_digest,
        },
        sources=_sources(spec, base, None),
        gpus=gpus,
        command=("python3", "-m", "tuneops.workers.cli"),
        code_image=config.images.worker,
        shm=config.scratch.shm if gpus > 1 else config.scratch.engine_shm,
        init=tuple(fetches),
    )
    return render_job(owner, config, template, worker)


def on_service_hardware(job: JobTemplate, service: InferenceServiceSpec) -> JobTemplate:
    """`job` on the service's class of hardware: its GPUs (and GPU product), CPU and memory, node selector,
    tolerations, affinity and priority class; what `job` sets itself wins."""
    res = service.resources
    requests: dict[str, str | int] = {}
    limits: dict[str, str | int] = {}
    gpus = service.gpus_per_pod()
    if gpus:
        limits[GPU_RESOURCE] = str(gpus)
    for key, value in (("cpu", res.cpu), ("memory", res.memory)):
        if value is not None:
            requests[key] = limits[key] = value
    own = job.resources
    if own is not None:
        requests.update(own.requests or {})
        limits.update(own.limits or {})
    resources = ResourceRequirements(requests=requests or None, limits=limits or None)
    selector = {**(service.node_selector or {}), **(job.node_selector or {})}
    affinity = job.affinity or with_gpu_product(service.affinity, res.gpu_product if gpus else None)
    return job.model_copy(
        update={
            "resources": resources if requests or limits else None,
            "node_selector": selector or None,
            "tolerations": job.tolerations or service.tolerations,
            "affinity": affinity,
            "priority_class_name": job.priority_class_name or service.priority_class_name,
        }
    )


def render_finetunedmodel(
    spec: FineTunedModelSpec, owner: Owner, config: OperatorConfig, **digests: Unpack[InputDigests]
) -> list[Manifest]:
    """Every Job the operator may create for this resource, in run order (for `tuneops render`)."""
    out = [render_inspect_job(spec, owner, config, **digests)]
    if spec.merge.enabled:
        out.append(render_merge_job(spec, owner, config, **digests))
    if spec.benchmark is not None and spec.benchmark.enabled:
        merged = merge_output_uri(spec, owner, config)
        out.append(render_benchmark_job(spec, owner, config, merged_uri=merged, merged_digest=None,
                                        max_lora_rank=None, **digests))  # fmt: skip
    return out
