"""Command lines of the servers: vLLM's OpenAI server (with its startup adapters) and llama-server."""

from __future__ import annotations

from collections.abc import Sequence

from tuneops.api.common import fetched_by_loader
from tuneops.api.inferenceservice import InferenceServiceSpec, LlamaCppSpec, LoraSpec, VllmSpec
from tuneops.config import OperatorConfig
from tuneops.render.serving.types import PORT, served_model_name
from tuneops.render.types import Owner, RenderError, ResolvedAdapter
from tuneops.render.volumes import parse, pod_path
from tuneops.serving.vllm import LoraModule


def adapter_path(uri: str, config: OperatorConfig) -> str:
    """What vLLM is given as an adapter's path: a file path (pvc://, file://) or a Hugging Face repo id."""
    u = parse(uri)
    if u.scheme == "hf":
        return "/".join(p for p in (u.repo, u.subpath) if p)
    if u.scheme == "s3":
        raise RenderError(f"adapter {uri!r}: vLLM cannot read s3://; the Pod's adapter loader fetches it")
    return pod_path(uri, config)


def lora_modules(
    spec: InferenceServiceSpec,
    owner: Owner,
    config: OperatorConfig,
    adapters: Sequence[ResolvedAdapter],
    base: str | None = None,
) -> list[LoraModule]:
    """The startup adapters in spec order, each with the served base name as its parent in /v1/models."""
    base = base or served_model_name(spec, owner)
    # An adapter the Pod's loader fetches is not on disk when vLLM starts: the operator loads it at runtime.
    return [
        LoraModule(name=a.name, path=adapter_path(a.uri, config), base_model_name=base)
        for a in adapters
        if not fetched_by_loader(a.uri)
    ]


def vllm_args(
    *,
    model_path: str,
    served_name: str,
    vllm: VllmSpec,
    lora: LoraSpec | None = None,
    lora_modules: Sequence[LoraModule] = (),
    port: int = PORT,
    distributed_executor_backend: str | None = None,
    kv_cache_bytes: int | None = None,
) -> list[str]:
    """vLLM's OpenAI server arguments. Never `--quantization` (vLLM reads AWQ / compressed-tensors from the
    model's config and picks the fast kernel) and never `--api-key` (it comes from a Secret as VLLM_API_KEY).
    `extraArgs` come last so they can override anything before them."""
    args = [
        "--model", model_path,
        "--served-model-name", served_name,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--tensor-parallel-size", str(vllm.tensor_parallel_size),
        "--pipeline-parallel-size", str(vllm.pipeline_parallel_size),
    ]  # fmt: skip
    if vllm.max_model_len is not None:
        args += ["--max-model-len", str(vllm.max_model_len)]
    args += ["--dtype", vllm.dtype, "--gpu-memory-utilization", f"{vllm.gpu_memory_utilization:g}"]
    if kv_cache_bytes is not None:
        args += ["--kv-cache-memory-bytes", str(kv_cache_bytes)]
    if vllm.enable_prefix_caching is not None:
        args.append("--enable-prefix-caching" if vllm.enable_prefix_caching else "--no-enable-prefix-caching")
    if distributed_executor_backend:
        args += ["--distributed-executor-backend", distributed_executor_backend]
    args += _lora_args(lora)
    args += _lora_module_args(lora_modules)
    args += ["--shutdown-timeout", str(vllm.shutdown_timeout_seconds)]
    return args + list(vllm.extra_args or [])


CPU_KV_CACHE_DEFAULT = 1 << 30
CPU_KV_CACHE_MIN = 256 << 20


def cpu_kv_cache_bytes(memory: int | str | None) -> int:
    """The KV cache of a vLLM server without GPUs: a quarter of the Pod's memory (at least 256 MiB), 1 GiB
    when the spec sets none. vLLM's CPU build otherwise reserves gpuMemoryUtilization of the *node's* memory,
    which a container's memory limit cannot give: the server exits at startup, or is OOM-killed later."""
    if not memory:
        return CPU_KV_CACHE_DEFAULT
    from kubernetes.utils.quantity import parse_quantity

    return max(CPU_KV_CACHE_MIN, int(parse_quantity(memory)) // 4)  # type: ignore[no-untyped-call]


def _lora_args(lora: LoraSpec | None) -> list[str]:
    if lora is None:
        return []
    args = ["--enable-lora", "--max-loras", str(lora.max_loras), "--max-lora-rank", str(lora.max_lora_rank)]
    if lora.max_cpu_loras is not None:
        args += ["--max-cpu-loras", str(lora.max_cpu_loras)]
    return args


def _lora_module_args(modules: Sequence[LoraModule]) -> list[str]:
    return ["--lora-modules", *(m.to_arg() for m in modules)] if modules else []


def lora_args_index(args: Sequence[str]) -> int:
    """Where the launcher inserts `--lora-modules` into args rendered without modules (before the
    shutdown timeout, as `vllm_args` would have placed them)."""
    return list(args).index("--shutdown-timeout")


def launcher_argv(args: Sequence[str], modules: Sequence[LoraModule]) -> list[str]:
    """The vLLM arguments the launcher ends up running with, given the ConfigMap's adapter list."""
    at = lora_args_index(args)
    return [*args[:at], *_lora_module_args(modules), *args[at:]]


def llamacpp_args(
    *, model_path: str, served_name: str, llamacpp: LlamaCppSpec, threads: int | None, port: int = PORT
) -> list[str]:
    """llama-server arguments (the API key comes from a Secret as LLAMA_API_KEY)."""
    args = [
        "--model", model_path,
        "--host", "0.0.0.0",
        "--port", str(port),
        "--ctx-size", str(llamacpp.ctx_size),
        "--parallel", str(llamacpp.parallel),
    ]  # fmt: skip
    if threads is not None:
        args += ["--threads", str(threads)]
    if llamacpp.gpu_layers is not None:
        args += ["--n-gpu-layers", str(llamacpp.gpu_layers)]
    args += ["--alias", served_name]
    return args + list(llamacpp.extra_args or [])
