"""Adapter truth comes from the servers: the planner compares what each vLLM Pod lists (name -> the path it
loaded from, where a FineTunedModel's adapter path carries its digest) with the spec. Nothing on the Pod a
tenant can write (its annotations, including the old `tuneops.io/adapters` memory, or its labels) changes what
the operator does or reports, and the operator writes nothing on Pods. The only thing kept between passes is the
count of failed attempts, in the operator's own memory."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from tests.security import vllm_fakes as fake
from tuneops import labels
from tuneops.adapters import PodMemory, PodResult
from tuneops.adapters.passes import PassRunner
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.reconcile import lora
from tuneops.reconcile.base import Context
from tuneops.reconcile.sources import Sources
from tuneops.render import serving as render
from tuneops.render.types import Owner, ResolvedAdapter, ResolvedModel


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


_NET = os.getpid() % 250 + 1
ADDRESSES = [f"127.83.{_NET}.{i}" for i in (10, 11)]
OWNER = Owner(
    api_version="tuneops.io/v1alpha1", kind="InferenceService", name="svc", namespace="ns", uid="u-svc"
)
SPEC = InferenceServiceSpec.model_validate(
    {"model": {"uri": "pvc://models/base"}, "lora": {"adapters": [{"name": "a", "uri": "pvc://adapters/a"}]}}
)


class NoWrites:
    """An API server the adapter pass must not write to (nor read: the Pods come from the caller)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the adapter pass called kube.{name}")


FORGED = {
    labels.ADAPTER_MEMORY: json.dumps({"v": 1, "loaded": {"a": "0" * 32, "rogue": "1" * 32}}),
    "tuneops.io/refresh": "x",
}


def serving_pods(annotations: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "metadata": {"name": f"svc-{i}", "uid": f"uid-svc-{i}", "annotations": dict(annotations or {}),
                         "labels": {"forged-by": "tenant"}},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i, ip in enumerate(ADDRESSES)
    ]  # fmt: skip


def published(digest: str) -> str:
    """Where a FineTunedModel publishes an adapter: a content-addressed path."""
    return f"pvc://artifacts/ns/ftm/{digest[7:23]}"


def sources(*adapters: tuple[str, str, str]) -> Sources:
    resolved = [ResolvedAdapter(name=n, uri=u, digest=d) for n, u, d in adapters]
    return Sources(model=ResolvedModel(uri="pvc://models/base"), adapters=resolved, pending={}, sources=[])


def path_of(uri: str) -> str:
    return render.adapter_path(uri, OperatorConfig())


def restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a restarted operator has: no pass in flight and nothing held between passes."""
    monkeypatch.setattr(lora, "_PASSES", PassRunner("test-restarted"))
    monkeypatch.setattr(lora, "MEMORIES", lora.Memories())


def loads(fleet: list[fake.FakePod]) -> int:
    return sum(
        p.hits.pop("/v1/load_lora_adapter", 0) + p.hits.pop("/v1/unload_lora_adapter", 0) for p in fleet
    )


def run(pods: list[dict[str, Any]], src: Sources) -> tuple[Any, list[Any]]:
    ctx = Context(kube=cast(Any, NoWrites()), config=OperatorConfig())
    return lora.reconcile_adapters(ctx, SPEC, OWNER, copy.deepcopy(pods), src)


@pytest.mark.parametrize("annotations", [{}, FORGED], ids=["plain", "forged annotations"])
def test_what_the_servers_list_decides_and_nothing_on_the_pod_does(
    annotations: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1, v2 = sha("weights 1"), sha("weights 2")
    # Pod 0 serves a from v1's path, plus a rogue adapter nobody asked for; pod 1 serves a loaded by someone
    # else, under the spec's name, from another path.
    state0 = {"a": path_of(published(v1)), "rogue": "/tmp/rogue"}
    state1 = {"a": "/tmp/evil"}
    pods = serving_pods(annotations)
    with (
        fake.FakePod(fake.well_behaved(state0), host=ADDRESSES[0], port=render.PORT) as one,
        fake.FakePod(fake.well_behaved(state1), host=ADDRESSES[1], port=render.PORT) as two,
    ):
        fleet = [one, two]
        restarted(monkeypatch)
        adapters, problems = run(pods, sources(("a", published(v1), v1)))
        assert adapters.summary.ready and problems == []
        assert state0 == {"a": path_of(published(v1))}, "the rogue adapter is unloaded"
        assert state1 == {"a": path_of(published(v1))}, "the rogue load under the spec's name is replaced"
        assert loads(fleet) == 3, "pod 0: the rogue's unload; pod 1: a's unload, then its load"
        (summary,) = adapters.summary.adapters
        assert (summary.digest, summary.ready_pods) == (v1, 2)

        # Settled: nothing to call, restarted or not.
        assert run(pods, sources(("a", published(v1), v1)))[0].summary.ready
        restarted(monkeypatch)
        assert run(pods, sources(("a", published(v1), v1)))[0].summary.ready
        assert loads(fleet) == 0

        # A new digest is a new path: reloaded (unloaded, then loaded) on each Pod, and Ready only once they
        # serve it.
        restarted(monkeypatch)
        adapters, _ = run(pods, sources(("a", published(v2), v2)))
        assert adapters.summary.ready and loads(fleet) == 4
        assert state0 == state1 == {"a": path_of(published(v2))}

        # Someone loads the old weights back under the name behind the operator's back: seen and undone.
        state1["a"] = path_of(published(v1))
        adapters, _ = run(pods, sources(("a", published(v2), v2)))
        assert adapters.summary.ready and loads(fleet) == 2 and state1["a"] == path_of(published(v2))


def test_a_forged_annotation_changes_nothing_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same servers, Pods with and without forged annotations: the same verdict, message and status.pods."""
    v1 = sha("weights 1")
    outcomes = []
    for forged in ({}, FORGED):
        state = {"a": "/tmp/evil"}

        def failing(r: fake.Request, state: dict[str, str] = state) -> None:
            if r.path == "/v1/models":
                fake.well_behaved(state)(r)
            else:
                r.reply(500, {"error": {"message": "no"}})

        with (
            fake.FakePod(failing, host=ADDRESSES[0], port=render.PORT),
            fake.FakePod(fake.well_behaved({}), host=ADDRESSES[1], port=render.PORT),
        ):
            restarted(monkeypatch)
            adapters, problems = run(serving_pods(forged), sources(("a", published(v1), v1)))
            outcomes.append((adapters.summary, problems))
    assert outcomes[0] == outcomes[1]
    assert not outcomes[0][0].ready


def test_failed_attempts_are_kept_by_pod_uid_and_bounded() -> None:
    memories = lora.Memories(limit=2)
    pods = serving_pods()
    made_from = lora.PassInputs(
        (), tuple((p["metadata"]["name"], p["metadata"]["uid"], "") for p in pods), None, True
    )
    failed = PodMemory.model_validate({"failures": {"a": {"target": "/x", "attempts": 2}}})
    memories.keep(("ns", "svc"), made_from, [PodResult(pod="svc-0", reachable=True, memory=failed),
                                            PodResult(pod="svc-1", reachable=True)])  # fmt: skip
    got = memories.of(("ns", "svc"), pods)
    assert got == {"svc-0": failed, "svc-1": PodMemory()}
    replaced = copy.deepcopy(pods)
    replaced[0]["metadata"]["uid"] = "new-pod"  # a new Pod under the same name starts afresh
    assert memories.of(("ns", "svc"), replaced)["svc-0"] == PodMemory()
    for i in range(3):
        memories.keep(
            ("ns", f"other-{i}"), made_from, [PodResult(pod="svc-0", reachable=True, memory=failed)]
        )
    assert len(memories) == 2 and memories.of(("ns", "svc"), pods)["svc-0"] == PodMemory()
    memories.keep(("ns", "other-2"), made_from, [PodResult(pod="svc-0", reachable=True)])  # nothing failed
    assert len(memories) == 1


# -- a pass overtaken by new inputs ---------------------------------------------------------------------------


def test_a_pass_made_from_old_inputs_hands_its_result_over_once() -> None:
    """The caller gets only a pass made from its own inputs; one made from others goes to `superseded`, once,
    before the next pass starts (both when it finished between calls and when the caller waited on it)."""
    runner: PassRunner[str] = PassRunner("test-superseded", wait_s=0.3)
    gate = threading.Event()
    handed: list[tuple[object, str]] = []
    starts: list[str] = []

    def start(name: str, wait: bool = False) -> Callable[[], Coroutine[Any, Any, str]]:
        async def one() -> str:
            while wait and not gate.is_set():
                await asyncio.sleep(0.01)
            return name

        def begin() -> Coroutine[Any, Any, str]:
            starts.append(name)
            assert handed or name != "pass 2", "the new pass started before the old one was handed over"
            return one()

        return begin

    def hand(inputs: object, result: str) -> None:
        handed.append((inputs, result))

    assert runner.run("svc", "inputs-1", start("pass 1", wait=True), hand) is None
    gate.set()
    while runner.in_flight():
        time.sleep(0.01)
    assert runner.run("svc", "inputs-2", start("pass 2"), hand) == "pass 2"
    assert handed == [("inputs-1", "pass 1")]
    assert runner.run("svc", "inputs-2", start("pass 3"), hand) == "pass 3"
    assert handed == [("inputs-1", "pass 1")]

    # the caller waits on a pass made from other inputs, which ends in time: handed over, and None returned
    handed.clear()
    gate.clear()
    assert runner.run("svc", "inputs-1", start("pass 4", wait=True), hand) is None
    threading.Timer(0.1, gate.set).start()
    assert runner.run("svc", "inputs-2", start("never"), hand) is None
    assert handed == [("inputs-1", "pass 4")] and "never" not in starts


def slow_loads(state: dict[str, str], seconds: float) -> fake.Behaviour:
    inner = fake.well_behaved(state)

    def behave(r: fake.Request) -> None:
        if r.path == "/v1/load_lora_adapter":
            time.sleep(seconds)
        inner(r)

    return behave


def test_what_an_overtaken_pass_failed_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow failing pass on the first Pod is overtaken by a second Pod becoming Ready: its failed attempt is
    kept, and the next pass counts on from it."""
    restarted(monkeypatch)
    pods = serving_pods()
    pods[1]["status"]["conditions"] = []
    runner: PassRunner[list[PodResult]] = PassRunner("test-overtaken", wait_s=0.1)
    monkeypatch.setattr(lora, "_PASSES", runner)
    src = sources(("a", "pvc://adapters/a", ""))

    def settle() -> None:
        deadline = time.monotonic() + 10
        while runner.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)

    def failing(r: fake.Request) -> None:
        if r.path == "/v1/models":
            fake.well_behaved({})(r)
        else:
            time.sleep(0.5)
            r.reply(500, {"error": {"message": "no"}})

    with (
        fake.FakePod(failing, host=ADDRESSES[0], port=render.PORT) as first,
        fake.FakePod(failing, host=ADDRESSES[1], port=render.PORT),
    ):
        adapters, _ = run(pods, src)
        assert not adapters.summary.ready  # no answer yet
        settle()
        pods[1]["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        run(pods, src)
        settle()
        run(pods, src)
        memories = lora.MEMORIES.of((OWNER.namespace, OWNER.name), pods)
        assert memories["svc-0"].failures["a"].attempts == first.hits["/v1/load_lora_adapter"] >= 2


def test_a_pass_that_leaves_work_queues_the_next_one_and_a_settled_one_does_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A pass makes at most MAX_ACTIONS_PER_POD calls per Pod. Nothing the operator watches changes when a Pod
    loads an adapter, so the service is queued again at once while adapters remain; once every adapter is
    served, nothing is queued (a settled service costs nothing)."""
    from tuneops.adapters.client import MAX_ACTIONS_PER_POD

    many = [(f"a{i:03d}", f"pvc://adapters/a{i:03d}", "") for i in range(MAX_ACTIONS_PER_POD * 2 + 3)]
    state: dict[str, str] = {}
    woke: list[tuple[Any, ...]] = []
    ctx = Context(kube=cast(Any, NoWrites()), config=OperatorConfig(), wake=lambda *a: woke.append(a))
    spec = InferenceServiceSpec.model_validate(
        {
            "model": {"uri": "pvc://models/base"},
            "lora": {"adapters": [{"name": n, "uri": u} for n, u, _ in many]},
        }
    )
    pod = serving_pods()[:1]
    with fake.FakePod(fake.well_behaved(state), host=ADDRESSES[0], port=render.PORT):
        restarted(monkeypatch)
        passes = 0
        while True:
            woke.clear()
            adapters, _ = lora.reconcile_adapters(ctx, spec, OWNER, copy.deepcopy(pod), sources(*many))
            passes += 1
            if adapters.summary.ready:
                break
            assert woke and woke[0][:4] == ("InferenceService", "ns", "svc", "adapters"), woke
            assert passes < 10
    assert passes == 3 and len(state) == len(many)
    assert woke == [], "a settled service is not queued again"
