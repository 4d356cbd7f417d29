"""Planning and summarising runtime LoRA changes, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tuneops.adapters import (
    ActionKind,
    ActionResult,
    AdapterAction,
    AdapterState,
    DesiredAdapter,
    FailureRecord,
    PodMemory,
    PodResult,
    ServedModels,
    api_key_problem,
    error_message,
    plan_pod,
    pod_problems,
    pod_url,
    record_results,
    summarize,
)
from tuneops.api.common import Condition
from tuneops.api.inferenceservice import InferenceServiceStatus, PodAdapters
from tuneops.reconcile.lora import ready_pods
from tuneops.reconcile.service_status import Adapters, adapter_states

BASE = "base"


def served(**adapters: str) -> ServedModels:
    return ServedModels(base_models=(BASE,), adapters=dict(adapters), parents=dict.fromkeys(adapters, BASE))


def want(name: str, digest: str, path: str | None = None) -> DesiredAdapter:
    return DesiredAdapter(name=name, path=path or f"/adapters/{name}", digest=digest)


def desired(*adapters: DesiredAdapter) -> dict[str, DesiredAdapter]:
    return {a.name: a for a in adapters}


def test_parse_openai_model_list() -> None:
    body = {
        "object": "list",
        "data": [
            {"id": "base", "object": "model", "root": "/models/base", "parent": None},
            {"id": "a1", "object": "model", "root": "/adapters/a1", "parent": "base"},
        ],
    }
    models = ServedModels.from_openai_models(body)
    assert models.base_models == ("base",)
    assert models.adapters == {"a1": "/adapters/a1"}
    assert models.parents == {"a1": "base"}
    with pytest.raises(ValueError):
        ServedModels.from_openai_models({"data": [{"object": "model"}]})
    with pytest.raises(ValueError):
        ServedModels.from_openai_models({"object": "list"})


def test_missing_adapter_is_loaded_and_extra_is_unloaded_first() -> None:
    plan = plan_pod(desired(want("a", "d1")), served(old="/adapters/old"), PodMemory())
    assert [(a.kind, a.name) for a in plan.actions] == [(ActionKind.UNLOAD, "old"), (ActionKind.LOAD, "a")]
    assert plan.states["a"].state is AdapterState.LOADING
    assert plan.states["old"].state is AdapterState.UNLOADING
    assert plan.states["old"].desired is False


def test_an_adapter_served_from_the_desired_path_is_ready_whoever_loaded_it() -> None:
    plan = plan_pod(desired(want("a", "d1")), served(a="/adapters/a"), PodMemory())
    assert plan.actions == ()
    assert plan.states["a"].state is AdapterState.READY
    assert plan.states["a"].digest == "d1"


@pytest.mark.parametrize(
    "served_path",
    [
        "/adapters/out/d0",  # an older digest's content-addressed path
        "/tmp/rogue",  # someone else's load under the spec's name
        "",  # a listing without a root
    ],
)
def test_the_same_name_from_another_path_is_reloaded(served_path: str) -> None:
    plan = plan_pod(desired(want("a", "d1", "/adapters/out/d1")), served(a=served_path), PodMemory())
    assert len(plan.actions) == 1
    action = plan.actions[0]
    assert action.kind is ActionKind.RELOAD
    assert (action.path, action.digest) == ("/adapters/out/d1", "d1")
    assert "served from" in action.reason
    assert plan.states["a"].state is AdapterState.LOADING


def test_failures_are_bounded_then_failed_with_server_message() -> None:
    wanted = desired(want("bad", "d1"))
    memory = PodMemory()
    for attempt in range(3):
        plan = plan_pod(wanted, served(), memory, max_attempts=3)
        assert [a.kind for a in plan.actions] == [ActionKind.LOAD]
        assert plan.states["bad"].state is AdapterState.LOADING
        assert plan.states["bad"].attempts == attempt
        result = ActionResult(action=plan.actions[0], ok=False, status=404, message="No adapter found")
        memory = record_results(memory, [result], served())
    plan = plan_pod(wanted, served(), memory, max_attempts=3)
    assert plan.actions == ()
    assert plan.states["bad"].state is AdapterState.FAILED
    assert plan.states["bad"].attempts == 3
    assert plan.states["bad"].message == "No adapter found"
    # new weights under the same name (a new content-addressed path) get a fresh set of attempts
    plan = plan_pod(desired(want("bad", "d2", "/adapters/out/d2")), served(), memory, max_attempts=3)
    assert [a.kind for a in plan.actions] == [ActionKind.LOAD]


def test_accepted_load_that_is_not_listed_from_its_path_counts_as_a_failure() -> None:
    action = AdapterAction(kind=ActionKind.LOAD, name="a", path="/adapters/a", digest="d1")
    ok = [ActionResult(action=action, ok=True, status=200)]
    memory = record_results(PodMemory(), ok, served())
    assert memory.failures["a"].attempts == 1 and memory.failures["a"].target == "/adapters/a"
    memory = record_results(memory, ok, served(a="/elsewhere"))
    assert memory.failures["a"].attempts == 2 and "/elsewhere" in memory.failures["a"].message
    assert record_results(memory, ok, served(a="/adapters/a")) == PodMemory()


def test_a_failed_load_counts_against_its_path() -> None:
    action = AdapterAction(kind=ActionKind.RELOAD, name="a", path="/adapters/out/d2", digest="d2")
    memory = record_results(
        PodMemory(),
        [ActionResult(action=action, ok=False, status=400, message="bad weights")],
        served(a="/adapters/out/d1"),
    )
    assert memory.failures["a"] == FailureRecord(target="/adapters/out/d2", attempts=1, message="bad weights")


def test_unload_failures_are_bounded() -> None:
    memory = PodMemory()
    for _ in range(2):
        plan = plan_pod({}, served(x="/adapters/x"), memory, max_attempts=2)
        assert [a.kind for a in plan.actions] == [ActionKind.UNLOAD]
        memory = record_results(
            memory, [ActionResult(action=plan.actions[0], ok=False, status=500, message="boom")], None
        )
    plan = plan_pod({}, served(x="/adapters/x"), memory, max_attempts=2)
    assert plan.actions == ()
    assert plan.states["x"].state is AdapterState.FAILED
    summary = summarize({}, [PodResult(pod="p0", reachable=True, states=plan.states)])
    assert not summary.ready
    assert summary.reason == "AdapterUnloadFailed"
    assert "boom" in summary.message


def pod(name: str, wanted: dict[str, DesiredAdapter], models: ServedModels, memory: PodMemory) -> PodResult:
    return PodResult(pod=name, reachable=True, served=models, states=plan_pod(wanted, models, memory).states)


def test_summary_counts_ready_pods_per_adapter() -> None:
    wanted = desired(want("a", "d1"), want("b", "d2"))
    full = PodMemory()
    both = served(a="/adapters/a", b="/adapters/b")
    summary = summarize(
        wanted, [pod("p0", wanted, both, full), pod("p1", wanted, served(a="/adapters/a"), full)]
    )
    counts = {a.name: (a.ready_pods, a.total_pods, a.state) for a in summary.adapters}
    assert counts == {"a": (2, 2, AdapterState.READY), "b": (1, 2, AdapterState.LOADING)}
    assert not summary.ready
    assert summary.reason == "AdaptersLoading"
    assert "b served on 1/2" in summary.message

    summary = summarize(wanted, [pod("p0", wanted, both, full), pod("p1", wanted, both, full)])
    assert summary.ready
    assert summary.reason == "AllAdaptersServed"


def test_summary_reports_failure_with_message_and_pod() -> None:
    wanted = desired(want("bad", "d1"))
    memory = PodMemory(
        failures={"bad": FailureRecord(target="/adapters/bad", attempts=3, message="path does not exist")}
    )
    summary = summarize(wanted, [pod("p0", wanted, served(), memory)])
    assert not summary.ready
    assert summary.reason == "AdapterLoadFailed"
    assert "path does not exist" in summary.message
    assert "p0" in summary.message
    assert summary.adapters[0].state is AdapterState.FAILED


def test_summary_edge_cases() -> None:
    assert summarize({}, []).ready
    assert summarize({}, []).reason == "NoAdapters"
    wanted = desired(want("a", "d1"))
    assert summarize(wanted, []).reason == "NoReadyPods"
    down = PodResult(pod="p0", reachable=False, error="ClientConnectorError: refused")
    summary = summarize(wanted, [down])
    assert not summary.ready
    assert summary.reason == "PodUnreachable"
    assert summary.adapters[0].ready_pods == 0


def test_error_message_shapes() -> None:
    assert error_message(404, '{"error": {"message": "not found", "type": "NotFoundError"}}') == "not found"
    assert error_message(400, '{"object": "error", "message": "already loaded"}') == "already loaded"
    assert error_message(422, '{"detail": [{"msg": "field required"}]}') == "[{'msg': 'field required'}]"
    assert error_message(500, "") == "HTTP 500"
    assert error_message(502, "Bad Gateway") == "Bad Gateway"


def test_unload_of_an_adapter_already_gone_counts_as_done() -> None:
    action = AdapterAction(kind=ActionKind.UNLOAD, name="x")
    result = ActionResult(
        action=action, ok=False, status=404, message="The lora adapter 'x' cannot be found."
    )
    memory = record_results(PodMemory(failures={"x": FailureRecord(attempts=1)}), [result], served())
    assert memory == PodMemory()


def test_a_long_model_list_is_read_up_to_a_cap() -> None:
    body = {
        "data": [{"id": "base", "parent": None}] + [{"id": f"x{i}", "parent": "base"} for i in range(5000)]
    }
    body["data"].insert(1, {"id": "y" * 1000, "parent": "base"})
    models = ServedModels.from_openai_models(body, limit=100)
    assert len(models.adapters) == 98  # the base, the over-long name, then 98 adapters
    assert models.ignored == 5002 - 100 + 1


@pytest.mark.parametrize(
    ("key", "problem"),
    [
        ("sk-abc.123_XYZ", None),
        ("secret\n", "trailing newline"),
        (" secret", "whitespace"),
        ("sec ret", "printable ASCII"),
        ("sécret", "printable ASCII"),
        ("", "empty"),
    ],
)
def test_api_key_problems(key: str, problem: str | None) -> None:
    found = api_key_problem(key)
    assert (found is None) if problem is None else (problem in (found or ""))


def test_pods_are_reached_by_ip_only() -> None:
    assert pod_url("10.0.0.7", 8000) == "http://10.0.0.7:8000"
    assert pod_url("fd00::7", 8000) == "http://[fd00::7]:8000"
    for bad in ("evil.example.com", "10.0.0.7/../x", "10.0.0.7:9999", ""):
        with pytest.raises(ValueError):
            pod_url(bad, 8000)


def k8s_pod(name: str, *, ready: bool = True, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels or {}},
        "status": {"podIP": "10.0.0.1", "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def test_only_the_pods_the_service_routes_to_are_asked() -> None:
    """A LeaderWorkerSet's workers run no API server: only leaders (worker index 0), as the Service selects."""
    index = "leaderworkerset.sigs.k8s.io/worker-index"
    pods = [
        k8s_pod("lws-0", labels={index: "0"}),
        k8s_pod("lws-0-1", labels={index: "1"}),
        k8s_pod("lws-1", labels={index: "0"}),
        k8s_pod("lws-1-1", labels={index: "1"}),
        k8s_pod("deploy-abc"),
        k8s_pod("not-ready", ready=False),
    ]
    assert [p["metadata"]["name"] for p in ready_pods(pods)] == ["deploy-abc", "lws-0", "lws-1"]


def test_status_of_100_adapters_on_50_failing_pods_stays_small() -> None:
    """status.adapters holds counts and status.pods at most 10 Pods: far under etcd's 1.5 MiB object limit."""
    wanted = {f"adapter-{i:03d}": want(f"adapter-{i:03d}", f"sha256:{i:064d}") for i in range(100)}
    long_error = "x" * 5000
    pods = []
    for p in range(50):
        memory = PodMemory(
            failures={
                n: FailureRecord(target=a.path, attempts=3, message=long_error) for n, a in wanted.items()
            }
        )
        extras = served(**{f"stale-{p}-{j}": f"/adapters/stale-{j}" for j in range(100)})
        pods.append(pod(f"server-{p:02d}-{'x' * 40}", wanted, extras, memory))
    summary = summarize(wanted, pods)
    problems = pod_problems(wanted, pods)
    status = InferenceServiceStatus(
        adapters=adapter_states(Adapters(summary)),
        pods=[PodAdapters(pod=x.pod, ready_adapters=x.ready_adapters, message=x.message) for x in problems],
        conditions=[
            Condition(type="AdaptersReady", status="False", reason=summary.reason, message=summary.message)
        ],
    )
    size = len(json.dumps(status.wire()))
    print(f"status of 100 adapters x 50 Pods: {size} bytes")
    assert size < 64 << 10, size
    assert len(problems) == 10
    assert all(len(x.message) <= 200 for x in problems)
    assert "and 95 more" in summary.message
