"""Test helpers for the operator against the real API server: run it as a subprocess, play the Job's Pod."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kubernetes import client

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """`tuneops run` in a subprocess with short poll/resync periods; stopped by PID."""

    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        resync: float = 3.0,
        extra_env: dict[str, str] | None = None,
        namespaces: Sequence[str] = (),
    ):
        """`namespaces`: watch these (kopf's --namespace); empty watches every namespace."""
        self.kubeconfig = kubeconfig
        self.namespaces = tuple(namespaces)
        self.log_path = log_path
        self.resync = resync
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.metrics_port = free_port()
        self.liveness_port = free_port()

    def start(self) -> None:
        env = dict(os.environ)
        env.update(
            {
                "KUBECONFIG": str(self.kubeconfig),
                "TUNEOPS_POLL_SECONDS": "1",
                "TUNEOPS_RESYNC_SECONDS": str(self.resync),
                "TUNEOPS_ARTIFACT_ROOT": "pvc://artifacts",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tuneops.cli", "run",
             *([f"--namespace={n}" for n in self.namespaces] or ["-A"]),
             f"--liveness=http://127.0.0.1:{self.liveness_port}/healthz", f"--metrics-port={self.metrics_port}"],
            env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        log.close()

    def wait_serving(self, timeout: float = 60) -> None:
        """Until the operator answers on its metrics port (it starts serving once its startup is done)."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2):
                    return
            except OSError:
                if not self.alive():
                    raise AssertionError(f"the operator exited:\n{self.log()}") from None
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"the operator did not serve /metrics in {timeout}s:\n{self.log()}"
                    ) from None
                time.sleep(0.2)

    def reconciles(self) -> float:
        """Reconciles finished so far (tuneops_reconcile_total over kinds and results)."""
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        prefix = "tuneops_reconcile_total{"
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except FileNotFoundError:
            return ""


class Cluster:
    """Typed shortcuts over the admin ApiClient for the tests."""

    def __init__(self, api: Any):
        self.api = api
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def get(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                "tuneops.io", "v1alpha1", ns, plural, name
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return obj

    def ready(self, plural: str, ns: str, name: str) -> dict[str, Any] | None:
        """The Ready condition of a resource, when its status describes the current generation."""
        obj = self.get(plural, ns, name)
        if not obj:
            return None
        status = obj.get("status") or {}
        if status.get("observedGeneration") != obj["metadata"]["generation"]:
            return None
        for cond in status.get("conditions") or []:
            if cond["type"] == "Ready":
                return dict(cond)
        return None

    def patch_spec(self, plural: str, ns: str, name: str, spec: dict[str, Any]) -> None:
        self.custom.patch_namespaced_custom_object("tuneops.io", "v1alpha1", ns, plural, name, {"spec": spec})

    def jobs(self, ns: str) -> list[Any]:
        return list(self.batch.list_namespaced_job(ns).items)

    def job_pods(self, ns: str, job: str) -> list[Any]:
        return list(self.core.list_namespaced_pod(ns, label_selector=f"job-name={job}").items)

    def finish_pod(
        self, ns: str, job: str, result: dict[str, Any], exit_code: int = 0, reason: str | None = None
    ) -> bool:
        """Play kubelet for one of the Job's Pods: terminate its container with a termination message."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
            "message": json.dumps(result),
            "startedAt": now,
            "finishedAt": now,
        }
        phase = "Succeeded" if exit_code == 0 else "Failed"
        return self._pod_state(ns, job, phase, {"terminated": terminated})

    def run_pod(self, ns: str, job: str) -> bool:
        """Play kubelet for one of the Job's Pods: its container runs."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        return self._pod_state(ns, job, "Running", {"running": {"startedAt": now}}, ready=True)

    def _pod_state(self, ns: str, job: str, phase: str, state: dict[str, Any], ready: bool = False) -> bool:
        pods = [p for p in self.job_pods(ns, job) if p.status.phase in (None, "Pending", "Running")]
        if not pods:
            return False
        pod = pods[0]
        container = pod.spec.containers[0]
        status = {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": container.name,
                    "image": container.image,
                    "imageID": "",
                    "ready": ready,
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        self.core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": status})
        return True

    def events(self, ns: str, name: str) -> list[Any]:
        return [e for e in self.core.list_namespaced_event(ns).items if e.involved_object.name == name]


def mark_pods_ready(cluster: Cluster, ns: str, selector: str, ip_prefix: str = "10.0.0.") -> int:
    """Play kubelet for serving Pods: Running, Ready, with an IP. Returns how many Pods were marked."""
    n = 0
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i, pod in enumerate(cluster.core.list_namespaced_pod(ns, label_selector=selector).items):
        if pod.status.phase == "Running":
            continue
        status = {
            "phase": "Running",
            "podIP": f"{ip_prefix}{i + 10}",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": now}
                for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")
            ],
            "containerStatuses": [
                {"name": c.name, "image": c.image, "imageID": "", "ready": True, "restartCount": 0, "started": True,
                 "state": {"running": {"startedAt": now}}}
                for c in pod.spec.containers
            ],
        }  # fmt: skip
        cluster.core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": status})
        n += 1
    return n
