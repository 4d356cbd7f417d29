"""What bench/scale.py plays and watches besides the operator: list+watch streams, the kubelet, the status observer.

Everything here talks to the API server as the admin user, so the audit log keeps it apart from the operator's
requests. Objects stay raw JSON (no client models): at 3,000 resources, model deserialization would cost the bench
more CPU than the operator it measures.

The observer runs in a process of its own (`python -m bench._scalebed observe ...`): the time it records for an
owner's status update is when the watch event reached it, and a busy bench process (the kubelet's writes, the
children's watches) must not delay that reading.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import Any

from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[1]
GROUP, VERSION = "tuneops.io", "v1alpha1"
PLURALS = {"finetunedmodels": "FineTunedModel", "quantizationjobs": "QuantizationJob",
           "inferenceservices": "InferenceService"}  # fmt: skip
COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"
OWNER = "tuneops.io/owner"
JOB_NAME = "job-name"
MERGE_PATCH = "application/merge-patch+json"
CHILD_KINDS = {"jobs": "Job", "deployments": "Deployment", "services": "Service"}
Obj = dict[str, Any]


def admin_client(kubeconfig: Path, pool: int = 16) -> Any:
    """A kubernetes.client.ApiClient as the admin (typed Any: the bench calls it with raw JSON bodies)."""
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)  # type: ignore[no-untyped-call]
    cfg.connection_pool_maxsize = pool  # read when the client builds its pool: set it first
    return client.ApiClient(cfg)


def consume(resp: Any) -> None:
    """Read a raw response to its end, so its connection goes back to the pool clean."""
    resp.read()
    resp.release_conn()


def _lines(resp: Any) -> Iterator[bytes]:
    """The lines of a chunked watch response, as they arrive."""
    buf = b""
    for chunk in resp.stream(amt=None, decode_content=False):
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                yield line
    if buf.strip():
        yield buf


class Stream(threading.Thread):
    """Lists one collection, then watches it from that resourceVersion; `on_event(type, obj)` runs on this thread.

    A watch the server ends is resumed from the last resourceVersion seen; the collection is listed again only when
    that version is gone (410). `synced` is set once the first list has been handed over.
    """

    def __init__(self, name: str, call: Callable[..., Any], on_event: Callable[[str, Obj], None]) -> None:
        super().__init__(name=f"stream-{name}", daemon=True)
        self.call = call
        self.on_event = on_event
        self.synced = threading.Event()
        self.stopping = threading.Event()
        self.failures = 0

    def run(self) -> None:
        rv: str | None = None
        while not self.stopping.is_set():
            try:
                if rv is None:
                    listed = self.call(_preload_content=False, _request_timeout=120)
                    body = json.loads(listed.data)
                    listed.release_conn()
                    for obj in body.get("items") or []:
                        self.on_event("ADDED", obj)
                    rv = str(body["metadata"]["resourceVersion"])
                    self.synced.set()
                resp = self.call(watch=True, resource_version=rv, timeout_seconds=240, allow_watch_bookmarks=True,
                                 _preload_content=False, _request_timeout=(10, 300))  # fmt: skip
                try:
                    for line in _lines(resp):
                        event = json.loads(line)
                        kind, obj = event["type"], event["object"]
                        if kind == "ERROR":
                            if obj.get("code") == 410:
                                rv = None
                            break
                        rv = str(obj["metadata"]["resourceVersion"])
                        if kind != "BOOKMARK":
                            self.on_event(kind, obj)
                        if self.stopping.is_set():
                            return
                finally:
                    resp.close()  # a stream left mid-way must not go back to the pool
                    resp.release_conn()
            except client.ApiException as exc:
                if exc.status == 410:
                    rv = None
                self._backoff()
            except Exception:
                self._backoff()

    def _backoff(self) -> None:
        if not self.stopping.is_set():
            self.failures += 1
            time.sleep(0.5)

    def stop(self) -> None:
        self.stopping.set()


def namespaced_streams(api: client.ApiClient, namespace: str) -> dict[str, Callable[..., Any]]:
    """The list calls of the collections the bench watches, by name."""
    core, batch, apps = client.CoreV1Api(api), client.BatchV1Api(api), client.AppsV1Api(api)
    custom = client.CustomObjectsApi(api)
    calls: dict[str, Callable[..., Any]] = {
        "pods": partial(core.list_namespaced_pod, namespace),
        "jobs": partial(batch.list_namespaced_job, namespace),
        "deployments": partial(apps.list_namespaced_deployment, namespace),
        "services": partial(core.list_namespaced_service, namespace),
    }
    for plural in PLURALS:
        calls[plural] = partial(custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural)
    return calls


class Presence:
    """When each child was first seen: (kind, owner name, component) -> monotonic time."""

    def __init__(self, api: client.ApiClient, namespace: str) -> None:
        calls = namespaced_streams(api, namespace)
        self.first_seen: dict[tuple[str, str, str], float] = {}
        # When the Job controller first counted a Job's Pod as succeeded or failed: the share of the latency that
        # is the controller's, not the operator's.
        self.job_finished: dict[str, float] = {}
        self._lock = threading.Lock()
        self.streams = [
            Stream(name, calls[name], partial(self._seen, kind)) for name, kind in CHILD_KINDS.items()
        ]

    def _seen(self, kind: str, event: str, obj: Obj) -> None:
        t = time.monotonic()
        labels = obj["metadata"].get("labels") or {}
        key = (kind, labels.get(INSTANCE, ""), labels.get(COMPONENT, ""))
        status = obj.get("status") or {}
        with self._lock:
            self.first_seen.setdefault(key, t)
            if kind == "Job" and (status.get("succeeded") or status.get("failed")):
                self.job_finished.setdefault(obj["metadata"]["name"], t)

    def keys(self) -> set[tuple[str, str, str]]:
        with self._lock:
            return set(self.first_seen)

    def __enter__(self) -> Presence:
        for s in self.streams:
            s.start()
        for s in self.streams:
            if not s.synced.wait(60):
                raise TimeoutError(f"{s.name}: the first list did not complete in 60s")
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.streams:
            s.stop()


@dataclass
class Completion:
    """A Job Pod the kubelet terminated: `sent` is when its terminal status was written (before the request)."""

    pod: str
    job: str
    owner_uid: str
    owner_name: str
    sent: float


class Kubelet:
    """Plays kubelet: each Job Pod succeeds with `result(owner name)` as its termination message, each serving Pod
    turns Running and Ready at `pod_ip`. Driven by a watch on the namespace's Pods; writes from a thread pool, each
    Pod once. `last_write` is when the latest of those writes returned."""

    def __init__(self, api: client.ApiClient, namespace: str, result: Callable[[str], Obj], pod_ip: str,
                 workers: int = 8) -> None:  # fmt: skip
        self.core: Any = client.CoreV1Api(api)
        self.namespace = namespace
        self.result = result
        self.pod_ip = pod_ip
        self.completions: list[Completion] = []
        self.serving_ready = 0
        self.errors = 0
        self.last_write = 0.0
        self._handled: set[str] = set()
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="kubelet")
        self.stream = Stream("kubelet-pods", namespaced_streams(api, namespace)["pods"], self._on_pod)

    def _on_pod(self, event: str, pod: Obj) -> None:
        if event == "DELETED":
            return
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        phase = (pod.get("status") or {}).get("phase")
        if JOB_NAME in labels:
            if phase not in (None, "Pending", "Running"):
                return
            work: Callable[[Obj], None] = self._finish
        elif labels.get(COMPONENT) == "server":
            if phase == "Running":
                return
            work = self._ready
        else:
            return
        with self._lock:
            if meta["uid"] in self._handled:
                return
            self._handled.add(meta["uid"])
        self._pool.submit(self._guarded, work, pod)

    def _guarded(self, work: Callable[[Obj], None], pod: Obj) -> None:
        try:
            work(pod)
        except Exception:
            with self._lock:
                self.errors += 1

    def _patch(self, pod: Obj, status: Obj) -> None:
        consume(self.core.patch_namespaced_pod_status(pod["metadata"]["name"], self.namespace, {"status": status},
                                                      _content_type=MERGE_PATCH, _preload_content=False))  # fmt: skip

    def _finish(self, pod: Obj) -> None:
        labels = pod["metadata"].get("labels") or {}
        container = pod["spec"]["containers"][0]
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
                      "message": json.dumps(self.result(labels.get(INSTANCE, "")))}  # fmt: skip
        status = {"phase": "Succeeded", "containerStatuses": [
            {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
             "restartCount": 0, "state": {"terminated": terminated}}]}  # fmt: skip
        sent = time.monotonic()
        self._patch(pod, status)
        done = time.monotonic()
        with self._lock:
            self.completions.append(
                Completion(
                    pod["metadata"]["name"],
                    labels[JOB_NAME],
                    labels.get(OWNER, ""),
                    labels.get(INSTANCE, ""),
                    sent,
                )
            )
            self.last_write = max(self.last_write, done)

    def _ready(self, pod: Obj) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        status = {"phase": "Running", "podIP": self.pod_ip,
                  "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                                 for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                  "containerStatuses": [{"name": c["name"], "image": c["image"], "imageID": "", "ready": True,
                                         "restartCount": 0, "started": True, "state": {"running": {"startedAt": now}}}
                                        for c in pod["spec"]["containers"]]}  # fmt: skip
        self._patch(pod, status)
        done = time.monotonic()
        with self._lock:
            self.serving_ready += 1
            self.last_write = max(self.last_write, done)

    def __enter__(self) -> Kubelet:
        self.stream.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)


# ----- the status observer (its own process) ---------------------------------------------------------------------


def is_ready(obj: Obj) -> bool:
    """Ready=True (Succeeded) for the current generation: what `kubectl wait` and Argo CD would call done."""
    status = obj.get("status") or {}
    if status.get("observedGeneration") != obj["metadata"].get("generation"):
        return False
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    return bool(ready and ready.get("status") == "True" and ready.get("reason") == "Succeeded")


def ended_jobs(obj: Obj) -> frozenset[str]:
    """The Jobs the resource's status records as finished (status.steps[].state Succeeded or Failed)."""
    steps = (obj.get("status") or {}).get("steps") or []
    return frozenset(str(s.get("job")) for s in steps if s.get("state") in ("Succeeded", "Failed"))


def observe(kubeconfig: Path, namespace: str, out: Path) -> None:
    """Watch the three kinds and append a JSON line per fact: a resource's readiness changed, its status recorded a
    Job's end, a stream's first list is done. Runs until killed."""
    api = admin_client(kubeconfig, pool=4)
    calls = namespaced_streams(api, namespace)
    seen: dict[str, tuple[bool, frozenset[str]]] = {}
    lock = threading.Lock()
    f = out.open("a", buffering=1)

    def write(fact: Obj) -> None:
        f.write(json.dumps(fact, separators=(",", ":")) + "\n")

    def on_event(kind: str, event: str, obj: Obj) -> None:
        t = time.monotonic()
        if event == "DELETED":
            return
        uid = obj["metadata"]["uid"]
        ready, ended = is_ready(obj), ended_jobs(obj)
        with lock:
            before = seen.get(uid)
            if before is None or before[0] != ready:
                write({"t": t, "uid": uid, "name": f"{kind}/{obj['metadata']['name']}", "ready": ready})
            for job in sorted(ended - (before[1] if before else frozenset())):
                write({"t": t, "uid": uid, "job": job})
            seen[uid] = (ready, ended)

    streams = [Stream(plural, calls[plural], partial(on_event, kind)) for plural, kind in PLURALS.items()]
    for s in streams:
        s.start()
    for s in streams:
        s.synced.wait()
        with lock:
            write({"synced": s.name})
    while True:
        time.sleep(3600)


class Observer:
    """Starts the observer process and reads what it wrote: readiness per resource, when each Job's end showed."""

    def __init__(self, kubeconfig: Path, namespace: str, out: Path, log: Path) -> None:
        self.kubeconfig, self.namespace, self.out, self.log = kubeconfig, namespace, out, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.ready: dict[str, bool] = {}
        self.names: dict[str, str] = {}
        self.ready_at: dict[str, float] = {}
        self.ended: dict[tuple[str, str], float] = {}
        self.synced: set[str] = set()
        self._offset = 0

    def __enter__(self) -> Observer:
        self.out.write_bytes(b"")
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bench._scalebed", "observe", str(self.kubeconfig), self.namespace,
                 str(self.out)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        deadline = time.monotonic() + 60
        while len(self.poll().synced) < len(PLURALS):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the status observer did not start; see {self.log}")
            time.sleep(0.2)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def poll(self) -> Observer:
        """Take in the complete lines written since the last call."""
        with self.out.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            fact = json.loads(line)
            if "synced" in fact:
                self.synced.add(fact["synced"])
            elif "ready" in fact:
                self.ready[fact["uid"]] = fact["ready"]
                self.names[fact["uid"]] = fact["name"]
                if fact["ready"]:
                    self.ready_at[fact["uid"]] = fact["t"]
            else:
                self.ended.setdefault((fact["uid"], fact["job"]), fact["t"])
        return self

    def ready_count(self) -> int:
        return sum(self.poll().ready.values())

    def last_ready_at(self) -> float:
        """When the last resource turned Ready (each resource's latest transition to Ready)."""
        return max((self.ready_at[u] for u, r in self.ready.items() if r), default=0.0)

    def not_ready(self) -> list[str]:
        return sorted(self.names[u] for u, r in self.poll().ready.items() if not r)


if __name__ == "__main__":
    if len(sys.argv) != 5 or sys.argv[1] != "observe":
        sys.exit("usage: python -m bench._scalebed observe KUBECONFIG NAMESPACE OUT")
    observe(Path(sys.argv[2]), sys.argv[3], Path(sys.argv[4]))
