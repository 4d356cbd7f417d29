"""The operator's side of the per-Pod adapter loader, against fake loaders and servers on loopback: what a Pod's
loader answers steers only that Pod, a lying or broken loader costs only its own adapters, and folders the server
let go of are freed in the same pass."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.security import vllm_fakes as fake
from tuneops.adapters import AdapterState, DesiredAdapter, PodResult
from tuneops.reconcile.lora import reconcile_pods
from tuneops.render.types import Owner

OWNER = Owner(api_version="v", kind="InferenceService", name="s", namespace="ns", uid="u")
CACHE = "/mnt/adapters"
NEW, OLD = "ab" * 32, "cd" * 32


def loader(answers: dict[str, dict[str, Any]], calls: list[dict[str, Any]]) -> fake.Behaviour:
    def behave(r: fake.Request) -> None:
        if r.path != "/v1/sync":
            r.reply(404, {"error": "not found"})
            return
        calls.append(r.json())
        r.reply(200, {"adapters": answers, "cacheBytes": 0, "maxBytes": 1})

    return behave


def _pod(ip: str) -> dict[str, Any]:
    return {"metadata": {"name": "p", "uid": "1"},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}}  # fmt: skip


def one_pass(
    served: dict[str, str],
    answers: dict[str, dict[str, Any]],
    calls: list[dict[str, Any]],
    want: dict[str, DesiredAdapter],
) -> PodResult:
    """One adapter pass over one Pod whose server and loader are fakes on loopback."""
    with (
        fake.FakePod(fake.well_behaved(served), host="127.0.0.1") as server,
        fake.FakePod(loader(answers, calls), host="127.0.0.1") as side,
    ):
        (result,) = asyncio.run(
            reconcile_pods(OWNER, [_pod("127.0.0.1")], want, None, True, deadline_s=10.0,
                           port=server.port, loader_port=side.port)
        )  # fmt: skip
    return result


def test_a_reload_from_the_cache_frees_the_old_folder_in_the_same_pass() -> None:
    served = {"sql": f"{CACHE}/{OLD}", "claim": "/mnt/pvc/adapters/claim"}
    calls: list[dict[str, Any]] = []
    answers = {"sql": {"state": "Ready", "path": f"{CACHE}/{NEW}", "digest": f"sha256:{NEW}"}}
    want = {
        "sql": DesiredAdapter(name="sql", path="", digest="", uri="s3://b/sql-v2", role="adapter-1"),
        "claim": DesiredAdapter(name="claim", path="/mnt/pvc/adapters/claim", digest=""),
    }
    result = one_pass(served, answers, calls, want)
    assert served == {"sql": f"{CACHE}/{NEW}", "claim": "/mnt/pvc/adapters/claim"}
    assert result.states["sql"].state is AdapterState.READY
    # The first sync kept the folder the server read from; after the reload the loader is told at once.
    assert [c["keep"] for c in calls] == [[f"{CACHE}/{OLD}"], [f"{CACHE}/{NEW}"]]
    assert calls[0]["adapters"] == [
        {"name": "sql", "uri": "s3://b/sql-v2", "digest": "", "role": "adapter-1"}
    ]


def test_a_lying_loader_costs_only_its_adapters() -> None:
    served: dict[str, str] = {}
    calls: list[dict[str, Any]] = []
    answers = {"sql": {"state": "Ready", "path": "/etc/secrets", "digest": f"sha256:{NEW}"}}
    want = {
        "sql": DesiredAdapter(name="sql", path="", digest="", uri="s3://b/sql"),
        "claim": DesiredAdapter(name="claim", path="/mnt/pvc/adapters/claim", digest=""),
    }
    result = one_pass(served, answers, calls, want)
    assert served == {"claim": "/mnt/pvc/adapters/claim"}, "the claim's adapter is loaded; nothing from /etc"
    assert result.reachable and result.states["claim"].state is AdapterState.READY
    assert result.states["sql"].state is AdapterState.LOADING
    assert "content-addressed" in result.states["sql"].message
