"""LoRAAdapters on the real API server, with the operator as a subprocess: teams attach adapters to a shared base
service from their own namespaces; the service's allowedAdapters decides, and both sides say what it decided.

One fake vLLM server plays the service's Pod (the test plays kubelet). The service allows namespaces labelled
team=nlp: an adapter from such a namespace is loaded into the running server; one from another namespace, and
one whose served name the service already uses, are refused with the reason on both sides; deleting an accepted
adapter unloads it.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.operator_bed import Cluster, OperatorProcess
from tests.integration.test_adapter_gate import gate_of, kubelet
from tests.security import vllm_fakes as fake
from tuneops.render.serving.types import PORT

_NET = os.getpid() % 250 + 1
IP = f"127.83.{_NET}.10"
SELECTOR = "app.kubernetes.io/instance=shared,app.kubernetes.io/component=server"
GROUP, VERSION = "tuneops.io", "v1alpha1"


@pytest.fixture
def team_namespaces(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """An allowed namespace (team=nlp) and one that is not."""
    suffix = secrets.token_hex(3)
    names = (f"nlp-{suffix}", f"other-{suffix}")
    cluster.core.create_namespace({"metadata": {"name": names[0], "labels": {"team": "nlp"}}})
    cluster.core.create_namespace({"metadata": {"name": names[1], "labels": {"team": "vision"}}})
    try:
        yield names
    finally:
        for n in names:
            cluster.core.delete_namespace(n)


def _adapter(name: str, namespace: str, service_ns: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "LoRAAdapter",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"serviceRef": {"name": "shared", "namespace": service_ns}, **spec},
    }


def _status(cluster: Cluster, kind_plural: str, namespace: str, name: str) -> dict[str, Any]:
    obj = cluster.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, kind_plural, name)
    return dict(obj.get("status") or {})


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return next((c for c in status.get("conditions") or [] if c["type"] == "Ready"), {})


def test_teams_attach_adapters_to_a_shared_service_as_it_allows(
    operator: OperatorProcess,
    cluster: Cluster,
    kubectl: Any,
    namespace: str,
    team_namespaces: tuple[str, str],
    wait_until: Callable[..., Any],
) -> None:
    nlp, other = team_namespaces
    svc = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "InferenceService",
        "metadata": {"name": "shared"},
        "spec": {
            "model": {"uri": "pvc://models/base"},
            "vllm": {"servedModelName": "base"},
            "lora": {
                "adapters": [{"name": "own", "uri": "pvc://adapters/own"}],
                "allowedAdapters": {"namespaces": {"from": "Selector", "selector": {"team": "nlp"}}},
            },
        },
    }
    kubectl.apply(svc, namespace=namespace)
    (pod,) = wait_until(
        lambda: (
            (items := cluster.core.list_namespaced_pod(namespace, label_selector=SELECTOR).items) and items
        ),
        timeout=40,
        what="the serving Pod",
    )
    # The service lets adapters attach, so its Pods run the adapter loader from the start.
    names = [c.name for c in [*(pod.spec.init_containers or []), *pod.spec.containers]]
    assert "adapter-loader" in names, names
    served: dict[str, str] = {}
    with fake.FakePod(fake.well_behaved(served), host=IP, port=PORT):
        kubelet(cluster, namespace, pod, IP, containers_ready=True)
        wait_until(
            lambda: served.get("own") == "/mnt/pvc/adapters/own", timeout=40, what="the service's own adapter"
        )

        kubectl.apply(_adapter("sql", nlp, namespace, uri="hf://acme/sql-lora"))
        kubectl.apply(_adapter("chat", other, namespace, uri="hf://acme/chat-lora"))
        kubectl.apply(_adapter("own", nlp, namespace, uri="hf://acme/own-lora"))

        # Accepted: loaded into the running server, Ready on the adapter's side with the service's count.
        wait_until(
            lambda: served.get("sql") == "acme/sql-lora", timeout=40, what="sql loaded into the server"
        )
        # The kubelet sees the adapters gate open (the server lists both) and reports the Pod Ready.
        wait_until(lambda: gate_of(cluster, namespace, pod.metadata.name).get("status") == "True", timeout=40,
                   what="the adapters gate open")  # fmt: skip
        kubelet(cluster, namespace, cluster.core.read_namespaced_pod(pod.metadata.name, namespace), IP, True)
        sql = wait_until(
            lambda: (
                (s := _status(cluster, "loraadapters", nlp, "sql"))
                and _ready(s).get("status") == "True"
                and s
            ),
            timeout=40,
            what="LoRAAdapter sql Ready",
        )
        assert sql["served"]["service"] == f"{namespace}/shared" and sql["served"]["readyPods"] == 1, sql
        assert sql["served"]["state"] == "Ready"

        # Refused: another namespace's labels, and a name the service serves already; nothing loaded.
        chat = wait_until(
            lambda: (s := _status(cluster, "loraadapters", other, "chat")) and _ready(s).get("reason") == "NotAllowed"
            and s,
            timeout=40,
            what="LoRAAdapter chat refused",
        )  # fmt: skip
        assert "team=nlp" in _ready(chat)["message"] and chat["served"]["state"] == "Refused", chat
        own = wait_until(
            lambda: (s := _status(cluster, "loraadapters", nlp, "own")) and _ready(s).get("reason") == "NameConflict"
            and s,
            timeout=40,
            what="LoRAAdapter own refused on its name",
        )  # fmt: skip
        assert "servedName" in _ready(own)["message"]
        assert served.get("own") == "/mnt/pvc/adapters/own" and "chat" not in served

        # The service's side lists every adapter that asked, and serves the accepted one.
        status = _status(cluster, "inferenceservices", namespace, "shared")
        attached = {a["adapter"]: a for a in status.get("attachedAdapters") or []}
        assert attached[f"{nlp}/sql"]["accepted"] is True
        assert (
            attached[f"{other}/chat"]["accepted"] is False
            and attached[f"{other}/chat"]["reason"] == "NotAllowed"
        )
        assert attached[f"{nlp}/own"]["reason"] == "NameConflict"
        assert {a["name"] for a in status.get("adapters") or []} == {"own", "sql"}

        # Deleting the accepted adapter unloads it from the running server (its deletion wakes the service).
        cluster.custom.delete_namespaced_custom_object(GROUP, VERSION, nlp, "loraadapters", "sql")
        wait_until(lambda: "sql" not in served, timeout=40, what="sql unloaded after its LoRAAdapter went")
        wait_until(
            lambda: f"{nlp}/sql"
            not in {a["adapter"] for a in _status(cluster, "inferenceservices", namespace, "shared").get("attachedAdapters") or []},
            timeout=40,
            what="sql gone from the service's attachedAdapters",
        )  # fmt: skip
