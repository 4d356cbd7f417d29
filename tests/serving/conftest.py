"""Fixtures for tests that start real model servers on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_support import TinyModels, make_tiny_models

from tuneops.serving.vllm import vllm_bin


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> TinyModels:
    return make_tiny_models(tmp_path_factory.mktemp("serving-models"))


@pytest.fixture(scope="session")
def vllm_installed() -> Path:
    binary = vllm_bin()
    # never a skip: `make vllm` (scripts/setup-vllm.sh) installs it before the serving tests run
    assert binary.exists(), f"{binary} missing: run scripts/setup-vllm.sh (make vllm)"
    return binary


@pytest.fixture(scope="session")
def server_logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("server-logs")
