"""The local node: registers a Node, schedules Pods onto itself and runs them as local processes, like a kubelet."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneops.kube.client import EVENT, NODE, POD, ApiError, Kube, ResourceType, event_body
from tuneops.kube.informer import Informer
from tuneops.local import loopback
from tuneops.local.container import now_rfc3339
from tuneops.local.engine import Engine
from tuneops.local.kubeletapi import KubeletServer
from tuneops.local.pod import PodWorker
from tuneops.local.podenv import HOST_IP
from tuneops.local.runtimes import Runtime, default_runtimes
from tuneops.local.translate import requests_gpu

log = logging.getLogger(__name__)

Obj = dict[str, Any]

NODE_NAME = "tuneops-local"
KUBELET_VERSION = "v1.20.2"
PVC = ResourceType("v1", "PersistentVolumeClaim", "persistentvolumeclaims")
# How often an unschedulable Pod is tried again: what it lacks (a claim, a label) may appear meanwhile.
RESCHEDULE_S = 5.0


@dataclass
class NodeConfig:
    """How the local node behaves; the defaults suit `tuneops local`, tests shorten the timings."""

    root: Path
    name: str = NODE_NAME
    kubeconfig: Path | None = None
    runtimes: list[Runtime] = field(default_factory=default_runtimes)
    ip_prefix: str | None = None
    """Pods get <prefix>.x.y addresses (all of 127.0.0.0/8 reaches loopback on Linux). None: the first
    `127.X` no other local node on this machine holds (the last one this root used when still free)."""
    backoff_base_s: float = 10.0
    backoff_max_s: float = 300.0
    probe_period_cap_s: float | None = None
    """Run probes at least this often; the failure budget (threshold x period) is kept in seconds."""
    sync_s: float = 0.25
    config_refresh_s: float = 2.0
    heartbeat_s: float = 20.0
    run_prestop_hooks: bool = True
    labels: dict[str, str] = field(default_factory=dict)
    engine: Engine | None = None
    """Container mode: each container a `podman run` of its image (tuneops.local.engine); None runs Pods as
    local processes from the image mapping (`runtimes`)."""


def _arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def _read(path: str) -> str:
    with contextlib.suppress(OSError):
        return Path(path).read_text().strip()
    return ""


def capacity() -> dict[str, str]:
    """This machine's CPUs, memory and disk, as a Node's capacity."""
    mem_kib = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    disk = shutil.disk_usage("/")
    return {
        "cpu": str(os.cpu_count() or 1),
        "memory": f"{mem_kib}Ki",
        "pods": "110",
        "ephemeral-storage": f"{disk.total // 1024}Ki",
    }


def node_status(name: str, allocatable: dict[str, str], kubelet_port: int = 0) -> Obj:
    """A Ready Node's status, as a heartbeat writes it; `kubelet_port` is where its kubelet API listens."""
    stamp = now_rfc3339()
    beat = {"lastHeartbeatTime": stamp, "lastTransitionTime": stamp}
    pressure = (
        ("MemoryPressure", "SufficientMemory"),
        ("DiskPressure", "NoDiskPressure"),
        ("PIDPressure", "SufficientPID"),
    )
    machine_id = _read("/etc/machine-id")
    return {
        "capacity": allocatable,
        "allocatable": allocatable,
        "addresses": [{"type": "InternalIP", "address": HOST_IP}, {"type": "Hostname", "address": name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "KubeletReady",
             "message": "the local node runs Pods as local processes", **beat},
            *({"type": t, "status": "False", "reason": f"KubeletHas{r}", **beat} for t, r in pressure),
        ],
        "nodeInfo": {
            "architecture": _arch(),
            "bootID": _read("/proc/sys/kernel/random/boot_id"),
            "containerRuntimeVersion": "local://tuneops",
            "kernelVersion": platform.release(),
            "kubeProxyVersion": KUBELET_VERSION,
            "kubeletVersion": KUBELET_VERSION,
            "machineID": machine_id,
            "operatingSystem": "linux",
            "osImage": platform.platform(),
            "systemUUID": machine_id,
        },
    }  # fmt: skip


class LocalNode:
    """Registers a Node, binds unscheduled Pods to it and runs them; `stop()` ends every process it started."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.config.root = Path(config.root).resolve()
        self.api = Kube.from_kubeconfig(config.kubeconfig, user_agent="tuneops-local-node")
        parsed = urllib.parse.urlparse(self.api.host)
        self.api_host = parsed.hostname or HOST_IP
        self.api_port = parsed.port or 443
        self.memory_dir = self._memory_root()
        self.allocatable = capacity()
        self._workers: dict[str, PodWorker] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._unschedulable: dict[str, tuple[str, float]] = {}
        self._claim: loopback.Claim | None = None
        self._ips: dict[str, str] = {}
        self._threads: list[threading.Thread] = []
        self.kubelet_api: KubeletServer | None = None
        self.pods = Informer(self.api, POD, self._on_pod, name="pods")
        self.on_pods_changed: list[Callable[[], None]] = []

    # ----- lifecycle ----------------------------------------------------------------------------------

    @property
    def ip_prefix(self) -> str:
        if self._claim is None:
            raise RuntimeError("the local node holds no address range before start()")
        return self._claim.prefix

    def _claim_addresses(self) -> None:
        remembered = self.config.root / "ip-prefix"
        previous = remembered.read_text().strip() if remembered.is_file() else None
        self._claim = loopback.claim(preferred=previous, exact=self.config.ip_prefix)
        remembered.write_text(self._claim.prefix + "\n")

    def start(self, timeout: float = 30.0) -> None:
        for sub in ("pvc", "pods"):
            (self.config.root / sub).mkdir(parents=True, exist_ok=True)
        self._claim_addresses()
        if self.config.engine is not None:
            from tuneops.local.engine import NODE_LABEL

            left = self.config.engine.remove_labelled(f"{NODE_LABEL}={self.config.root}")
            if left:
                log.info("removed %d container(s) an earlier run of this node left behind", left)
        # The kubelet API (`kubectl logs`), on loopback; it admits the API server's kubelet client certificate.
        ca_file = getattr(self.api.api.configuration, "ssl_ca_cert", None)
        self.kubelet_api = KubeletServer(self, HOST_IP, str(ca_file) if ca_file else None)
        self.kubelet_api.start()
        try:
            self._register()
            self.pods.start()
            if not self.pods.wait_synced(timeout):
                raise RuntimeError("the local node could not list Pods from the API server")
        except BaseException:
            self.pods.stop()
            self.kubelet_api.stop()
            raise
        for target, name in ((self._sync_loop, "node-sync"), (self._heartbeat_loop, "node-heartbeat")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("local node %s ready (root %s)", self.config.name, self.config.root)

    def stop(self, grace: float = 10.0) -> None:
        """Stop every Pod process (SIGTERM, then SIGKILL after `grace`); API objects are left as they are."""
        self._stop.set()
        self._wake.set()
        self.pods.stop()
        with self._lock:
            workers = list(self._workers.values())
        threads = [threading.Thread(target=w.stop, args=(grace,)) for w in workers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self.kubelet_api is not None:
            self.kubelet_api.stop()
        if self._claim is not None:
            self._claim.release()

    def request_stop(self) -> None:
        """Make `wait()` return (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def wait(self) -> None:
        """Block until `stop()` is called (from a signal handler or another thread)."""
        while not self._stop.wait(1.0):
            pass

    # ----- queries ------------------------------------------------------------------------------------

    def current_pod(self, namespace: str, name: str, uid: str) -> Obj | None:
        pod = self.pods.get(namespace, name)
        if pod is None or (pod.get("metadata") or {}).get("uid") != uid:
            return None
        return pod

    def workers(self) -> list[PodWorker]:
        with self._lock:
            return list(self._workers.values())

    def worker(self, namespace: str, name: str) -> PodWorker | None:
        return next((w for w in self.workers() if w.namespace == namespace and w.name == name), None)

    def pids(self) -> dict[str, list[int]]:
        return {f"{w.namespace}/{w.name}": w.pids() for w in self.workers()}

    # ----- API helpers --------------------------------------------------------------------------------

    def record_event(
        self, obj: Obj, type_: str, reason: str, message: str, component: str = "kubelet"
    ) -> None:
        involved = {"apiVersion": "v1", "kind": "Pod", **obj}
        # The scheduler's Events name no host; the kubelet's name the node.
        source = {"component": component, **({"host": self.config.name} if component == "kubelet" else {})}
        body = event_body(involved, type_, reason, message, source=source,
                          reporting=("tuneops-local-node", self.config.name))  # fmt: skip
        try:
            self.api.create(EVENT, body["metadata"]["namespace"], body)
        except Exception as exc:  # an Event is advisory
            log.debug("event %s on %s failed: %s", reason, (obj.get("metadata") or {}).get("name"), exc)

    def delete_pod_object(self, namespace: str, name: str, uid: str) -> None:
        try:
            self.api.delete(POD, namespace, name, grace_seconds=0, uid=uid)
        except ApiError as err:
            if err.status != 409:  # 409: a newer Pod of the same name; ours is gone already
                log.warning("deleting pod %s/%s failed: %s", namespace, name, err)

    # ----- node object --------------------------------------------------------------------------------

    def _memory_root(self) -> Path:
        shm = Path("/dev/shm")
        if shm.is_dir() and os.access(shm, os.W_OK):
            # Two nodes may share a name (each with its own API server): the root tells them apart.
            tag = hashlib.sha256(str(self.config.root).encode()).hexdigest()[:8]
            return shm / f"tuneops-{self.config.name}-{os.getuid()}-{tag}"
        return self.config.root / "memory"

    def _register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.config.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": _arch(),
            "node.kubernetes.io/instance-type": "local",
            **self.config.labels,
        }
        name = self.config.name
        if self.api.get(NODE, None, name) is None:
            node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}}
            self.api.create(NODE, None, node)
        else:
            self.api.patch(NODE, None, name, {"metadata": {"labels": labels}})
        port = self.kubelet_api.port if self.kubelet_api is not None else 0
        self.api.patch(NODE, None, name, {"status": node_status(name, self.allocatable, port)}, "status")

    def _heartbeat_loop(self) -> None:
        while not self._stop.wait(self.config.heartbeat_s):
            try:
                self._register()
            except Exception as exc:  # the API may be restarting; the next beat retries
                log.debug("heartbeat failed: %s", exc)

    # ----- scheduling and pod workers -----------------------------------------------------------------

    def _on_pod(self, obj: Obj | None) -> None:
        self._wake.set()
        if obj is not None:
            uid = (obj.get("metadata") or {}).get("uid")
            with self._lock:
                w = self._workers.get(str(uid))
            if w is not None:
                w.wake.set()
        for callback in self.on_pods_changed:
            callback()

    def _sync_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            try:
                self._sync()
            except Exception:
                log.exception("node sync failed")

    def _sync(self) -> None:
        pods = self.pods.items()
        live: set[str] = set()
        for pod in pods:
            meta = pod.get("metadata") or {}
            spec = pod.get("spec") or {}
            uid = str(meta.get("uid"))
            live.add(uid)
            node_name = spec.get("nodeName")
            if not node_name:
                if not meta.get("deletionTimestamp"):
                    self._schedule(pod)
                continue
            if node_name != self.config.name:
                continue
            with self._lock:
                worker = self._workers.get(uid)
            if worker is not None:
                continue
            phase = (pod.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                if meta.get("deletionTimestamp"):
                    self.delete_pod_object(str(meta["namespace"]), str(meta["name"]), uid)
                continue
            if self._stop.is_set():
                return
            worker = PodWorker(self, pod, self._allocate_ip(pod))
            with self._lock:
                self._workers[uid] = worker
            worker.start()
        with self._lock:
            gone = [uid for uid, w in self._workers.items() if w.finished.is_set() and uid not in live]
            for uid in gone:
                self._workers.pop(uid, None)
                self._ips.pop(uid, None)
        for uid in set(self._unschedulable) - live:
            self._unschedulable.pop(uid, None)

    def _allocate_ip(self, pod: Obj) -> str:
        uid = str(pod["metadata"]["uid"])
        with self._lock:
            used = set(self._ips.values())
            previous = str((pod.get("status") or {}).get("podIP") or "")
            if previous.startswith(self.ip_prefix + ".") and previous not in used:
                self._ips[uid] = previous
                return previous
            n = 0
            while True:
                n += 1
                ip = f"{self.ip_prefix}.{n // 250}.{n % 250 + 2}"
                if ip not in used:
                    self._ips[uid] = ip
                    return ip

    def _fit_problem(self, pod: Obj) -> str | None:
        """Why the scheduler would find no node for the Pod, in its words; None when this node fits."""
        spec = pod.get("spec") or {}
        namespace = str(pod["metadata"]["namespace"])
        # The volume-binding check runs before the resource filters, so a missing claim is reported first.
        for vol in spec.get("volumes") or []:
            claim = (vol.get("persistentVolumeClaim") or {}).get("claimName")
            if claim and self.api.get(PVC, namespace, str(claim)) is None:
                return f'0/1 nodes are available: 1 persistentvolumeclaim "{claim}" not found.'
        gpu = requests_gpu(pod)
        if gpu:
            return f"0/1 nodes are available: 1 Insufficient {gpu}."
        node_labels = {
            "kubernetes.io/hostname": self.config.name,
            "kubernetes.io/os": "linux",
            **self.config.labels,
        }
        selector = spec.get("nodeSelector") or {}
        if any(node_labels.get(k) != v for k, v in selector.items() if k != "kubernetes.io/arch"):
            return "0/1 nodes are available: 1 node(s) didn't match node selector."
        return None

    def _schedule(self, pod: Obj) -> None:
        meta = pod["metadata"]
        spec = pod.get("spec") or {}
        uid = str(meta["uid"])
        if (spec.get("schedulerName") or "default-scheduler") != "default-scheduler":
            return
        reported, retry_at = self._unschedulable.get(uid, ("", 0.0))
        if time.monotonic() < retry_at:
            return
        problem = self._fit_problem(pod)
        ns, name = str(meta["namespace"]), str(meta["name"])
        if problem is not None:
            self._unschedulable[uid] = (problem, time.monotonic() + RESCHEDULE_S)
            if problem == reported:
                return
            unscheduled = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                           "message": problem, "lastTransitionTime": now_rfc3339(), "lastProbeTime": None}  # fmt: skip
            status = {"status": {"phase": "Pending", "conditions": [unscheduled]}}
            with contextlib.suppress(ApiError):
                self.api.patch(POD, ns, name, status, "status", strategic=True)
            self.record_event(pod, "Warning", "FailedScheduling", problem, component="default-scheduler")
            return
        self._unschedulable.pop(uid, None)
        binding = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": {"name": name, "namespace": ns, "uid": uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": self.config.name},
        }
        try:
            self.api.create(POD, ns, binding, subresource_of=name)
        except ApiError as err:
            if err.status not in (404, 409):
                log.warning("binding %s/%s failed: %s", ns, name, err)
            return
        self.record_event(
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {ns}/{name} to {self.config.name}",
            component="default-scheduler",
        )
