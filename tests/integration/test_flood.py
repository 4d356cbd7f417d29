"""A flood of large tenant objects that carry the operator's label: the operator's memory stays its own.

Anyone who may create ConfigMaps in a watched namespace can label them `app.kubernetes.io/managed-by=tuneops`.
The children's informers keep only objects a live tuneops resource controls, list in small pages and drop the
data of large ConfigMaps, so hundreds of 0.9 MiB ConfigMaps move the operator's RSS by a few MB, at first and
after a restart (which lists them all again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from tests.integration.operator_bed import OperatorProcess

FLOOD = 200
SIZE = int(0.9 * 2**20)
BUDGET_MB = 50.0


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def settle(op: OperatorProcess, seconds: float = 3.0) -> float:
    """RSS once the operator's informers have listed and it had `seconds` to take in what the server sends."""
    op.wait_serving()
    deadline = time.monotonic() + 40
    while "watching " not in op.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "watching " in op.log(), op.log()
    time.sleep(seconds)
    assert op.proc is not None and op.alive(), op.log()
    return rss_mb(op.proc.pid)


def test_a_flood_of_large_labelled_tenant_configmaps_leaves_the_operators_memory_alone(
    start_operator: Callable[..., OperatorProcess], kube_api: Any, namespace: str
) -> None:
    core = client.CoreV1Api(kube_api)
    op = start_operator()
    baseline = settle(op)
    blob = "x" * SIZE

    def make(n: int) -> None:
        core.create_namespaced_config_map(namespace, {
            "metadata": {"name": f"tenant-{n}", "labels": {"app.kubernetes.io/managed-by": "tuneops"},
                         # a forged owner: not a live tuneops resource
                         "ownerReferences": [{"apiVersion": "tuneops.io/v1alpha1", "kind": "FineTunedModel",
                                              "name": "m", "uid": f"00000000-0000-0000-0000-{n:012d}",
                                              "controller": True}] if n % 2 else []},
            "data": {"blob": blob},
        })  # fmt: skip

    try:
        began = time.monotonic()
        with ThreadPoolExecutor(max_workers=6) as pool:
            list(pool.map(make, range(FLOOD)))
        made = time.monotonic() - began
        flooded = settle(op, 4.0)
        assert op.proc is not None
        peak = rss_mb(op.proc.pid, "VmHWM:")
        # Through a restart: the new process lists all of them (in pages) before it starts.
        op.stop()
        op2 = start_operator()
        restarted = settle(op2, 4.0)
        assert op2.proc is not None
        peak2 = rss_mb(op2.proc.pid, "VmHWM:")
        print(f"\nflood of {FLOOD} x {SIZE / 2**20:.1f} MiB ConfigMaps (made in {made:.1f}s): RSS baseline "
              f"{baseline:.0f} MB, flooded {flooded:.0f} MB (peak {peak:.0f}), after a restart {restarted:.0f} MB "
              f"(peak {peak2:.0f})")  # fmt: skip
        assert flooded - baseline < BUDGET_MB, op.log()
        assert restarted - baseline < BUDGET_MB, op2.log()
        assert peak2 - baseline < BUDGET_MB, op2.log()
    finally:
        core.delete_collection_namespaced_config_map(
            namespace, label_selector="app.kubernetes.io/managed-by=tuneops"
        )
