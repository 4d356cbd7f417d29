"""Flood benchmark: large tenant objects that carry the operator's label leave the operator's memory alone.

Anyone who may create ConfigMaps in a watched namespace can label them `app.kubernetes.io/managed-by=tuneops`,
the label the children's informers select on. The operator keeps only children a live tuneops resource controls
and lists in small pages, so its RSS should not follow the flood: this round creates FLOOD ConfigMaps of 0.9 MiB
(half of them with a forged controller ownerReference) in the watched namespace on a control plane of its own,
and reads the operator's RSS before, after, and in a restarted operator that lists them all again.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

from tuneops.local.controlplane import ControlPlane

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._scalebed import admin_client  # noqa: E402
from bench.scale import OPERATOR_USER, install_crds  # noqa: E402
from tests.integration.operator_bed import OperatorProcess  # noqa: E402

FLOOD = 300
SIZE = int(0.9 * 2**20)
TARGET_GROWTH_MB = 50.0  # issue 20: within 50 MB of the baseline, through a restart


def rss_mb(pid: int, field: str = "VmRSS:") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return 0.0


def settled_rss(op: OperatorProcess, seconds: float = 5.0) -> float:
    """The operator's RSS once it serves, has listed (its log says `watching`), and had `seconds` more."""
    op.wait_serving()
    deadline = time.monotonic() + 60
    while "watching " not in op.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(seconds)
    assert op.proc is not None and op.alive(), op.log()
    return rss_mb(op.proc.pid)


def flood(core: Any, namespace: str, n: int) -> None:
    blob = "x" * SIZE

    def make(i: int) -> None:
        forged = [{"apiVersion": "tuneops.io/v1alpha1", "kind": "FineTunedModel", "name": "m",
                   "uid": f"00000000-0000-0000-0000-{i:012d}", "controller": True}]  # fmt: skip
        core.create_namespaced_config_map(namespace, {
            "metadata": {"name": f"tenant-{i}", "labels": {"app.kubernetes.io/managed-by": "tuneops"},
                         "ownerReferences": forged if i % 2 else []},
            "data": {"blob": blob},
        })  # fmt: skip

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(make, range(n)))


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    count = int((argv or [str(FLOOD)])[0]) if argv else FLOOD
    shm = Path("/dev/shm")
    data = Path(
        tempfile.mkdtemp(prefix="tuneops-bench-flood-", dir=str(shm) if os.access(shm, os.W_OK) else None)
    )
    namespace = "flood"
    with ControlPlane(data_dir=data, keep_data=False, users={OPERATOR_USER: []}, die_with_parent=True) as cp:
        install_crds(cp.kubeconfig_path)
        core: Any = client.CoreV1Api(admin_client(cp.kubeconfig_path))
        core.create_namespace({"metadata": {"name": namespace}})
        kubeconfig = cp.kubeconfig_for(OPERATOR_USER)
        first = OperatorProcess(kubeconfig, data / "operator.log", resync=300.0, namespaces=[namespace])
        first.start()
        try:
            baseline = settled_rss(first)
            flood(core, namespace, count)
            flooded = settled_rss(first)
        finally:
            first.stop()
        again = OperatorProcess(kubeconfig, data / "restarted.log", resync=300.0, namespaces=[namespace])
        again.start()
        try:
            restarted = settled_rss(again)
            assert again.proc is not None
            peak = rss_mb(again.proc.pid, "VmHWM:")
        finally:
            again.stop()
    what = f"{count} labelled tenant ConfigMaps of 0.9 MiB"
    return [
        {"name": "flood: operator RSS before", "value": round(baseline, 1), "unit": "MB",
         "no_target": "the baseline the two rows below are measured against"},
        {"name": f"flood: RSS growth with {what}", "value": round(flooded - baseline, 1), "unit": "MB",
         "target": f"<= {TARGET_GROWTH_MB:g}"},
        {"name": "flood: RSS growth after a restart that lists them all", "value": round(restarted - baseline, 1),
         "unit": "MB", "target": f"<= {TARGET_GROWTH_MB:g}"},
        {"name": "flood: restarted operator's peak RSS", "value": round(peak, 1), "unit": "MB",
         "no_target": "shown for the restart's listing; the steady rows carry the target"},
    ]  # fmt: skip


if __name__ == "__main__":
    from bench.__main__ import table as render

    print(render(run(sys.argv[1:])))
