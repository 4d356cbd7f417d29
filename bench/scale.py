"""Scale benchmark: hundreds of resources on the local API server with the operator as a subprocess.

What "all children exist" means, per kind (the first thing the operator creates for each; later steps wait
for Pods that only a kubelet could run):
  FineTunedModel   its inspect Job                 (merge disabled: inspecting is the whole pipeline)
  QuantizationJob  its quantize Job                (source by URI, so nothing upstream to wait for)
  InferenceService its Deployment and its Service  (one vLLM service with many adapters, the rest llama.cpp)
Then the bench plays kubelet (every Job Pod succeeds, every serving Pod turns Ready, the vLLM Pod answers
/v1/models from a small in-process server), waits until every resource is Ready, and counts the operator's
writes over several resync periods: a settled operator writes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from kubernetes import client, config

from tuneops import toolpaths
from tuneops.local.controlplane import AuditLog, ControlPlane
from tuneops.render.serving.types import PORT

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.integration.operator_bed import OperatorProcess  # noqa: E402

API = "tuneops.io/v1alpha1"
OPERATOR_USER = "tuneops-operator"
TARGET_CHILDREN_S = 60.0
TARGET_RSS_MB = 250.0
TARGET_STEADY_WRITES = 0.0
COMPONENT = "app.kubernetes.io/component"
INSTANCE = "app.kubernetes.io/instance"


@dataclass
class ScaleResult:
    finetunedmodels: int
    quantizationjobs: int
    inferenceservices: int
    adapters: int
    create_s: float
    children_s: float
    ready_s: float
    requests_to_children: int
    requests_to_ready: int
    steady_window_s: float
    steady_writes: int
    steady_reads: int
    peak_rss_mb: float
    errors_logged: int

    @property
    def resources(self) -> int:
        return self.finetunedmodels + self.quantizationjobs + self.inferenceservices

    @property
    def steady_writes_per_min(self) -> float:
        return self.steady_writes * 60.0 / self.steady_window_s if self.steady_window_s else 0.0


# The fake vLLM Pod answers where the operator calls a real one: the Pod's IP and the container port.
# A loopback address of its own keeps it clear of anything else on the machine.
FAKE_POD_IP = f"127.77.{os.getpid() % 250 + 1}.1"


def manifests(n_ftm: int, n_qjob: int, n_isvc: int, adapters: int) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(n_ftm):
        out.append({"apiVersion": API, "kind": "FineTunedModel", "metadata": {"name": f"ftm-{i}"},
                    "spec": {"baseModel": {"uri": "pvc://models/base"}, "adapter": {"uri": f"pvc://adapters/a{i}"},
                             "merge": {"enabled": False}}})  # fmt: skip
    for i in range(n_qjob):
        out.append({"apiVersion": API, "kind": "QuantizationJob", "metadata": {"name": f"qjob-{i}"},
                    "spec": {"source": {"uri": f"pvc://models/merged-{i}"}, "method": "gguf",
                             "gguf": {"quantTypes": ["Q4_K_M"]}}})  # fmt: skip
    if n_isvc:
        lora = [{"name": f"lora-{j}", "uri": f"pvc://adapters/lora-{j}"} for j in range(adapters)]
        out.append({"apiVersion": API, "kind": "InferenceService", "metadata": {"name": "isvc-lora"},
                    "spec": {"model": {"uri": "pvc://models/base"},
                             "lora": {"adapters": lora, "maxLoras": 8}}})  # fmt: skip
    for i in range(n_isvc - 1):
        out.append({"apiVersion": API, "kind": "InferenceService", "metadata": {"name": f"isvc-{i}"},
                    "spec": {"runtime": "llamacpp", "model": {"uri": f"pvc://models/m{i}/model-Q4_K_M.gguf"}}})  # fmt: skip
    return out


class FakeVllm:
    """GET /v1/models and the runtime LoRA API of a vLLM server, in memory (plays the 100-adapter Pod)."""

    def __init__(self, port: int = PORT, host: str = FAKE_POD_IP) -> None:
        self.adapters: dict[str, str] = {}
        state = self.adapters

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                data = [{"id": "base", "object": "model", "root": "/models/base", "parent": None}]
                data += [
                    {"id": n, "object": "model", "root": p, "parent": "base"}
                    for n, p in sorted(state.items())
                ]
                self._reply(200, {"object": "list", "data": data})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.endswith("/load_lora_adapter"):
                    state[body["lora_name"]] = body["lora_path"]
                elif self.path.endswith("/unload_lora_adapter"):
                    state.pop(body["lora_name"], None)
                self._reply(200, {"ok": True})

            def _reply(self, status: int, body: Any) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeVllm:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def install_crds(kubeconfig: Path) -> None:
    crds = subprocess.run([sys.executable, "-m", "tuneops.cli", "crds", "--no-cel", "-o", "-"],
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    kubectl = [str(toolpaths.kubectl_binary()), f"--kubeconfig={kubeconfig}"]
    subprocess.run([*kubectl, "apply", "-f", "-"], input=crds, text=True, check=True, capture_output=True)
    for crd in ("finetunedmodels", "quantizationjobs", "inferenceservices"):
        subprocess.run([*kubectl, "wait", "--for=condition=Established", f"crd/{crd}.tuneops.io", "--timeout=60s"],
                       check=True, capture_output=True)  # fmt: skip


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.5) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


class Bed:
    """Reads and kubelet play against one namespace through the admin client."""

    def __init__(self, api: client.ApiClient, ns: str) -> None:
        self.ns = ns
        self.core = client.CoreV1Api(api)
        self.batch = client.BatchV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def children(self) -> set[tuple[str, str, str]]:
        """(kind, owner name, component) of what exists."""
        out: set[tuple[str, str, str]] = set()
        for kind, items in (("Job", self.batch.list_namespaced_job(self.ns).items),
                            ("Deployment", self.apps.list_namespaced_deployment(self.ns).items),
                            ("Service", self.core.list_namespaced_service(self.ns).items)):  # fmt: skip
            for obj in items:
                labels = obj.metadata.labels or {}
                out.add((kind, labels.get(INSTANCE, ""), labels.get(COMPONENT, "")))
        return out

    def not_ready(self) -> list[str]:
        out = []
        for plural in ("finetunedmodels", "quantizationjobs", "inferenceservices"):
            for obj in self.custom.list_namespaced_custom_object("tuneops.io", "v1alpha1", self.ns, plural)[
                "items"
            ]:
                status = obj.get("status") or {}
                ready = next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), None)
                if (not ready or ready["status"] != "True" or ready["reason"] != "Succeeded"
                        or status.get("observedGeneration") != obj["metadata"]["generation"]):  # fmt: skip
                    out.append(
                        f"{plural}/{obj['metadata']['name']}: {ready and (ready['reason'], ready['message'])}"
                    )
        return out

    def finish_job_pods(self, results: Callable[[str], dict[str, Any]]) -> int:
        """Every pending Job Pod terminates successfully with the result its owner's step would report."""
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        todo = [p for p in self.core.list_namespaced_pod(self.ns, label_selector="job-name").items
                if p.status.phase in (None, "Pending", "Running")]  # fmt: skip

        def finish(pod: Any) -> None:
            c = pod.spec.containers[0]
            term = {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
                    "message": json.dumps(results(pod.metadata.labels.get(INSTANCE, "")))}  # fmt: skip
            status = {"phase": "Succeeded", "containerStatuses": [
                {"name": c.name, "image": c.image, "imageID": "", "ready": False, "restartCount": 0,
                 "state": {"terminated": term}}]}  # fmt: skip
            self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, {"status": status})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(finish, todo))
        return len(todo)

    def ready_serving_pods(self) -> int:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        todo = [p for p in self.core.list_namespaced_pod(self.ns, label_selector=f"{COMPONENT}=server").items
                if p.status.phase != "Running"]  # fmt: skip

        def ready(pod: Any) -> None:
            status = {"phase": "Running", "podIP": FAKE_POD_IP,
                      "conditions": [{"type": t, "status": "True", "lastTransitionTime": now}
                                     for t in ("PodScheduled", "Initialized", "ContainersReady", "Ready")],
                      "containerStatuses": [{"name": c.name, "image": c.image, "imageID": "", "ready": True,
                                             "restartCount": 0, "started": True, "state": {"running": {"startedAt": now}}}
                                            for c in pod.spec.containers]}  # fmt: skip
            self.core.patch_namespaced_pod_status(pod.metadata.name, self.ns, {"status": status})

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(ready, todo))
        return len(todo)


def step_result(owner: str) -> dict[str, Any]:
    if owner.startswith("qjob-"):
        return {"artifact": {"uri": f"pvc://artifacts/{owner}", "digest": f"sha256:{owner}", "sizeBytes": 1,
                             "format": "gguf", "files": ["model-Q4_K_M.gguf"]}}  # fmt: skip
    return {"adapter": {"type": "LORA", "rank": 8, "alpha": 16, "targetModules": ["q_proj", "v_proj"],
                        "baseModelName": "base", "digest": f"sha256:{owner}"}, "problems": []}  # fmt: skip


def expected_children(docs: Iterable[dict[str, Any]]) -> set[tuple[str, str, str]]:
    out: set[tuple[str, str, str]] = set()
    for d in docs:
        name = d["metadata"]["name"]
        if d["kind"] == "FineTunedModel":
            out.add(("Job", name, "inspect"))
        elif d["kind"] == "QuantizationJob":
            out.add(("Job", name, "quantize"))
        else:
            out |= {("Deployment", name, "server"), ("Service", name, "server")}
    return out


def measure(
    cp: ControlPlane,
    operator_kubeconfig: Path,
    namespace: str,
    *,
    n_ftm: int,
    n_qjob: int,
    n_isvc: int,
    adapters: int,
    log_dir: Path,
    resync_s: float = 20.0,
    poll_s: float = 5.0,
    steady_periods: int = 3,
    timeout_s: float = 600.0,
) -> ScaleResult:
    """Run one scale round in `namespace` (created here) against a running control plane with CRDs installed."""
    api = config.new_client_from_config(config_file=str(cp.kubeconfig_path))
    api.configuration.connection_pool_maxsize = 16
    bed = Bed(api, namespace)
    audit: AuditLog = cp.audit_log
    bed.core.create_namespace({"metadata": {"name": namespace}})
    docs = manifests(n_ftm, n_qjob, n_isvc, adapters)
    want = expected_children(docs)
    op = OperatorProcess(operator_kubeconfig, log_dir / "operator.log", resync=resync_s,
                         extra_env={"TUNEOPS_POLL_SECONDS": str(poll_s)})  # fmt: skip
    op.start()
    try:
        with FakeVllm():
            time.sleep(3)  # the operator's startup (imports, discovery, watches) is not part of the figure
            mark = audit.mark()
            started = time.monotonic()

            def create(doc: dict[str, Any]) -> None:
                plural = {"FineTunedModel": "finetunedmodels", "QuantizationJob": "quantizationjobs",
                          "InferenceService": "inferenceservices"}[doc["kind"]]  # fmt: skip
                bed.custom.create_namespaced_custom_object("tuneops.io", "v1alpha1", namespace, plural, doc)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(create, docs))
            created = time.monotonic()
            children_at = wait(lambda: want <= bed.children(), timeout_s, "all children")
            requests_to_children = len(audit.select(mark, user=OPERATOR_USER, namespace=namespace))

            # Play kubelet until every resource is Ready.
            def settled() -> bool:
                bed.finish_job_pods(step_result)
                bed.ready_serving_pods()
                return not bed.not_ready()

            try:
                ready_at = wait(settled, timeout_s, "every resource Ready", interval=2.0)
            except TimeoutError as err:
                raise TimeoutError(f"{err}: {bed.not_ready()[:5]}") from None
            requests_to_ready = len(audit.select(mark, user=OPERATOR_USER, namespace=namespace))

            time.sleep(poll_s + 2)  # the last status writes of the final pass land
            steady = audit.mark()
            window_start = time.monotonic()
            time.sleep(resync_s * steady_periods)
            window = time.monotonic() - window_start
            writes = audit.select(steady, user=OPERATOR_USER, namespace=namespace, writes_only=True)
            reads = audit.select(steady, user=OPERATOR_USER, namespace=namespace, verbs=["get", "list"])
            assert op.proc is not None
            rss = peak_rss_mb(op.proc.pid)
            errors = op.log_path.read_text(errors="replace").count("reconcile failed")
    finally:
        op.stop()
        api.close()
    return ScaleResult(
        finetunedmodels=n_ftm, quantizationjobs=n_qjob, inferenceservices=n_isvc, adapters=adapters,
        create_s=created - started, children_s=children_at - started, ready_s=ready_at - started,
        requests_to_children=requests_to_children, requests_to_ready=requests_to_ready,
        steady_window_s=window, steady_writes=len(writes), steady_reads=len(reads), peak_rss_mb=rss,
        errors_logged=errors,
    )  # fmt: skip


def rows(r: ScaleResult) -> list[dict[str, Any]]:
    label = f"scale {r.finetunedmodels}/{r.quantizationjobs}/{r.inferenceservices} (one with {r.adapters} adapters)"
    per = r.resources or 1
    return [
        {"name": f"{label}: all children exist", "value": round(r.children_s, 1), "unit": "s",
         "baseline": None, "ratio": None, "target": f"<= {TARGET_CHILDREN_S:g} s"},
        {"name": f"{label}: every resource Ready (kubelet played by the bench)", "value": round(r.ready_s, 1),
         "unit": "s", "baseline": None, "ratio": None, "target": None},
        {"name": f"{label}: operator API requests per resource until children exist",
         "value": round(r.requests_to_children / per, 2), "unit": "req", "baseline": None, "ratio": None,
         "target": None},
        {"name": f"{label}: operator API requests per resource until Ready", "value": round(r.requests_to_ready / per, 2),
         "unit": "req", "baseline": None, "ratio": None, "target": None},
        {"name": f"{label}: steady-state writes ({r.steady_window_s:.0f} s window, {r.steady_reads} reads)",
         "value": round(r.steady_writes_per_min, 2), "unit": "writes/min", "baseline": None, "ratio": None,
         "target": f"<= {TARGET_STEADY_WRITES:g}"},
        {"name": f"{label}: operator peak RSS (VmHWM)", "value": round(r.peak_rss_mb, 1), "unit": "MB",
         "baseline": None, "ratio": None, "target": f"< {TARGET_RSS_MB:g} MB"},
    ]  # fmt: skip


def meets_targets(r: ScaleResult) -> list[str]:
    """The targets missed, as sentences (empty when all are met)."""
    missed = []
    if r.children_s > TARGET_CHILDREN_S:
        missed.append(f"children took {r.children_s:.1f}s (target {TARGET_CHILDREN_S:g}s)")
    if r.steady_writes_per_min > TARGET_STEADY_WRITES:
        missed.append(f"{r.steady_writes_per_min:.2f} writes/min in steady state (target 0)")
    if r.peak_rss_mb >= TARGET_RSS_MB:
        missed.append(f"peak RSS {r.peak_rss_mb:.0f} MB (target < {TARGET_RSS_MB:g} MB)")
    return missed


def run(n_ftm: int = 300, n_qjob: int = 300, n_isvc: int = 100, adapters: int = 100) -> list[dict[str, Any]]:
    """The full-count run of `make bench`: its own control plane, torn down afterwards."""
    shm = Path("/dev/shm")
    data = Path(
        tempfile.mkdtemp(prefix="tuneops-bench-scale-", dir=str(shm) if os.access(shm, os.W_OK) else None)
    )
    with ControlPlane(data_dir=data, keep_data=False, audit=True, users={OPERATOR_USER: []},
                      die_with_parent=True) as cp:  # fmt: skip
        install_crds(cp.kubeconfig_path)
        result = measure(cp, cp.kubeconfig_for(OPERATOR_USER), "scale", n_ftm=n_ftm, n_qjob=n_qjob,
                         n_isvc=n_isvc, adapters=adapters, log_dir=data)  # fmt: skip
    return rows(result)


if __name__ == "__main__":
    counts = [int(x) for x in sys.argv[1:5]] if len(sys.argv) > 1 else []
    for row in run(*counts):
        print(row)
