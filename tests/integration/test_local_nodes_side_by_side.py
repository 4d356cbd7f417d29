"""Two local clusters on one machine (the demo left running, the test bed started beside it) serve side by side."""

from __future__ import annotations

import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.integration.local_node_support import deployment_manifest, pod_manifest, running_node
from tuneops.local.controlplane import ControlPlane
from tuneops.local.node import NODE_NAME, LocalNode
from tuneops.local.proxy import ServiceProxy

# Same server, same port, as two clusters running the same InferenceService would have.
SERVER = """
    import http.server, os, sys
    class Hello(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = os.environ["CLUSTER"].encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
    http.server.HTTPServer((os.environ["HOST"], 8000), Hello).serve_forever()
"""


@pytest.fixture(scope="module")
def second_control_plane() -> Iterator[ControlPlane]:
    cp = ControlPlane(
        data_dir=Path(tempfile.mkdtemp(prefix="tuneops-it2-")), keep_data=False, die_with_parent=True
    )
    cp.start()
    try:
        yield cp
    finally:
        cp.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return str(resp.read().decode())


def test_two_clusters_serve_the_same_workload_at_their_own_addresses(
    control_plane: ControlPlane,
    second_control_plane: ControlPlane,
    tmp_path: Path,
    wait_until: Callable[..., Any],
) -> None:
    assert control_plane.port != second_control_plane.port
    with ExitStack() as stack:
        clusters: dict[str, tuple[LocalNode, ServiceProxy, client.CoreV1Api]] = {}
        for label, cp in (("demo", second_control_plane), ("tests", control_plane)):
            # Both nodes carry the default name, as `make demo` and the e2e suite's cluster do.
            node = stack.enter_context(running_node(cp, tmp_path / label, name=NODE_NAME))
            proxy = ServiceProxy(node)
            proxy.start()
            stack.callback(proxy.stop)
            api = config.new_client_from_config(config_file=str(cp.kubeconfig_path))
            stack.callback(api.close)
            clusters[label] = (node, proxy, client.CoreV1Api(api))

        for label, (_, _, core) in clusters.items():
            pod = pod_manifest("server", SERVER, restartPolicy="Always")
            pod["spec"]["containers"][0]["env"] = [
                {"name": "CLUSTER", "value": label},
                {"name": "HOST", "value": "0.0.0.0"},
            ]
            apps = client.AppsV1Api(core.api_client)
            apps.create_namespaced_deployment("default", deployment_manifest("server", 1, pod["spec"]))
            core.create_namespaced_service(
                "default",
                {
                    "metadata": {"name": "server"},
                    "spec": {"selector": {"app": "server"}, "ports": [{"port": 8000}]},
                },
            )

        answers: dict[str, str] = {}
        for label, (node, proxy, core) in clusters.items():

            def serving(core: client.CoreV1Api = core, label: str = label) -> str | None:
                pods = core.list_namespaced_pod("default", label_selector="app=server").items
                ip = pods[0].status.pod_ip if pods else None
                return ip if ip and _get(f"http://{ip}:8000/") == label else None

            ip = wait_until(serving, timeout=60, what=f"{label} server answering on its Pod address")
            assert ip.startswith(node.ip_prefix + ".")
            answers[label] = ip
            url = wait_until(lambda proxy=proxy: proxy.url("default", "server"), timeout=10, what="proxy")
            assert _get(url + "/") == label

        demo_node, tests_node = clusters["demo"][0], clusters["tests"][0]
        assert demo_node.ip_prefix != tests_node.ip_prefix
        assert demo_node.memory_dir != tests_node.memory_dir
        assert answers["demo"] != answers["tests"]
