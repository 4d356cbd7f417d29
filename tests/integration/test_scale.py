"""The scale benchmark at a reduced count (CI): 40 FineTunedModels, 40 QuantizationJobs, 20 InferenceServices.

The same code as `make bench` (bench/scale.py: 700 and 3,000 resources there), with the issue's targets as
assertions: every resource Ready; a Job Pod's completion reaches its owner's status within 2 s (p99); at most 12
operator requests per resource until Ready; a settled operator makes no write and no read (get, list) over three
resync periods; a restarted operator writes nothing and lists each kind once.

The fallback requeue stays at its default, 30 s, far beyond the 2 s target: a completion that reaches its owner in
time was carried by the children's events, not by polling.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest
from bench.__main__ import table
from bench.scale import Scenario, Settings, measure, missed, rows

from tuneops.local.controlplane import ControlPlane

CI = Scenario("CI", 40, 40, 20, adapters=10, latency_targets=True)


@pytest.mark.slow
def test_reduced_scale_meets_the_targets(
    crds: None, control_plane: ControlPlane, operator_kubeconfig: Path, tmp_path: Path, kube_api: Any
) -> None:
    from kubernetes import client

    ns = f"scale-{secrets.token_hex(3)}"
    # Three resync periods: 30 s, as long as the fallback poll and the informers' look at a kind not served.
    settings = Settings(resync_s=10.0, poll_s=30.0, steady_periods=3, timeout_s=60.0, own_namespace_only=True)
    try:
        result = measure(control_plane, operator_kubeconfig, ns, CI, tmp_path, settings)
    finally:
        client.CoreV1Api(kube_api).delete_namespace(ns)
    got = rows(result)
    print(table(got))
    assert result.notes == [], result.notes
    assert result.unobserved == 0 and len(result.latencies) == CI.finetunedmodels + CI.quantizationjobs
    assert result.restart_lists(), "the restarted operator listed and watched nothing"
    assert missed(got) == []
    assert result.errors_logged == 0
