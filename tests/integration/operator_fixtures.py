"""Fixtures shared by the operator tests: CRDs installed, the operator running as a subprocess, a Cluster."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator_bed import Cluster, OperatorProcess


@pytest.fixture(scope="module")
def crds(kubectl: Any) -> None:
    # The test bed is Kubernetes 1.20, which predates CEL rules: install the CRDs without them (the operator
    # enforces the same rules itself; tests/unit/test_crds.py evaluates them with a CEL interpreter).
    crds = subprocess.run(
        [sys.executable, "-m", "tuneops.cli", "crds", "--no-cel", "-o", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    kubectl("apply", "-f", "-", input=crds)
    for crd in ("finetunedmodels", "quantizationjobs", "inferenceservices", "loraadapters"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.tuneops.io", "--timeout=60s")


@pytest.fixture(scope="module")
def operator(
    crds: None, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    op.wait_serving()
    yield op
    op.stop()


@pytest.fixture
def start_operator(
    crds: None, operator_kubeconfig: Path, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """`start_operator(kubeconfig=None, **env)`: operators of the test's own (e.g. behind a fault proxy, or
    with other settings), each with its own log; all stop when the test ends."""
    started: list[OperatorProcess] = []

    def start(kubeconfig: Path | None = None, **env: str) -> OperatorProcess:
        op = OperatorProcess(kubeconfig or operator_kubeconfig, tmp_path / f"operator-{len(started)}.log",
                             extra_env=env)  # fmt: skip
        op.start()
        started.append(op)
        return op

    yield start
    for op in started:
        op.stop()


@pytest.fixture
def cluster(kube_api: Any) -> Cluster:
    return Cluster(kube_api)
