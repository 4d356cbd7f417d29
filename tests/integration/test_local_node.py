"""The local node against the real API server: Pods run as local processes, with status, probes and deletion."""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tests.integration.local_node_support import (
    IMAGE,
    deployment_manifest,
    in_phase,
    make_claim,
    pod_manifest,
    read_pod,
    running_node,
)
from tuneops.local.controlplane import ControlPlane
from tuneops.local.node import LocalNode
from tuneops.local.proxy import ServiceProxy


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def node(control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    with running_node(control_plane, tmp_path_factory.mktemp("node")) as n:
        yield n


@pytest.fixture(scope="module")
def proxy(node: LocalNode) -> Iterator[ServiceProxy]:
    p = ServiceProxy(node)
    p.start()
    try:
        yield p
    finally:
        p.stop()


@pytest.fixture
def core(kube_api: Any) -> client.CoreV1Api:
    return client.CoreV1Api(kube_api)


def _gone(core: client.CoreV1Api, ns: str, name: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            core.read_namespaced_pod(name, ns)
        except client.ApiException as exc:
            return exc.status == 404
        return False

    return check


def test_pod_runs_with_env_volumes_and_reports_termination_message(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    core.create_namespaced_secret(
        namespace, {"metadata": {"name": "creds"}, "stringData": {"token": "s3cret"}}
    )
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}
    )
    script = """
        import json, os, pathlib
        msg = {
            "token": os.environ["TOKEN"],
            "pod": os.environ["POD_NAME"],
            "ip": os.environ["POD_IP"],
            "cpus": os.environ["CPUS"],
            "greeting": pathlib.Path("/etc/settings/greeting").read_text(),
            "data_dir": os.environ["DATA_DIR"],
        }
        pathlib.Path("/dev/termination-log").write_text(json.dumps(msg))
        raise SystemExit(3)
    """
    pod = pod_manifest(
        "worker",
        script,
        container={
            "env": [
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                {"name": "CPUS", "valueFrom": {"resourceFieldRef": {"resource": "limits.cpu"}}},
                {"name": "DATA_DIR", "value": "/data/$(POD_NAME)"},
            ],
            "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}},
            "volumeMounts": [
                {"name": "settings", "mountPath": "/etc/settings"},
                {"name": "data", "mountPath": "/data"},
            ],
        },
        volumes=[
            {"name": "settings", "configMap": {"name": "settings"}},
            {"name": "data", "persistentVolumeClaim": {"claimName": "shared"}},
        ],
    )
    make_claim(core, namespace, "shared")
    core.create_namespaced_pod(namespace, pod)
    done = wait_until(in_phase(core, namespace, "worker", "Failed"), timeout=30, what="pod Failed")
    status = done["status"]
    assert done["spec"]["nodeName"] == "test-local-node"
    term = status["containerStatuses"][0]["state"]["terminated"]
    assert term["exitCode"] == 3
    assert term["reason"] == "Error"
    message = json.loads(term["message"])
    assert message["token"] == "s3cret"
    assert message["pod"] == "worker"
    assert message["ip"] == status["podIP"]
    assert status["podIP"].startswith(node.ip_prefix + ".")
    assert message["cpus"] == "2"  # 1500m rounded up, as a resourceFieldRef does
    assert message["greeting"] == "hello"
    # The container path /data/worker is the claim's folder on the host.
    assert message["data_dir"] == str(node.config.root / "pvc" / "shared" / "worker")
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Ready"] == "False" and conditions["Initialized"] == "True"


def test_job_completes_through_the_node_and_writes_to_itsmake_claim(
    node: LocalNode, kube_api: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    batch = client.BatchV1Api(kube_api)
    make_claim(client.CoreV1Api(kube_api), namespace, "results")
    script = """
        import pathlib, sys
        out = pathlib.Path(sys.argv[1])
        out.write_text("done")
        pathlib.Path("/dev/termination-log").write_text('{"ok": true}')
    """
    template = pod_manifest("job", script)
    template["spec"]["containers"][0]["args"] = ["/mnt/pvc/results/out.txt"]
    template["spec"]["containers"][0]["volumeMounts"] = [{"name": "results", "mountPath": "/mnt/pvc/results"}]
    template["spec"]["volumes"] = [{"name": "results", "persistentVolumeClaim": {"claimName": "results"}}]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "write"},
        "spec": {"backoffLimit": 0, "template": {"metadata": {}, "spec": template["spec"]}},
    }
    batch.create_namespaced_job(namespace, job)

    def complete() -> bool:
        st = batch.read_namespaced_job_status("write", namespace).status
        return any(c.type == "Complete" and c.status == "True" for c in st.conditions or [])

    wait_until(complete, timeout=60, what="Job Complete")
    assert (node.config.root / "pvc" / "results" / "out.txt").read_text() == "done"


def test_deployment_pods_get_own_addresses_become_ready_and_are_reachable(
    node: LocalNode,
    proxy: ServiceProxy,
    kube_api: Any,
    core: client.CoreV1Api,
    namespace: str,
    wait_until: Callable[..., Any],
) -> None:
    apps = client.AppsV1Api(kube_api)
    server = """
        import http.server, os, sys, time
        time.sleep(1.0)  # not ready at once: the readiness probe must wait for the server
        class H(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = os.environ["POD_NAME"].encode()
                self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
                self.wfile.write(body)
            def log_message(self, *a): pass
        host = sys.argv[sys.argv.index("--host") + 1]
        http.server.ThreadingHTTPServer((host, 8080), H).serve_forever()
    """
    container = {
        "name": "web",
        "image": IMAGE,
        "command": ["python3", "-c", textwrap.dedent(server)],
        "args": ["--host", "0.0.0.0"],
        "env": [{"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 1},
        "startupProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1, "failureThreshold": 30},
    }
    pod_spec = {"containers": [container], "terminationGracePeriodSeconds": 5}
    deployment = deployment_manifest("web", 2, pod_spec)
    apps.create_namespaced_deployment(namespace, deployment)
    core.create_namespaced_service(
        namespace,
        {
            "metadata": {"name": "web"},
            "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]},
        },
    )

    def ready() -> bool:
        d = apps.read_namespaced_deployment_status("web", namespace)
        return (d.status.ready_replicas or 0) == 2

    wait_until(ready, timeout=60, what="2 ready replicas")
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    ips = {p.status.pod_ip for p in pods}
    assert len(ips) == 2 and all(ip.startswith(node.ip_prefix + ".") for ip in ips)
    for p in pods:
        with urllib.request.urlopen(f"http://{p.status.pod_ip}:8080/", timeout=5) as resp:
            assert resp.read().decode() == p.metadata.name

    url = wait_until(lambda: proxy.url(namespace, "web"), timeout=10, what="proxy listener")
    seen = set()
    for _ in range(4):
        with urllib.request.urlopen(url + "/", timeout=5) as resp:
            seen.add(resp.read().decode())
    assert seen == {p.metadata.name for p in pods}  # round robin over both endpoints

    pids = [pid for w in node.workers() if w.namespace == namespace for pid in w.pids()]
    assert len(pids) == 2 and all(_alive(pid) for pid in pids)
    apps.delete_namespaced_deployment("web", namespace, propagation_policy="Foreground")
    for p in pods:
        wait_until(_gone(core, namespace, p.metadata.name), timeout=30, what=f"pod {p.metadata.name} deleted")
    wait_until(lambda: not any(_alive(pid) for pid in pids), timeout=10, what="processes stopped")


def test_deletion_sends_sigterm_then_sigkill_after_the_grace_period(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    polite = """
        import pathlib, signal, sys, time
        def bye(*_):
            pathlib.Path("/out/polite").write_text("got SIGTERM")
            sys.exit(0)
        signal.signal(signal.SIGTERM, bye)
        pathlib.Path("/out/polite-started").write_text("1")
        while True: time.sleep(0.1)
    """
    stubborn = """
        import pathlib, signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        pathlib.Path("/out/stubborn-started").write_text("1")
        while True: time.sleep(0.1)
    """
    mounts = {"volumeMounts": [{"name": "out", "mountPath": "/out"}]}
    volumes = [{"name": "out", "persistentVolumeClaim": {"claimName": f"out-{namespace}"}}]
    out = node.config.root / "pvc" / f"out-{namespace}"
    make_claim(core, namespace, f"out-{namespace}")
    for name, script in (("polite", polite), ("stubborn", stubborn)):
        core.create_namespaced_pod(
            namespace,
            pod_manifest(name, script, container=mounts, volumes=volumes, terminationGracePeriodSeconds=2),
        )
    for name in ("polite", "stubborn"):
        wait_until(lambda n=name: (out / f"{n}-started").exists(), timeout=30, what=f"{name} started")
    pids = {w.name: w.pids()[0] for w in node.workers() if w.namespace == namespace}
    started = time.monotonic()
    core.delete_namespaced_pod("polite", namespace)
    core.delete_namespaced_pod("stubborn", namespace)
    wait_until(_gone(core, namespace, "polite"), timeout=20, what="polite pod gone")
    wait_until(_gone(core, namespace, "stubborn"), timeout=20, what="stubborn pod gone")
    assert (out / "polite").read_text() == "got SIGTERM"
    assert time.monotonic() - started >= 1.5  # the stubborn one was given its grace period before SIGKILL
    assert not _alive(pids["polite"]) and not _alive(pids["stubborn"])


def test_restart_policies_and_backoff(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    # OnFailure: the first run fails, the restart (same emptyDir) succeeds.
    flaky = """
        import pathlib
        marker = pathlib.Path("/scratch/tried")
        if not marker.exists():
            marker.write_text("1")
            raise SystemExit(1)
    """
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "flaky",
            flaky,
            restartPolicy="OnFailure",
            container={"volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]},
            volumes=[{"name": "scratch", "emptyDir": {}}],
        ),
    )
    done = wait_until(in_phase(core, namespace, "flaky", "Succeeded"), timeout=30, what="flaky Succeeded")
    cs = done["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 1
    assert cs["lastState"]["terminated"]["exitCode"] == 1
    assert cs["state"]["terminated"]["exitCode"] == 0

    # Always: a container that keeps crashing is restarted with back-off and the Pod stays Running.
    core.create_namespaced_pod(
        namespace, pod_manifest("crash", "raise SystemExit(2)", restartPolicy="Always")
    )

    def crashing() -> bool:
        pod = read_pod(core, namespace, "crash")
        statuses = pod["status"].get("containerStatuses") or [{}]
        return pod["status"]["phase"] == "Running" and statuses[0].get("restartCount", 0) >= 2

    wait_until(crashing, timeout=30, what="crash loop")
    cs = read_pod(core, namespace, "crash")["status"]["containerStatuses"][0]
    assert cs["lastState"]["terminated"]["exitCode"] == 2


def test_init_containers_run_in_order_before_the_main_container(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    def step(n: int) -> dict[str, Any]:
        code = f"open('/work/log', 'a').write('init{n} ')"
        return {"name": f"init{n}", "image": IMAGE, "command": ["python3", "-c", code],
                "volumeMounts": [{"name": "work", "mountPath": "/work"}]}  # fmt: skip

    main = (
        "import pathlib; pathlib.Path('/dev/termination-log').write_text(open('/work/log').read() + 'main')"
    )
    pod = pod_manifest(
        "ordered",
        main,
        container={"volumeMounts": [{"name": "work", "mountPath": "/work"}]},
        initContainers=[step(1), step(2)],
        volumes=[{"name": "work", "emptyDir": {}}],
    )
    core.create_namespaced_pod(namespace, pod)
    done = wait_until(in_phase(core, namespace, "ordered", "Succeeded"), timeout=30, what="Succeeded")
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "init1 init2 main"
    assert [s["state"]["terminated"]["reason"] for s in done["status"]["initContainerStatuses"]] == [
        "Completed",
        "Completed",
    ]


def test_configmap_files_follow_updates(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "live"}, "data": {"value": "one"}})
    watcher = """
        import pathlib, time
        while pathlib.Path("/cfg/value").read_text() != "two":
            time.sleep(0.1)
        pathlib.Path("/dev/termination-log").write_text("saw two")
    """
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "watcher",
            watcher,
            container={"volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]},
            volumes=[{"name": "cfg", "configMap": {"name": "live"}}],
        ),
    )
    wait_until(in_phase(core, namespace, "watcher", "Running"), timeout=30, what="watcher running")
    core.patch_namespaced_config_map("live", namespace, {"data": {"value": "two"}})
    done = wait_until(
        in_phase(core, namespace, "watcher", "Succeeded"), timeout=30, what="watcher saw update"
    )
    assert done["status"]["containerStatuses"][0]["state"]["terminated"]["message"] == "saw two"


def test_liveness_failure_restarts_the_container(
    node: LocalNode, core: client.CoreV1Api, namespace: str, wait_until: Callable[..., Any]
) -> None:
    sleeper = "import time\nwhile True: time.sleep(1)"
    probe = {
        "exec": {"command": ["python3", "-c", "raise SystemExit(1)"]},
        "periodSeconds": 1,
        "failureThreshold": 2,
    }
    core.create_namespaced_pod(
        namespace,
        pod_manifest(
            "unhealthy",
            sleeper,
            restartPolicy="Always",
            container={"livenessProbe": probe},
            terminationGracePeriodSeconds=1,
        ),
    )

    def restarted() -> Any:
        st = read_pod(core, namespace, "unhealthy")["status"].get("containerStatuses") or [{}]
        return st[0].get("restartCount", 0) >= 1 and st[0]

    status = wait_until(restarted, timeout=40, what="restart after failed liveness probe")
    assert status["lastState"]["terminated"]["exitCode"] == 128 + signal.SIGTERM
