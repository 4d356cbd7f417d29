"""The whole pipeline through the local node: quickstart -> Ready -> answers -> hot-added adapter -> clean delete."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tuneops.kube.client import CUSTOM, DEPLOYMENT, POD, Kube
from tuneops.local import demo
from tuneops.local.cli import LocalCluster, ensure_tools

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAMESPACE = "default"
# Cold runs on two shared cores: the quantization Jobs and vLLM's start dominate.
READY_TIMEOUT_S = float(os.environ.get("TUNEOPS_E2E_TIMEOUT", "1800"))


def _wait(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as exc:  # a server still starting answers with errors; that is a normal state
            last = exc
            value = None
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last!r})" if last else "")
    )


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _tree(pid: int) -> set[int]:
    from tuneops.proctree import descendants

    return {pid, *descendants(pid)}


def _server_pod(api: Kube, service: str) -> dict[str, Any]:
    pods = api.list(
        POD, NAMESPACE, {"app.kubernetes.io/instance": service, "app.kubernetes.io/component": "server"}
    )
    ready = [
        p
        for p in pods
        if not p["metadata"].get("deletionTimestamp")
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])
    ]
    assert len(ready) == 1, [p["metadata"]["name"] for p in pods]
    return ready[0]


def _gate(pod: dict[str, Any]) -> tuple[str, str] | None:
    """The adapters readiness gate's (status, reason) on a serving Pod."""
    from tuneops.adapters.gate import GATE

    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == GATE:
            return str(c.get("status")), str(c.get("reason"))
    return None


def _pid(pod: dict[str, Any]) -> int:
    container_id = pod["status"]["containerStatuses"][0]["containerID"]
    assert container_id.startswith("local://")
    return int(container_id.removeprefix("local://"))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    ensure_tools(["kube", "llamacpp", "vllm"])
    c = LocalCluster(tmp_path_factory.mktemp("local"))
    c.up(die_with_parent=True)
    try:
        yield c
    finally:
        c.down(purge=True)


def test_quickstart_end_to_end(cluster: LocalCluster) -> None:
    api = Kube.from_kubeconfig(cluster.kubeconfig, user_agent="tuneops-e2e")
    demo.make_models(cluster.pvc_root)
    manifests = demo.load_manifests()
    demo.ensure_claims(api, demo.claims_of(manifests), NAMESPACE, cluster.pvc_root)
    demo.apply(api, manifests, NAMESPACE)

    # Every resource reaches Ready.
    took = demo.wait_ready(api, manifests, NAMESPACE, READY_TIMEOUT_S)
    assert set(took) == {f"{demo.SHORT[m['kind']]}/{m['metadata']['name']}" for m in manifests}

    # Adapters that became servable one by one were hot-loaded: the vLLM Deployment never rolled.
    deployment = api.get(DEPLOYMENT, NAMESPACE, "tiny-llama")
    assert deployment is not None and deployment["metadata"]["generation"] == 1, deployment["metadata"]

    # The base model and each adapter answer on vLLM; the GGUF answers on llama.cpp.
    vllm_url = demo.endpoint(cluster, NAMESPACE, "tiny-llama")
    served = demo.served_names(api, NAMESPACE, "tiny-llama")
    assert served == ["tiny-llama", "chat", "sql"]
    answers = {name: demo.chat(vllm_url, name, "Hello") for name in served}
    assert all(isinstance(a, str) for a in answers.values())
    # Greedy decoding: an adapter with non-zero LoRA weights changes what the model says.
    assert len({answers["tiny-llama"], answers["chat"], answers["sql"]}) > 1, answers
    llama_url = demo.endpoint(cluster, NAMESPACE, "tiny-chat-cpu")
    assert demo.chat(llama_url, "tiny-chat-cpu", "Hello") is not None

    # Adding an adapter is served by the running Pod: same Pod, same process.
    pod = _server_pod(api, "tiny-llama")
    pid = _pid(pod)
    tisvc_path = (CUSTOM["InferenceService"], NAMESPACE, "tiny-llama")
    tisvc = api.get(*tisvc_path)
    assert tisvc is not None
    adapters = [*tisvc["spec"]["lora"]["adapters"], {"name": "extra", "uri": "pvc://adapters/tiny-extra"}]
    api.patch(*tisvc_path, {"spec": {"lora": {"adapters": adapters}}})

    def extra_served() -> bool:
        obj = api.get(*tisvc_path) or {}
        states = {a["name"]: a for a in (obj.get("status") or {}).get("adapters") or []}
        return states.get("extra", {}).get("state") == "Ready" and states["extra"].get("readyPods") == 1

    _wait(extra_served, 300, "adapter extra Ready on the running Pod")
    assert demo.chat(vllm_url, "extra", "Hello") is not None
    after = _server_pod(api, "tiny-llama")
    assert after["metadata"]["uid"] == pod["metadata"]["uid"]
    assert _pid(after) == pid and after["status"]["containerStatuses"][0]["restartCount"] == 0
    assert _gate(after) == ("True", "AdaptersServed"), after["status"]["conditions"]

    # The vLLM process dies (killed): the kubelet restarts the container in the same Pod, the adapters gate
    # closes while the server is down, and once the new server lists every adapter again (the runtime-loaded
    # `extra` too) the gate opens and the Pod is Ready; no operator restart.
    os.kill(pid, signal.SIGKILL)

    def restarted_and_serving() -> dict[str, Any] | None:
        now = _server_pod(api, "tiny-llama")
        statuses = now["status"]["containerStatuses"][0]
        if statuses["restartCount"] < 1 or not statuses.get("ready"):
            return None
        return now if _gate(now) == ("True", "AdaptersServed") and extra_served() else None

    again = _wait(restarted_and_serving, 600, "the restarted vLLM serving every adapter behind an open gate")
    assert again["metadata"]["uid"] == pod["metadata"]["uid"] and _pid(again) != pid
    assert demo.chat(vllm_url, "extra", "Hello") is not None
    pid = _pid(again)

    def adapter_states() -> dict[str, dict[str, Any]]:
        obj = api.get(*tisvc_path) or {}
        return {a["name"]: a for a in (obj.get("status") or {}).get("adapters") or []}

    def condition(type_: str) -> dict[str, Any]:
        obj = api.get(*tisvc_path) or {}
        return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})

    # A broken adapter path ends, after bounded retries, as Failed with vLLM's own message; the rest is served.
    broken = [*adapters, {"name": "broken", "uri": "pvc://adapters/does-not-exist"}]
    api.patch(*tisvc_path, {"spec": {"lora": {"adapters": broken}}})
    _wait(lambda: adapter_states().get("broken", {}).get("state") == "Failed", 300, "adapter broken Failed")
    assert "No adapter found" in adapter_states()["broken"]["message"], adapter_states()["broken"]
    adapters_ready = condition("AdaptersReady")
    assert adapters_ready["status"] == "False" and adapters_ready["reason"] == "AdapterLoadFailed", (
        adapters_ready
    )
    assert "broken" in adapters_ready["message"]
    assert demo.chat(vllm_url, "extra", "Hello") is not None

    # Removing it (and extra) unloads them from the running Pod; AdaptersReady comes back.
    api.patch(*tisvc_path, {"spec": {"lora": {"adapters": tisvc["spec"]["lora"]["adapters"]}}})
    _wait(lambda: condition("AdaptersReady").get("status") == "True", 300, "AdaptersReady after removal")
    assert set(adapter_states()) == {"chat", "sql"}
    assert set(demo.served_names(api, NAMESPACE, "tiny-llama")) == {"tiny-llama", "chat", "sql"}

    # New weights for `sql` under the same name: a new adapter version (a new URI on its FineTunedModel) is
    # inspected, published at a new content-addressed path and loaded in place; the answer follows the weights.
    from tuneops.workers.tiny import TinyAdapterSpec, make_adapter

    before = demo.chat(vllm_url, "sql", "Hello")
    old_digest = adapter_states()["sql"]["digest"]
    make_adapter(cluster.pvc_root / demo.BASE_MODEL, cluster.pvc_root / "adapters/tiny-sql-v2",
                 TinyAdapterSpec(seed=42, b_std=0.5))  # fmt: skip
    api.patch(
        CUSTOM["FineTunedModel"],
        NAMESPACE,
        "tiny-sql",
        {"spec": {"adapter": {"uri": "pvc://adapters/tiny-sql-v2"}}},
    )

    def sql_replaced() -> bool:
        state = adapter_states().get("sql", {})
        return state.get("state") == "Ready" and state.get("digest") not in (None, old_digest)

    _wait(sql_replaced, 300, "adapter sql replaced by its new version")
    after_answer = demo.chat(vllm_url, "sql", "Hello")
    assert after_answer != before, (before, after_answer)

    # The Pod restarts (deleted): the new one starts with the current adapters from --lora-modules and the
    # reconciler brings the state back to Ready.
    api.delete(POD, NAMESPACE, pod["metadata"]["name"])

    def new_pod_serving() -> bool:
        new = _server_pod(api, "tiny-llama")
        return (
            new["metadata"]["uid"] != pod["metadata"]["uid"]
            and condition("AdaptersReady").get("status") == "True"
        )

    _wait(new_pod_serving, READY_TIMEOUT_S, "a new vLLM Pod serving every adapter")
    assert demo.chat(vllm_url, "sql", "Hello") == after_answer
    assert {a["name"]: a["readyPods"] for a in adapter_states().values()} == {"chat": 1, "sql": 1}

    # Deleting the resources removes their Pods, their processes and the processes' children.
    pids: set[int] = set()
    for service in ("tiny-llama", "tiny-chat-cpu"):
        pids |= _tree(_pid(_server_pod(api, service)))
    assert all(_alive(p) for p in pids)
    demo.delete(api, manifests, NAMESPACE)

    def all_gone() -> bool:
        left = api.list(POD, NAMESPACE)
        return not left and not any(_alive(p) for p in pids)

    _wait(all_gone, 180, "Pods and processes gone after deletion")

    # Foreground deletion: each resource goes once the garbage collector has seen its children gone.
    def resources_gone() -> bool:
        return all(api.get(CUSTOM[m["kind"]], NAMESPACE, m["metadata"]["name"]) is None for m in manifests)

    _wait(resources_gone, 180, "the resources themselves gone after their children")


def test_the_quickstart_finetunedmodel_asks_for_the_benchmark(cluster: LocalCluster) -> None:
    """`tuneops demo --benchmark`'s FineTunedModel: after the merge, a Job in the vLLM image (the project's code put
    beside it by an init container) serves the merged model, then the base with the adapter as LoRA, under
    `vllm bench serve`, checks that both answer alike, and the figures and the recommendation reach status."""
    api = Kube.from_kubeconfig(cluster.kubeconfig, user_agent="tuneops-e2e")
    demo.make_models(cluster.pvc_root)
    manifests = [m for m in demo.load_manifests() if m["metadata"]["name"] == "tiny-chat"]
    assert demo.with_benchmark(manifests) == ["tiny-chat"]
    demo.ensure_claims(api, demo.claims_of(manifests), NAMESPACE, cluster.pvc_root)
    demo.apply(api, manifests, NAMESPACE)
    try:
        status = demo.wait_benchmarked(api, NAMESPACE, "tiny-chat", READY_TIMEOUT_S)
    except demo.DemoError:
        for pod in api.list(POD, NAMESPACE, {"app.kubernetes.io/component": "benchmark"}):
            print("benchmark Pod", pod["metadata"]["name"], json.dumps(pod.get("status"))[-3000:])
        raise
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["Benchmarked"]["status"] == "True", conds["Benchmarked"]
    got = status["benchmark"]
    assert got["recommendation"] in ("merged", "lora") and got["reason"], got
    assert got["accelerator"] == "cpu" and got["qualityGap"] < 0.1
    rows = {(f["variant"], f["concurrency"]) for f in got["figures"]}
    assert rows == {("merged", 1), ("merged", 4), ("lora", 1), ("lora", 4)}
    assert all(f["outputTokensPerS"] > 0 and f["acceleratorSPerThousandTokens"] > 0 for f in got["figures"])
    assert 0 < got["loraThroughputRatio"] < 3
    assert conds["Ready"]["status"] == "True"
    print("benchmark on the local node:\n" + "\n".join(demo.benchmark_table(status)))
    demo.delete(api, manifests, NAMESPACE)
