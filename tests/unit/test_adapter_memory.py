"""What the adapter reconciler remembers about a Pod lives on the Pod (annotation tuneops.io/adapters): it reads
back what it wrote, ignores anything else, stays bounded, and a restarted operator reloads nothing it loaded."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, cast

import pytest

from tests.security import vllm_fakes as fake
from tuneops import labels
from tuneops.adapters import (
    ActionKind,
    DesiredAdapter,
    FailureRecord,
    PodMemory,
    PodResult,
    decode_memory,
    encode_memory,
    plan_pod,
)
from tuneops.adapters.memory import DIGEST_CHARS, MEMORY_MAX, short_digest
from tuneops.adapters.passes import PassRunner
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile import lora
from tuneops.reconcile.base import Context
from tuneops.reconcile.sources import Sources
from tuneops.render import serving as render
from tuneops.render.types import Owner, ResolvedAdapter, ResolvedModel

KEY = labels.ADAPTER_MEMORY


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def want(name: str, digest: str) -> DesiredAdapter:
    return DesiredAdapter(name=name, path=f"/adapters/{name}", digest=digest)


def desired_of(memory: PodMemory) -> dict[str, DesiredAdapter]:
    """What was desired when the memory was made: the digest loaded under each name, or the one that failed."""
    out = {n: want(n, d) for n, d in memory.loaded.items()}
    out.update({n: want(n, f.digest) for n, f in memory.failures.items() if f.digest})
    return out


# -- reading back what was written ----------------------------------------------------------------------------

ROUND_TRIPS = [
    ("nothing", PodMemory()),
    ("sha256 digests", PodMemory(loaded={"a": sha("a"), "b": sha("b")})),
    ("no digest (a plain URI)", PodMemory(loaded={"a": ""})),
    ("short digests kept whole", PodMemory(loaded={"a": "sha256:a", "b": "v1"})),
    ("a digest of another form", PodMemory(loaded={"a": "md5:" + "f" * 80})),
    (
        "failures, with the message status shows",
        PodMemory(
            loaded={"a": sha("a")},
            failures={
                "b": FailureRecord(digest=sha("b"), attempts=3, message="CUDA out of memory"),
                "gone": FailureRecord(digest="", attempts=1, message="HTTP 500"),
            },
        ),
    ),
    ("names of every allowed character", PodMemory(loaded={"org/x:1.0_b-c": sha("x"), "é-ü": sha("u")})),
]


@pytest.mark.parametrize(("case", "memory"), ROUND_TRIPS, ids=[c for c, _ in ROUND_TRIPS])
def test_a_memory_reads_back_as_written(case: str, memory: PodMemory) -> None:
    value = encode_memory(memory)
    if not memory.loaded and not memory.failures:
        assert value is None  # nothing to remember: no annotation
        return
    assert value is not None and value.isascii() and len(value) <= MEMORY_MAX
    back = decode_memory(value, desired_of(memory))
    assert back == memory
    assert encode_memory(back) == value  # unchanged memory, unchanged annotation: never written again


def test_digests_are_kept_short_and_shortening_again_changes_nothing() -> None:
    full = sha("weights")
    assert short_digest(full) == full[7 : 7 + DIGEST_CHARS]
    assert short_digest("x" * 500) == hashlib.sha256(b"x" * 500).hexdigest()[:DIGEST_CHARS]
    assert short_digest("bad\ndigest") == hashlib.sha256(b"bad\ndigest").hexdigest()[:DIGEST_CHARS]
    for digest in (full, "", "v1", "sha256:a", "x" * 500, "bad\ndigest"):
        short = short_digest(digest)
        assert len(short) <= DIGEST_CHARS and short.isprintable()
        assert short_digest(short) == short
    value = encode_memory(PodMemory(loaded={"a": full}))
    assert value == '{"loaded":{"a":"' + full[7:39] + '"},"v":1}'


def test_a_same_name_update_is_still_seen_through_the_short_digest() -> None:
    """The kept digest matches only the digest it was made from: new weights under the same name, even ones whose
    digest shares 31 of the 32 kept characters, are reloaded in place."""
    old = sha("old weights")
    near = old[:-33] + ("0" if old[-33] != "0" else "1") + old[-32:]  # differs in the last kept character
    assert near != old and near[:-33] == old[:-33]
    value = encode_memory(PodMemory(loaded={"a": old}))
    served = fake_listing(["a"])
    for new in (sha("new weights"), near):
        memory = decode_memory(value, {"a": want("a", new)})
        plan = plan_pod({"a": want("a", new)}, served, memory)
        assert [(a.kind, a.name) for a in plan.actions] == [(ActionKind.LOAD_INPLACE, "a")]
        assert "digest changed from " + old[7:39] in plan.actions[0].reason
    settled = plan_pod({"a": want("a", old)}, served, decode_memory(value, {"a": want("a", old)}))
    assert settled.actions == ()

    # new weights that failed to load: the old digest is kept short, the failures count for the new one
    new = sha("new weights")
    failing = PodMemory(
        loaded={"a": old}, failures={"a": FailureRecord(digest=new, attempts=3, message="OOM")}
    )
    back = decode_memory(encode_memory(failing), {"a": want("a", new)})
    assert back.loaded == {"a": old[7:39]} and back.failures == failing.failures
    plan = plan_pod({"a": want("a", new)}, served, back)
    assert plan.actions == () and plan.states["a"].state == "Failed" and plan.states["a"].message == "OOM"


def fake_listing(names: list[str]) -> Any:
    from tuneops.adapters import ServedModels

    return ServedModels.from_openai_models(fake.models_body(names))


# -- values it did not write ----------------------------------------------------------------------------------

VALID = {"v": 1, "loaded": {"a": "0" * 32}, "failures": {"b": ["", 1, "HTTP 500"]}}


def variant(**changes: Any) -> str:
    body = copy.deepcopy(VALID)
    body.update(changes)
    return json.dumps(body)


IGNORED: list[tuple[str, object]] = [
    ("not a string", 12),
    ("a list", ["x"]),
    ("empty", ""),
    ("not JSON", "loaded a"),
    ("JSON but not a map", "[1, 2]"),
    ("another format", variant(v=2)),
    ("no format", json.dumps({"loaded": {"a": ""}})),
    ("a format that is a boolean", variant(v=True)),
    ("an unknown key", variant(extra=1)),
    ("loaded is a list", variant(loaded=["a"])),
    ("a digest that is a number", variant(loaded={"a": 1})),
    ("a digest longer than kept", variant(loaded={"a": sha("a")})),
    ("a digest with a newline", variant(loaded={"a": "abc\n"})),
    ("an empty name", variant(loaded={"": ""})),
    ("a name too long", variant(loaded={"n" * 257: ""})),
    ("a name with a control character", variant(loaded={"a\x1b[2J": ""})),
    ("a failure of two fields", variant(failures={"b": ["", 1]})),
    ("attempts that are a boolean", variant(failures={"b": ["", True, ""]})),
    ("negative attempts", variant(failures={"b": ["", -1, ""]})),
    ("attempts past any count", variant(failures={"b": ["", 10**6, ""]})),
    ("attempts that are a float", variant(failures={"b": ["", 1.0, ""]})),
    ("a message longer than status takes", variant(failures={"b": ["", 1, "m" * 201]})),
    ("a message with a newline", variant(failures={"b": ["", 1, "line\nline"]})),
    ("a number of 5000 digits", '{"v": 1, "loaded": {}, "failures": {"b": ["", ' + "9" * 5000 + ', ""]}}'),
    ("nesting 100,000 deep", "[" * 100_000 + "]" * 100_000),
    ("one character over the bound", variant() + " " * (MEMORY_MAX + 1 - len(variant()))),
    ("a very large value", '{"v":1,"loaded":{' + ",".join(f'"n{i}":""' for i in range(10**6)) + "}}"),
]


@pytest.mark.parametrize(("case", "value"), IGNORED, ids=[c for c, _ in IGNORED])
def test_a_value_it_did_not_write_reads_as_no_memory(case: str, value: object) -> None:
    assert decode_memory(variant() + " " * (MEMORY_MAX - len(variant())), {}) != PodMemory()  # what it varies
    assert decode_memory(value, {"a": want("a", "")}) == PodMemory()


# -- bounds ---------------------------------------------------------------------------------------------------


def test_the_largest_fleet_fits_and_what_does_not_fit_goes_first() -> None:
    """512 adapters with 128-character names, every one failing at a new digest with a long message while the
    old digest serves: the annotation stays within its bound, every loaded digest is kept (a lost one costs a
    reload), the messages go first, and reading it back and writing it again changes nothing."""
    names = [f"a{i:03d}".ljust(128, "x") for i in range(512)]
    memory = PodMemory(
        loaded={n: sha(n + "old") for n in names},
        failures={n: FailureRecord(digest=sha(n), attempts=2, message="e" * 200) for n in names},
    )
    value = encode_memory(memory)
    assert value is not None and len(value) <= MEMORY_MAX
    desired = {n: want(n, sha(n)) for n in names}
    back = decode_memory(value, desired)
    assert set(back.loaded) == set(names)
    assert all(f.message == "" for f in back.failures.values())
    assert set(back.failures) <= set(names) and len(back.failures) > 200
    assert all(back.failures[n].digest == sha(n) and back.failures[n].attempts == 2 for n in back.failures)
    assert encode_memory(back) == value

    # twice the names (a spec swapped for another while the old adapters are unloaded): still bounded, stable
    more = PodMemory(loaded={**memory.loaded, **{n + "y": sha(n) for n in names}}, failures=memory.failures)
    value = encode_memory(more)
    assert value is not None and len(value) <= MEMORY_MAX
    assert encode_memory(decode_memory(value, desired)) == value


def test_a_name_a_hostile_pod_made_up_is_left_out_not_the_whole_memory() -> None:
    """An unload failure is kept under the name the Pod listed; one that could not be read back is not written,
    and the rest of the memory still is."""
    memory = PodMemory(
        loaded={"a": sha("a")},
        failures={"\x00evil": FailureRecord(attempts=1, message="x"), "n" * 300: FailureRecord(attempts=1)},
    )
    value = encode_memory(memory)
    assert decode_memory(value, {"a": want("a", sha("a"))}) == PodMemory(loaded={"a": sha("a")})


# -- what a pass writes ---------------------------------------------------------------------------------------


def pod(name: str, uid: str, annotation: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "uid": uid}
    if annotation is not None:
        meta["annotations"] = {KEY: annotation, "other": "kept"}
    return {"metadata": meta, "status": {"podIP": "127.0.0.1"}}


def made_from(*pods: dict[str, Any]) -> lora.PassInputs:
    return lora.PassInputs(
        (), tuple((p["metadata"]["name"], p["metadata"]["uid"], "ip") for p in pods), None, True
    )


LOADED = PodMemory(loaded={"a": sha("a")})
LOADED_VALUE = encode_memory(LOADED)

WRITES = [
    # case, the Pod now, the result of the pass, the write expected
    ("unchanged: nothing written", pod("p", "u", LOADED_VALUE), LOADED, []),
    ("no memory, no annotation: nothing written", pod("p", "u"), PodMemory(), []),
    ("a first load", pod("p", "u"), LOADED, [("p", LOADED_VALUE)]),
    (
        "a value it did not write, nothing to remember: removed",
        pod("p", "u", "junk"),
        PodMemory(),
        [("p", None)],
    ),
    ("a value it did not write: replaced", pod("p", "u", "junk"), LOADED, [("p", LOADED_VALUE)]),
    ("all unloaded: removed", pod("p", "u", LOADED_VALUE), PodMemory(), [("p", None)]),
]


@pytest.mark.parametrize(("case", "now", "memory", "writes"), WRITES, ids=[c[0] for c in WRITES])
def test_a_pass_writes_only_what_changed(
    case: str, now: dict[str, Any], memory: PodMemory, writes: list[tuple[str, str | None]]
) -> None:
    result = PodResult(pod="p", reachable=True, memory=memory)
    got, fresh = lora.memory_writes([now], made_from(pod("p", "u")), [result])
    assert got == writes
    assert fresh == {"p": memory}


def test_a_pod_gone_or_replaced_under_its_name_gets_nothing() -> None:
    result = PodResult(pod="p", reachable=True, memory=LOADED)
    assert lora.memory_writes([], made_from(pod("p", "u")), [result]) == ([], {})
    assert lora.memory_writes([pod("p", "u2")], made_from(pod("p", "u")), [result]) == ([], {})


# -- an operator restarted against Pods that remember ---------------------------------------------------------

_NET = os.getpid() % 250 + 1
ADDRESSES = [f"127.83.{_NET}.{i}" for i in (10, 11)]
OWNER = Owner(
    api_version="tuneops.io/v1alpha1", kind="InferenceService", name="svc", namespace="ns", uid="u-svc"
)
SPEC = InferenceServiceSpec.model_validate(
    {"model": {"uri": "pvc://models/base"}, "lora": {"adapters": [{"name": "a", "uri": "pvc://adapters/a"}]}}
)


class PodsKube:
    """The service's Pods as the API server holds them; merge patches of annotations applied and counted."""

    def __init__(self, pods: list[dict[str, Any]]):
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.patches: list[tuple[str, dict[str, Any]]] = []

    def patch(self, rtype: k.ResourceType, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        assert rtype == k.POD and namespace == OWNER.namespace
        assert set(body) == {"metadata"} and set(body["metadata"]) == {"annotations"}
        self.patches.append((name, body))
        if name not in self.pods:
            raise k.NotFound("PATCH", name)
        annotations = self.pods[name]["metadata"].setdefault("annotations", {})
        for key, value in body["metadata"]["annotations"].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        return copy.deepcopy(self.pods[name])

    def listed(self) -> list[dict[str, Any]]:
        return copy.deepcopy(list(self.pods.values()))


def serving_pods() -> list[dict[str, Any]]:
    return [
        {
            "metadata": {"name": f"svc-{i}", "uid": f"uid-svc-{i}", "annotations": {"other": "kept"}},
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]},
        }
        for i, ip in enumerate(ADDRESSES)
    ]


def sources(*adapters: tuple[str, str]) -> Sources:
    resolved = [ResolvedAdapter(name=n, uri=f"pvc://adapters/{n}", digest=d) for n, d in adapters]
    return Sources(model=ResolvedModel(uri="pvc://models/base"), adapters=resolved, pending={}, sources=[])


@pytest.fixture
def fleet() -> Iterator[list[fake.FakePod]]:
    """Two vLLM Pods that already serve adapter a (their --lora-modules), on the serving port."""
    path = render.adapter_path("pvc://adapters/a", OperatorConfig())
    with (
        fake.FakePod(fake.well_behaved({"a": path}), host=ADDRESSES[0], port=render.PORT) as one,
        fake.FakePod(fake.well_behaved({"a": path}), host=ADDRESSES[1], port=render.PORT) as two,
    ):
        yield [one, two]


def loads(fleet: list[fake.FakePod]) -> int:
    return sum(p.hits.pop("/v1/load_lora_adapter", 0) for p in fleet)


def restarted(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a restarted operator has: no pass in flight and nothing held between passes but the Pods."""
    monkeypatch.setattr(lora, "_PASSES", PassRunner("test-restarted"))


def test_a_restarted_operator_reloads_nothing_the_pods_remember(
    fleet: list[fake.FakePod], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = PodsKube(serving_pods())
    ctx = Context(kube=cast(Any, kube), config=OperatorConfig())
    v1 = sources(("a", sha("weights 1")))

    def reconcile(src: Sources) -> bool:
        adapters, _ = lora.reconcile_adapters(ctx, SPEC, OWNER, kube.listed(), src)
        return adapters.summary.ready

    # First sight: the Pods serve a, with weights nobody recorded: reloaded in place once, and remembered.
    restarted(monkeypatch)
    assert reconcile(v1)
    assert loads(fleet) == 2
    assert sorted(name for name, _ in kube.patches) == ["svc-0", "svc-1"]
    for p in kube.pods.values():
        assert p["metadata"]["annotations"]["other"] == "kept"
        assert decode_memory(p["metadata"]["annotations"][KEY], {}).loaded == {"a": sha("weights 1")[7:39]}

    # Settled: no calls that change anything, and no writes.
    kube.patches.clear()
    assert reconcile(v1)
    assert loads(fleet) == 0 and kube.patches == []

    # Restarted: the same, from the Pods' annotations alone.
    restarted(monkeypatch)
    assert reconcile(v1)
    assert loads(fleet) == 0 and kube.patches == []

    # Restarted, with new weights published under the same name: reloaded on each Pod, and remembered.
    restarted(monkeypatch)
    v2 = sources(("a", sha("weights 2")))
    assert reconcile(v2)
    assert loads(fleet) == 2 and len(kube.patches) == 2
    kube.patches.clear()
    restarted(monkeypatch)
    assert reconcile(v2)
    assert loads(fleet) == 0 and kube.patches == []

    # A Pod whose annotation was removed (or never written) is reloaded once, the other is not.
    del kube.pods["svc-1"]["metadata"]["annotations"][KEY]
    restarted(monkeypatch)
    assert reconcile(v2)
    assert loads(fleet) == 1 and [name for name, _ in kube.patches] == ["svc-1"]


def test_a_pod_gone_before_its_memory_is_written_fails_nothing(
    fleet: list[fake.FakePod], monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = PodsKube(serving_pods())
    ctx = Context(kube=cast(Any, kube), config=OperatorConfig())
    listed = kube.listed()
    del kube.pods["svc-0"]  # deleted after the list was read
    restarted(monkeypatch)
    adapters, _ = lora.reconcile_adapters(ctx, SPEC, OWNER, listed, sources(("a", sha("w"))))
    assert adapters.summary.ready
    assert sorted(name for name, _ in kube.patches) == ["svc-0", "svc-1"]
    assert KEY in kube.pods["svc-1"]["metadata"]["annotations"]


def test_a_failed_write_is_logged_and_made_again_on_the_next_pass(
    fleet: list[fake.FakePod], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    kube = PodsKube(serving_pods())
    ctx = Context(kube=cast(Any, kube), config=OperatorConfig())
    real_patch = kube.patch

    def refused(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise k.ApiError(503, "PATCH", "pods", "")

    monkeypatch.setattr(kube, "patch", refused)
    restarted(monkeypatch)
    adapters, _ = lora.reconcile_adapters(ctx, SPEC, OWNER, kube.listed(), sources(("a", sha("w"))))
    assert adapters.summary.ready
    assert "not recorded" in caplog.text
    assert all(KEY not in p["metadata"]["annotations"] for p in kube.pods.values())
    monkeypatch.setattr(kube, "patch", real_patch)
    lora.reconcile_adapters(ctx, SPEC, OWNER, kube.listed(), sources(("a", sha("w"))))
    assert all(KEY in p["metadata"]["annotations"] for p in kube.pods.values())


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


def test_what_an_overtaken_pass_loaded_is_remembered_and_not_loaded_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow pass on the first Pod is overtaken by a second Pod becoming Ready: its loads are written on the
    first Pod, and the next pass starts from them instead of reloading."""
    path = render.adapter_path("pvc://adapters/a", OperatorConfig())
    pods = serving_pods()
    pods[1]["status"]["conditions"] = []
    kube = PodsKube(pods)
    ctx = Context(kube=cast(Any, kube), config=OperatorConfig())
    runner: PassRunner[list[PodResult]] = PassRunner("test-overtaken", wait_s=0.1)
    monkeypatch.setattr(lora, "_PASSES", runner)
    src = sources(("a", sha("w")))

    def settle() -> None:
        deadline = time.monotonic() + 10
        while runner.in_flight() and time.monotonic() < deadline:
            time.sleep(0.01)

    with (
        fake.FakePod(slow_loads({"a": path}, 0.5), host=ADDRESSES[0], port=render.PORT) as first,
        fake.FakePod(slow_loads({"a": path}, 0.5), host=ADDRESSES[1], port=render.PORT) as second,
    ):
        adapters, _ = lora.reconcile_adapters(ctx, SPEC, OWNER, kube.listed(), src)
        assert not adapters.summary.ready  # no answer yet
        settle()
        kube.pods["svc-1"]["status"]["conditions"] = [{"type": "Ready", "status": "True"}]
        lora.reconcile_adapters(ctx, SPEC, OWNER, kube.listed(), src)
        assert [name for name, _ in kube.patches] == ["svc-0"]  # the overtaken pass's loads, recorded
        settle()
        adapters, _ = lora.reconcile_adapters(ctx, SPEC, OWNER, kube.listed(), src)
        assert adapters.summary.ready
        assert [name for name, _ in kube.patches] == ["svc-0", "svc-1"]
        assert first.hits.get("/v1/load_lora_adapter") == 1
        assert second.hits.get("/v1/load_lora_adapter") == 1
