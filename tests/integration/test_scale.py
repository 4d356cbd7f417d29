"""The scale benchmark at a reduced count (CI): 30 FineTunedModels, 30 QuantizationJobs, 10 InferenceServices.

The same code as `make bench` (bench/scale.py, 300/300/100 there); here the targets are assertions.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from bench.scale import TARGET_CHILDREN_S, TARGET_RSS_MB, measure, meets_targets

from tuneops.local.controlplane import ControlPlane


@pytest.mark.slow
def test_scale_reduced_count_meets_the_targets(
    crds: None, control_plane: ControlPlane, operator_kubeconfig: Path, tmp_path: Path, kube_api: Any
) -> None:
    from kubernetes import client

    ns = f"scale-{secrets.token_hex(3)}"
    try:
        result = measure(control_plane, operator_kubeconfig, ns, n_ftm=30, n_qjob=30, n_isvc=10, adapters=100,
                         log_dir=tmp_path, resync_s=5.0, poll_s=2.0, steady_periods=3, timeout_s=180)  # fmt: skip
    finally:
        client.CoreV1Api(kube_api).delete_namespace(ns)
    print(result)
    assert meets_targets(result) == [], result
    assert result.children_s <= TARGET_CHILDREN_S and result.peak_rss_mb < TARGET_RSS_MB
    assert result.steady_writes == 0 and result.steady_reads > 0, "the resync timer did not run"
    assert result.errors_logged == 0
    # Creating a child costs a handful of requests: read the resource, look for the child, apply, status, Event.
    assert result.requests_to_children / result.resources < 20, result
