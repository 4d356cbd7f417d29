"""Adapters from object storage and a pinned Hub revision on every replica, through the local node with real vLLM:
an S3 bucket on moto's server and a Hub served locally, each read with its own Secret by the adapter loader beside
vLLM in each Pod."""

from __future__ import annotations

import datetime
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.e2e.test_pipeline import NAMESPACE, READY_TIMEOUT_S, _gate, _pid, _wait
from tests.workers.test_remote import FakeHub, moto_server, serving_hub

from tuneops.adapters.client import pod_url
from tuneops.kube import types as kt
from tuneops.kube.client import CUSTOM, DEPLOYMENT, POD, Kube
from tuneops.kube.types import SECRET
from tuneops.local import demo
from tuneops.local.cli import LocalCluster, ensure_tools
from tuneops.render.serving import loader
from tuneops.storage.manifest import digest_of

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

SERVICE = "shared-base"
BUCKET = "team-adapters"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    ensure_tools(["kube", "vllm"])
    c = LocalCluster(tmp_path_factory.mktemp("local"))
    c.up(die_with_parent=True)
    try:
        yield c
    finally:
        c.down(purge=True)


@pytest.fixture(scope="module")
def adapters(cluster: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from tuneops.workers.tiny import TinyAdapterSpec, make_adapter

    demo.make_models(cluster.pvc_root)
    base = cluster.pvc_root / demo.BASE_MODEL
    root = tmp_path_factory.mktemp("adapters")
    return {
        "s3": make_adapter(base, root / "s3", TinyAdapterSpec(seed=11, b_std=0.5)),
        "s3-next": make_adapter(base, root / "s3-next", TinyAdapterSpec(seed=12, b_std=0.5)),
        "hub": make_adapter(base, root / "hub", TinyAdapterSpec(seed=13, b_std=0.5)),
    }


@pytest.fixture(scope="module")
def s3(adapters: dict[str, Path]) -> Iterator[str]:
    import boto3

    with moto_server() as env:
        client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")  # fmt: skip
        client.create_bucket(Bucket=BUCKET)
        for name in ("s3", "s3-next"):
            for p in sorted(adapters[name].iterdir()):
                client.upload_file(str(p), BUCKET, f"{name}/{p.name}")
        yield env["AWS_ENDPOINT_URL"]


@pytest.fixture(scope="module")
def hub(adapters: dict[str, Path]) -> Iterator[tuple[FakeHub, str]]:
    files = {p.name: p.read_bytes() for p in adapters["hub"].iterdir() if p.is_file()}
    with serving_hub("acme/hub-lora", files) as served:
        yield served


def _secret(api: Kube, name: str, data: dict[str, str]) -> None:
    api.create(SECRET, NAMESPACE, {"apiVersion": "v1", "kind": "Secret",
                                   "metadata": {"name": name, "namespace": NAMESPACE}, "stringData": data})  # fmt: skip


def _pods(api: Kube) -> list[dict[str, Any]]:
    selector = {"app.kubernetes.io/instance": SERVICE, "app.kubernetes.io/component": "server"}
    return sorted(
        (p for p in api.list(POD, NAMESPACE, selector) if not p["metadata"].get("deletionTimestamp")),
        key=lambda p: p["metadata"]["name"],
    )


def _condition(pod: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in pod["status"].get("conditions") or [] if c["type"] == type_), {})


def _states(api: Kube) -> dict[str, dict[str, Any]]:
    obj = api.get(CUSTOM["InferenceService"], NAMESPACE, SERVICE) or {}
    return {a["name"]: a for a in (obj.get("status") or {}).get("adapters") or []}


def _served_everywhere(api: Kube, names: set[str], replicas: int) -> bool:
    states = _states(api)
    return all(
        states.get(n, {}).get("state") == "Ready" and states[n].get("readyPods") == replicas for n in names
    )


def _server_pid(pod: dict[str, Any]) -> int:
    return _pid({"status": {"containerStatuses": [_server_status(pod)]}})


def _server_status(pod: dict[str, Any]) -> dict[str, Any]:
    return next(s for s in pod["status"]["containerStatuses"] if s["name"] == "server")


def _time(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_s3_and_pinned_hub_adapters_on_every_replica(
    cluster: LocalCluster, adapters: dict[str, Path], s3: str, hub: tuple[FakeHub, str]
) -> None:
    api = Kube.from_kubeconfig(cluster.kubeconfig, user_agent="tuneops-e2e")
    fake, hub_url = hub
    demo.ensure_claims(api, ["models"], NAMESPACE, cluster.pvc_root)
    _secret(api, "s3-team", {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                             "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3})  # fmt: skip
    _secret(api, "hub-team", {"token": "hf_team_token", "HF_ENDPOINT": hub_url})
    s3_secret = {"name": "s3-team", "key": "AWS_ACCESS_KEY_ID"}
    want = {
        "from-s3": {"name": "from-s3", "uri": f"s3://{BUCKET}/s3", "digest": digest_of(adapters["s3"]),
                    "tokenSecretRef": s3_secret},
        "from-hub": {"name": "from-hub", "uri": f"hf://acme/hub-lora@{fake.sha}",
                     "tokenSecretRef": {"name": "hub-team", "key": "token"}},
    }  # fmt: skip
    spec = {
        "model": {"uri": f"pvc://{demo.BASE_MODEL}"},
        "runtime": "vllm",
        "replicas": 2,
        "resources": {"gpus": 0, "cpu": "1", "memory": "3Gi"},
        "vllm": {"servedModelName": "base", "maxModelLen": 512},
        "lora": {"maxLoraRank": 8, "maxLoras": 2, "maxCpuLoras": 4, "cacheSize": "256Mi",
                 "adapters": list(want.values()),
                 # teams in namespaces labelled team=nlp attach their own adapters, read with the bucket's Secret
                 "allowedAdapters": {"namespaces": {"from": "Selector", "selector": {"team": "nlp"}},
                                     "tokenSecretRef": s3_secret}},
    }  # fmt: skip
    api.create(CUSTOM["InferenceService"], NAMESPACE, {
        "apiVersion": "tuneops.io/v1alpha1", "kind": "InferenceService",
        "metadata": {"name": SERVICE, "namespace": NAMESPACE}, "spec": spec,
    })  # fmt: skip
    path = (CUSTOM["InferenceService"], NAMESPACE, SERVICE)

    # Both replicas serve both adapters, loaded at runtime from their own loader's cache: vLLM started without
    # them (they are not in its startup list), and no container restarted.
    _wait(lambda: _served_everywhere(api, set(want), 2), READY_TIMEOUT_S, "both adapters on both replicas")
    pods = _pods(api)
    assert len(pods) == 2
    for pod in pods:
        assert _gate(pod) == ("True", "AdaptersServed")
        assert all(s["restartCount"] == 0 for s in pod["status"]["containerStatuses"])
        url = pod_url(pod["status"]["podIP"], 8000)
        answers = {name: demo.chat(url, name, "Hello") for name in ("base", *want)}
        assert len(set(answers.values())) == 3, answers  # each adapter changes what the model says
    assert any(f"/revision/{fake.sha}" in r for r in fake.requests), "the pinned revision was asked for"
    assert "Bearer hf_team_token" in fake.tokens, "the Hub was read with the adapter's own Secret"
    states = _states(api)
    assert states["from-s3"]["digest"] == digest_of(adapters["s3"])

    # One more adapter is hot-loaded into the running replicas: same Pods, same processes.
    uids = {p["metadata"]["uid"] for p in pods}
    pids = {_server_pid(p) for p in pods}
    more = {"name": "next", "uri": f"s3://{BUCKET}/s3-next", "tokenSecretRef": s3_secret}
    api.patch(*path, {"spec": {"lora": {"adapters": [*want.values(), more]}}})
    _wait(lambda: _served_everywhere(api, {*want, "next"}, 2), 300, "adapter next on both replicas")
    assert {p["metadata"]["uid"] for p in _pods(api)} == uids and {_server_pid(p) for p in _pods(api)} == pids
    deployment = api.get(DEPLOYMENT, NAMESPACE, SERVICE)
    assert deployment is not None and deployment["metadata"]["generation"] == 1

    # A digest that is not the content's is refused by every loader, with its reason; the rest is still served.
    wrong = {**more, "digest": "sha256:" + "0" * 64}
    api.patch(*path, {"spec": {"lora": {"adapters": [*want.values(), wrong]}}})
    _wait(lambda: _states(api).get("next", {}).get("state") == "Failed", 300, "adapter next Failed")
    assert "DigestMismatch" in _states(api)["next"]["message"], _states(api)["next"]
    assert _served_everywhere(api, set(want), 2)
    api.patch(*path, {"spec": {"lora": {"adapters": list(want.values())}}})
    _wait(lambda: set(_states(api)) == set(want), 120, "adapter next gone from status")

    # A new replica is kept out of traffic until it serves every adapter: its Ready comes after its containers
    # were ready, when the operator opened the adapters gate.
    api.patch(*path, {"spec": {"replicas": 3}})
    _wait(
        lambda: len(_pods(api)) == 3 and _served_everywhere(api, set(want), 3), READY_TIMEOUT_S, "3 replicas"
    )
    (new,) = [p for p in _pods(api) if p["metadata"]["uid"] not in uids]
    gate = next(c for c in new["status"]["conditions"] if c["type"] == "tuneops.io/adapters-ready")
    assert gate["status"] == "True"
    assert _time(_condition(new, "ContainersReady")["lastTransitionTime"]) <= _time(
        gate["lastTransitionTime"]
    )
    assert _time(gate["lastTransitionTime"]) <= _time(_condition(new, "Ready")["lastTransitionTime"])
    api.patch(*path, {"spec": {"replicas": 2}})
    _wait(lambda: len(_pods(api)) == 2, 300, "back to 2 replicas")

    # Killing vLLM in one Pod: its server restarts, the operator loads both adapters again from the Pod's cache
    # (the loader kept them), and the gate opens again; no operator restart.
    victim = _pods(api)[0]
    os.kill(_server_pid(victim), signal.SIGKILL)

    def back() -> bool:
        pod = next((p for p in _pods(api) if p["metadata"]["uid"] == victim["metadata"]["uid"]), None)
        if pod is None or _server_status(pod)["restartCount"] < 1 or not _server_status(pod).get("ready"):
            return False
        return _gate(pod) == ("True", "AdaptersServed") and _served_everywhere(api, set(want), 2)

    _wait(back, 600, "the restarted server serving both adapters again")
    url = pod_url(victim["status"]["podIP"], 8000)
    assert demo.chat(url, "from-s3", "Hello") and demo.chat(url, "from-hub", "Hello")
    loader_status = next(
        s for s in _pods(api)[0]["status"]["containerStatuses"] if s["name"] == loader.CONTAINER
    )
    assert loader_status["restartCount"] == 0

    # A team attaches its adapter from its own namespace (allowed by label): served on both replicas without a
    # restart; a LoRAAdapter from a namespace the service does not allow is refused, with why on its side.
    uids = {p["metadata"]["uid"] for p in _pods(api)}
    for ns, team in (("team-nlp", "nlp"), ("team-vision", "vision")):
        api.create(kt.NAMESPACE, None, {"apiVersion": "v1", "kind": "Namespace",
                                     "metadata": {"name": ns, "labels": {"team": team}}})  # fmt: skip
        api.create(kt.LORAADAPTER, ns, {
            "apiVersion": "tuneops.io/v1alpha1", "kind": "LoRAAdapter", "metadata": {"name": "next", "namespace": ns},
            "spec": {"serviceRef": {"name": SERVICE, "namespace": NAMESPACE}, "uri": f"s3://{BUCKET}/s3-next",
                     "servedName": f"{team}-next", "digest": digest_of(adapters["s3-next"])},
        })  # fmt: skip

    def adapter_status(ns: str) -> dict[str, Any]:
        return dict((api.get(kt.LORAADAPTER, ns, "next") or {}).get("status") or {})

    def ready_on_both() -> bool:
        ready = next(
            (c for c in adapter_status("team-nlp").get("conditions") or [] if c["type"] == "Ready"), {}
        )
        return ready.get("status") == "True" and adapter_status("team-nlp")["served"]["readyPods"] == 2

    _wait(ready_on_both, 300, "the allowed team's LoRAAdapter served on both replicas")
    assert _served_everywhere(api, {*want, "nlp-next"}, 2)
    assert {p["metadata"]["uid"] for p in _pods(api)} == uids
    for pod in _pods(api):
        assert demo.chat(pod_url(pod["status"]["podIP"], 8000), "nlp-next", "Hello")
    refused = adapter_status("team-vision")
    ready = next(c for c in refused["conditions"] if c["type"] == "Ready")
    assert (
        ready["status"] == "False" and ready["reason"] == "NotAllowed" and "team=nlp" in ready["message"]
    ), ready
    assert "vision-next" not in _states(api)

    api.delete(*path)
    _wait(lambda: not _pods(api), 300, "the service's Pods gone")
    time.sleep(1)
