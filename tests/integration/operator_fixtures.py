"""Fixtures shared by the operator tests: CRDs installed, the operator running as a subprocess, a Cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.operator_bed import ROOT, Cluster, OperatorProcess


@pytest.fixture(scope="module")
def crds(kubectl: Any) -> None:
    kubectl("apply", "-f", str(ROOT / "crds"))
    for crd in ("finetunedmodels", "quantizationjobs", "inferenceservices"):
        kubectl("wait", "--for=condition=Established", f"crd/{crd}.tuneops.io", "--timeout=60s")


@pytest.fixture(scope="module")
def operator(
    crds: None, operator_kubeconfig: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    op = OperatorProcess(operator_kubeconfig, tmp_path_factory.mktemp("operator") / "operator.log")
    op.start()
    yield op
    op.stop()


@pytest.fixture
def cluster(kube_api: Any) -> Cluster:
    return Cluster(kube_api)
