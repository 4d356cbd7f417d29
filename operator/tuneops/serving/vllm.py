"""Command line and environment for running the CPU build of vLLM locally (tests, the local node, benches)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tuneops import toolpaths
from tuneops.serving.process import HOST


def vllm_bin() -> Path:
    """The `vllm` entry point of the environment scripts/setup-vllm.sh creates; where there is none (inside a
    vLLM image), the one on PATH."""
    managed = toolpaths.vllm_env_dir() / "bin" / "vllm"
    if managed.exists():
        return managed
    found = shutil.which("vllm")
    return Path(found) if found else managed


def vllm_cpu_env(*, kv_cache_gib: int = 1, threads: int | None = None) -> dict[str, str]:
    """Environment the CPU build needs to start quickly in a small memory budget, offline.

    The engine runs in-process (no engine-core subprocess): one PID to stop, and less memory.
    """
    env = {
        "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib),
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    if threads is not None:
        # oversubscribed OpenMP threads on shared cores slow everything down many times over
        env["OMP_NUM_THREADS"] = str(threads)
    return env


@dataclass(frozen=True)
class LoraModule:
    """An adapter given to vLLM at startup (`--lora-modules` JSON form)."""

    name: str
    path: str
    base_model_name: str | None = None

    def to_arg(self) -> str:
        body: dict[str, str] = {"name": self.name, "path": self.path}
        if self.base_model_name:
            body["base_model_name"] = self.base_model_name
        return json.dumps(body, separators=(",", ":"))


def vllm_serve_argv(
    model: str | os.PathLike[str],
    *,
    port: int,
    served_model_name: str | None = None,
    lora_modules: Sequence[LoraModule] = (),
    enable_lora: bool = False,
    max_lora_rank: int = 16,
    max_loras: int = 4,
    max_model_len: int | None = 512,
    api_key: str | None = None,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """`vllm serve` bound to 127.0.0.1:``port``. LoRA is enabled when asked or when adapters are given."""
    argv = [str(vllm_bin()), "serve", str(model), "--host", HOST, "--port", str(port)]
    if served_model_name:
        argv += ["--served-model-name", served_model_name]
    if max_model_len is not None:
        argv += ["--max-model-len", str(max_model_len)]
    if enable_lora or lora_modules:
        argv += ["--enable-lora", "--max-lora-rank", str(max_lora_rank), "--max-loras", str(max_loras)]
    if lora_modules:
        argv += ["--lora-modules", *(m.to_arg() for m in lora_modules)]
    if api_key:
        argv += ["--api-key", api_key]
    argv += list(extra_args)
    return argv


def runtime_lora_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` plus the switch that opens /v1/load_lora_adapter and /v1/unload_lora_adapter."""
    out = dict(env or {})
    out["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "True"
    return out
