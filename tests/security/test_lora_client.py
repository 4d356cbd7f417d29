"""A tenant's vLLM Pod cannot stall, bloat or steer the operator through the runtime LoRA client.

Each hostile Pod runs on loopback next to a well-behaved one in the same pass: the hostile one ends as a short,
printable error within the pass deadline, and the other is served as if nothing happened.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Coroutine, Iterator
from typing import Any, cast

import pytest

from tests.security import vllm_fakes as fake
from tuneops.adapters import (
    AdapterClient,
    AdapterState,
    DesiredAdapter,
    PodResult,
    excerpt,
    pod_problems,
    summarize,
)
from tuneops.adapters.client import ACTION_BODY_MAX, MAX_ACTIONS_PER_POD, MODELS_BODY_MAX
from tuneops.adapters.passes import PassRunner
from tuneops.adapters.types import MAX_LISTED_MODELS
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.reconcile.base import Context, Invalid
from tuneops.reconcile.lora import reconcile_pods
from tuneops.reconcile.sources import _api_key
from tuneops.render.types import Owner

WANT = {n: DesiredAdapter(name=n, path=f"/adapters/{n}", digest=f"sha256:{n}") for n in ("a", "b")}
DEADLINE_S = 3.0
# What a pass may take past its deadline: the last call's own grace and the listing reserve.
SLACK_S = 3.0


def owner(name: str = "svc") -> Owner:
    return Owner(
        api_version="tuneops.io/v1alpha1", kind="InferenceService", name=name, namespace="ns", uid=name
    )


def pod(name: str, ip: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}-{time.monotonic_ns()}"},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
    }


def one_pass(
    pods: list[dict[str, Any]],
    port: int,
    *,
    svc: str = "svc",
    api_key: str | None = None,
    deadline_s: float = DEADLINE_S,
) -> tuple[list[PodResult], float]:
    start = time.monotonic()
    results = asyncio.run(
        reconcile_pods(owner(svc), pods, WANT, api_key, True, deadline_s=deadline_s, port=port)
    )
    return results, time.monotonic() - start


def printable(text: str, limit: int = 200) -> bool:
    return len(text) <= limit and text.isprintable()


def assert_bounded(result: PodResult) -> None:
    """Whatever reaches status from this Pod is short and printable."""
    assert printable(result.error), result.error
    for r in result.results:
        assert printable(r.message), r.message
    for state in result.states.values():
        assert printable(state.message), state.message
    for problem in pod_problems(WANT, [result]):
        assert printable(problem.message), problem.message


@pytest.fixture
def neighbours() -> Iterator[tuple[fake.FakePod, dict[str, str]]]:
    """A well-behaved Pod on 127.0.0.2; hostile Pods get its port on 127.0.0.1 (one port for every Pod)."""
    state: dict[str, str] = {}
    with fake.FakePod(fake.well_behaved(state), host="127.0.0.2") as good:
        yield good, state


CASES: list[tuple[str, fake.Behaviour, bool, str]] = [
    # name, behaviour, reachable afterwards, what the error (or the failed load's message) says
    ("400 MiB model list", fake.huge_everything(), False, f"over the {MODELS_BODY_MAX}-byte limit"),
    ("400 MiB error body on load", fake.huge_error_on_load(), True, "xxxx"),
    ("slow drip", fake.drip(), False, "TimeoutError"),
    ("stalled", fake.stall(), False, "TimeoutError"),
    ("100k adapter names", fake.listing(100_000), False, "limit"),
    ("500 on every call", fake.errors_500(), False, "HTTP 500: Internal Server Error trace"),
    ("gzip bomb", fake.gzip_bomb(), False, "compressed body (gzip) refused"),
    ("invalid UTF-8 and escapes", fake.invalid_utf8(), True, "bad"),
]


@pytest.mark.parametrize(("name", "behaviour", "reachable", "says"), CASES, ids=[c[0] for c in CASES])
def test_hostile_pod_is_contained(
    neighbours: tuple[fake.FakePod, dict[str, str]],
    name: str,
    behaviour: fake.Behaviour,
    reachable: bool,
    says: str,
) -> None:
    good, served = neighbours
    with fake.FakePod(behaviour, port=good.port):
        results, took = one_pass([pod("hostile-0", "127.0.0.1"), pod("good-0", "127.0.0.2")], good.port)
    hostile, fine = results
    assert took < DEADLINE_S + SLACK_S
    assert hostile.reachable is reachable, hostile.error
    text = hostile.error or " ".join(r.message for r in hostile.results if not r.ok)
    assert says in text
    assert_bounded(hostile)
    assert fine.reachable and {n: s.state for n, s in fine.states.items()} == dict.fromkeys(
        WANT, AdapterState.READY
    )
    assert sorted(served) == ["a", "b"]
    summary = summarize(WANT, results)
    assert not summary.ready
    assert len(summary.message) < 1000


def test_redirect_to_another_host_is_not_followed(neighbours: tuple[fake.FakePod, dict[str, str]]) -> None:
    good, _ = neighbours
    with (
        fake.FakePod(fake.listing(3), host="127.0.0.3") as elsewhere,
        fake.FakePod(fake.redirect_to(f"http://127.0.0.3:{elsewhere.port}"), port=good.port),
    ):
        results, _ = one_pass([pod("hostile-0", "127.0.0.1")], good.port)
    assert elsewhere.hits == {}
    (result,) = results
    assert not result.reachable
    assert "redirect refused" in result.error
    assert_bounded(result)


def test_a_long_listing_is_read_up_to_a_cap_and_unloaded_a_budget_at_a_time() -> None:
    names = 10_000  # well under the body cap: the entry cap is what bounds it
    with fake.FakePod(fake.listing(names)) as hostile:
        results, _ = one_pass([pod("hostile-0", "127.0.0.1")], hostile.port, deadline_s=30.0)
    (result,) = results
    assert result.reachable
    assert result.served is not None
    assert len(result.served.adapters) == MAX_LISTED_MODELS - 1  # the base model is the first entry
    assert result.served.ignored == names + 1 - MAX_LISTED_MODELS
    assert hostile.hits.get("/v1/unload_lora_adapter") == MAX_ACTIONS_PER_POD
    assert hostile.hits.get("/v1/load_lora_adapter") is None  # unloads go first; loads wait for a later pass
    (problem,) = pod_problems(WANT, results)
    assert (
        f"lists {names + 1 - MAX_LISTED_MODELS} more model(s)" in problem.message or "and " in problem.message
    )
    assert printable(problem.message)


def test_an_api_key_with_a_newline_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="trailing newline"):
        AdapterClient("http://127.0.0.1:1", api_key="secret\n")
    with fake.FakePod(fake.well_behaved()) as server:
        results, _ = one_pass([pod("p-0", "127.0.0.1")], server.port, api_key="secret\n")
    (result,) = results
    assert not result.reachable
    assert "trailing newline" in result.error
    assert server.hits == {}


def test_a_hostile_service_does_not_hold_up_another() -> None:
    """Two services reconciled at once, as the operator's handler threads do: the stalled one ends at its
    deadline; the other reaches Ready meanwhile."""
    done: dict[str, float] = {}

    def run(svc: str, port: int, deadline_s: float) -> None:
        results, took = one_pass([pod(f"{svc}-0", "127.0.0.1")], port, svc=svc, deadline_s=deadline_s)
        done[svc] = took
        if svc == "good":
            assert summarize(WANT, results).ready

    with fake.FakePod(fake.stall()) as stalled, fake.FakePod(fake.well_behaved()) as good:
        threads = [
            threading.Thread(target=run, args=("stalled", stalled.port, 6.0)),
            threading.Thread(target=run, args=("good", good.port, 6.0)),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
    assert done["good"] < 2.0
    assert 6.0 <= done["stalled"] < 6.0 + SLACK_S


RSS_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from tuneops.adapters import DesiredAdapter
    from tuneops.reconcile.lora import reconcile_pods
    from tuneops.render.types import Owner

    def status_mb(field):
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024

    port, hosts = int(sys.argv[1]), sys.argv[2:]
    want = {n: DesiredAdapter(name=n, path=f"/adapters/{n}", digest=n) for n in ("a", "b")}
    pods = [{"metadata": {"name": f"p-{i}", "uid": str(i)},
             "status": {"podIP": h, "conditions": [{"type": "Ready", "status": "True"}]}}
            for i, h in enumerate(hosts)]
    owner = Owner(api_version="v", kind="InferenceService", name="s", namespace="ns", uid="u")
    before = status_mb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to now: imports are not what is measured
    for _ in range(3):
        results = asyncio.run(reconcile_pods(owner, pods, want, None, True, deadline_s=5.0, port=port))
    peak = status_mb("VmHWM")
    print(json.dumps({"before": before, "peak": peak, "errors": [r.error for r in results]}))
    """
)


def test_operator_memory_stays_bounded_against_hostile_pods() -> None:
    """The reconcile of adapters, in its own process, against Pods that answer 400 MiB bodies, 100k names and a
    gzip bomb: its peak RSS stays far below the chart's 512Mi limit."""
    hosts = ["127.0.0.1", "127.0.0.2", "127.0.0.3", "127.0.0.4"]
    behaviours = [fake.huge_everything(), fake.huge_error_on_load(), fake.listing(100_000), fake.gzip_bomb()]
    first = fake.FakePod(behaviours[0], host=hosts[0])
    pods = [first] + [
        fake.FakePod(b, host=h, port=first.port) for b, h in zip(behaviours[1:], hosts[1:], strict=True)
    ]
    for p in pods:
        p.__enter__()
    try:
        out = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(first.port), *hosts],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
    finally:
        for p in pods:
            p.__exit__()
    report = json.loads(out.strip().splitlines()[-1])
    print(f"adapter reconcile RSS: {report['before']:.0f} MB before, {report['peak']:.0f} MB peak")
    assert report["peak"] < 250
    assert report["peak"] - report["before"] < 64
    assert all(len(e) <= 200 for e in report["errors"])


def test_excerpt_is_short_and_printable() -> None:
    assert excerpt("ok") == "ok"
    assert excerpt("a\nb\x1b[31m\x00c  d") == "a b [31m c d"
    long = excerpt("x" * (ACTION_BODY_MAX * 10))
    assert len(long) == 200 and long.endswith("…")


class _Secrets:
    def __init__(self, value: bytes) -> None:
        self.value = value

    def get(self, rtype: Any, ns: str, name: str) -> dict[str, Any]:
        return {"data": {"key": base64.b64encode(self.value).decode()}}


@pytest.mark.parametrize(
    ("value", "says"),
    [(b"secret\n", "trailing newline"), (b"\xff\xfe", "printable ASCII"), (b"", "empty")],
)
def test_a_bad_api_key_in_the_secret_is_an_invalid_spec(value: bytes, says: str) -> None:
    spec = InferenceServiceSpec.model_validate(
        {"model": {"uri": "pvc://models/m"}, "apiKeySecretRef": {"name": "api", "key": "key"}}
    )
    ctx = Context(kube=cast(Any, _Secrets(value)), config=OperatorConfig())
    with pytest.raises(Invalid, match=says) as err:
        _api_key(ctx, "ns", spec)
    assert err.value.reason == "InvalidSpec"
    assert "Secret 'api' key 'key'" in err.value.message
    assert _api_key(Context(kube=cast(Any, _Secrets(b"sk-1")), config=OperatorConfig()), "ns", spec) == "sk-1"


def test_a_slow_pass_holds_the_handler_only_briefly_and_is_not_started_twice() -> None:
    """The operator's handler threads wait a bounded time for an adapter pass; a pass still running is picked
    up by the next call, never duplicated, and its result is dropped if the inputs changed meanwhile."""
    runner: PassRunner[str] = PassRunner("test-adapter-passes", wait_s=0.2)
    gate = threading.Event()
    starts: list[int] = []

    async def slow() -> str:
        while not gate.is_set():
            await asyncio.sleep(0.01)
        return f"pass {len(starts)}"

    def start() -> Coroutine[Any, Any, str]:
        starts.append(1)
        return slow()

    def settle() -> None:
        deadline = time.monotonic() + 5
        while runner.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)

    began = time.monotonic()
    assert runner.run("svc", "inputs-1", start) is None
    assert time.monotonic() - began < 1.0
    assert runner.run("svc", "inputs-1", start) is None
    assert len(starts) == 1
    gate.set()
    settle()
    assert runner.run("svc", "inputs-1", start) == "pass 1"  # finished in between: taken, not run again
    assert runner.run("svc", "inputs-1", start) == "pass 2"  # the next call is a fresh pass
    gate.clear()
    assert runner.run("svc", "inputs-1", start) is None
    assert runner.run("svc", "inputs-2", start) is None  # one pass per service at a time
    assert len(starts) == 3
    gate.set()
    settle()
    assert runner.run("svc", "inputs-2", start) == "pass 4"  # pass 3 read the old inputs: dropped


def _reloading(unload_status: int, calls: list[tuple[str, Any]]) -> fake.Behaviour:
    """A server that lists `a` (and `b`) from old paths, and answers every unload with `unload_status`."""
    adapters = {"a": "/adapters/old-a", "b": "/adapters/b"}
    inner = fake.well_behaved(adapters)

    def behave(r: fake.Request) -> None:
        if r.path != "/v1/models":
            calls.append((r.path, r.json()))
        if r.path == "/v1/unload_lora_adapter" and unload_status != 200:
            r.reply(unload_status, {"message": "refused", "type": "BadRequestError", "code": unload_status})
            return
        inner(r)

    return behave


@pytest.mark.parametrize("unload_status", [200, 404])
def test_new_weights_are_an_unload_then_a_load_never_load_inplace(unload_status: int) -> None:
    """vLLM keeps `load_inplace` on the request it stores and then re-reads the adapter from disk at every step
    (vllm#41482): the operator never sends it. An unload answered 404 (already gone) still leads to the load."""
    calls: list[tuple[str, Any]] = []
    with fake.FakePod(_reloading(unload_status, calls)) as p:
        [result], _ = one_pass([pod("p", "127.0.0.1")], p.port)
    assert [c[0] for c in calls] == ["/v1/unload_lora_adapter", "/v1/load_lora_adapter"]
    assert calls[1][1] == {"lora_name": "a", "lora_path": "/adapters/a"}, "no load_inplace"
    assert result.states["a"].state is AdapterState.READY


def test_a_reload_whose_unload_fails_keeps_the_old_weights_served() -> None:
    calls: list[tuple[str, Any]] = []
    with fake.FakePod(_reloading(500, calls)) as p:
        [result], _ = one_pass([pod("p", "127.0.0.1")], p.port)
    assert [c[0] for c in calls] == ["/v1/unload_lora_adapter"], "no load after a failed unload"
    assert result.states["a"].state is AdapterState.LOADING
    assert "refused" in result.states["a"].message
