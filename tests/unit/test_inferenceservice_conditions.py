"""InferenceService conditions as a table: what one pass observed -> Available, AdaptersReady, Ready, requeue."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from tuneops.adapters import AdapterPodState, AdapterState, DesiredAdapter, PodResult, summarize
from tuneops.api.common import Condition
from tuneops.api.conditions import ADAPTERS_READY, AVAILABLE, DEGRADED, READY, ROLLOUT, Reason, derive_phase
from tuneops.reconcile.base import Cond, Invalid, Waiting
from tuneops.reconcile.service_status import Adapters, Observed, Workload, adapter_states, decide
from tuneops.reconcile.workload import Cause

WANT = {
    name: DesiredAdapter(name=name, path=f"/mnt/adapters/{name}", digest=f"sha256:{name}") for name in "ab"
}


def pod(name: str, *states: AdapterPodState, reachable: bool = True) -> PodResult:
    return PodResult(pod=name, reachable=reachable, error="" if reachable else "connection refused",
                     states={s.name: s for s in states})  # fmt: skip


def ready(name: str) -> AdapterPodState:
    return AdapterPodState(name=name, state=AdapterState.READY)


def loading(name: str) -> AdapterPodState:
    return AdapterPodState(name=name, state=AdapterState.LOADING)


def load_failed(name: str) -> AdapterPodState:
    return AdapterPodState(name=name, state=AdapterState.FAILED, attempts=3, message="404 No adapter found")


def unload_failed(name: str) -> AdapterPodState:
    return AdapterPodState(
        name=name, state=AdapterState.FAILED, desired=False, attempts=3, message="500 busy"
    )


def unloading(name: str) -> AdapterPodState:
    return AdapterPodState(name=name, state=AdapterState.UNLOADING, desired=False)


def lora(*pods: PodResult, refused: dict[str, str] | None = None, pending: dict[str, str] | None = None,
         want: tuple[str, ...] = ("a", "b")) -> Adapters:  # fmt: skip
    return Adapters(summarize({n: WANT[n] for n in want}, pods), refused or {}, pending or {})


SERVED = lora(pod("p0", ready("a"), ready("b")), pod("p1", ready("a"), ready("b")))
UP = Workload(desired=2, ready=2, updated=2)
NO_SURGE = Cond(ROLLOUT, True, Reason.MAX_SURGE_ZERO, "no spare GPUs for a surge Pod")
PULL = Cause(Reason.IMAGE_PULL_BACK_OFF, 'pod edge-1 container "server": image "vllm:nope" cannot be pulled')
NO_GPU = Cause(
    Reason.UNSCHEDULABLE,
    "pod edge-1 cannot be scheduled: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
)
CRASH = Cause(
    Reason.CRASH_LOOP_BACK_OFF,
    'pod edge-9c-x1 container "server" keeps crashing (restarted 3 times; exit code 1, Error): '
    "model path /mnt/pvc/models/typo does not exist",
)
DEADLINE = Cause(
    Reason.PROGRESS_DEADLINE_EXCEEDED, 'Deployment edge: ReplicaSet "edge-2" has timed out progressing.'
)


def seen(workload: Workload = UP, adapters: Adapters | None = None, notes: tuple[Cond, ...] = ()) -> Observed:
    return Observed(workload, adapters, notes, ("tiny", "a", "b"), "http://edge.ns.svc:8000/v1")


@dataclass(frozen=True)
class Row:
    what: str
    seen: Observed | Waiting | Invalid
    ready: tuple[bool, str]
    requeue: bool
    available: tuple[bool, str] | None = None
    adapters: tuple[bool | None, str] | None = None  # None: no AdaptersReady condition
    message: str = ""  # a fragment of Ready's message
    others: dict[str, tuple[bool | None, str]] = field(default_factory=dict)
    degraded: tuple[bool, str] | None = None  # None: False, AsExpected (serving) or NotServing


ROWS = [
    Row("source not Ready yet", Waiting("QuantizationJob ns/q (spec.model.quantizationJobRef) is not Ready yet"),
        (False, Reason.WAITING_FOR_SOURCE), True, message="ns/q"),
    Row("spec cannot work", Invalid("spec.tensorParallelSize: 3 does not divide 32 attention heads"),
        (False, Reason.INVALID_SPEC), False, message="attention heads"),
    Row("source refused with its own reason", Invalid("FineTunedModel m is not merged", Reason.SOURCE_NOT_FOUND),
        (False, Reason.SOURCE_NOT_FOUND), False),
    Row("deployment progressing: no Pod ready", seen(Workload(desired=2, updated=2)),
        (False, Reason.DEPLOYING), True, (False, Reason.MINIMUM_REPLICAS_UNAVAILABLE), message="0/2"),
    Row("available and rolled out", seen(), (True, Reason.SUCCEEDED), False,
        (True, Reason.MINIMUM_REPLICAS_AVAILABLE), message="serving tiny, a, b at http://edge"),
    Row("serving while a rollout replaces Pods", seen(Workload(desired=2, ready=2, updated=1)),
        (True, Reason.MINIMUM_REPLICAS_AVAILABLE), True, (True, Reason.MINIMUM_REPLICAS_AVAILABLE),
        message="rollout in progress (2/2 replicas ready)"),
    Row("controller has not seen the new generation", seen(Workload(desired=2, ready=2, updated=2, current=False)),
        (True, Reason.MINIMUM_REPLICAS_AVAILABLE), True),
    Row("rollout blocked without a spare GPU: one Pod at a time",
        seen(Workload(desired=2, ready=1, updated=1), notes=(NO_SURGE,)),
        (True, Reason.MINIMUM_REPLICAS_AVAILABLE), True, (True, Reason.MINIMUM_REPLICAS_AVAILABLE),
        others={ROLLOUT: (True, Reason.MAX_SURGE_ZERO)}),
    Row("single replica unavailable while its replacement loads",
        seen(Workload(desired=1, updated=1), notes=(NO_SURGE,)),
        (False, Reason.DEPLOYING), True, (False, Reason.MINIMUM_REPLICAS_UNAVAILABLE),
        others={ROLLOUT: (True, Reason.MAX_SURGE_ZERO)}),
    Row("scaled to zero", seen(Workload(desired=0)), (True, Reason.SUCCEEDED), False,
        (True, Reason.SCALED_TO_ZERO)),
    Row("every adapter served on every ready Pod", seen(adapters=SERVED), (True, Reason.SUCCEEDED), False,
        adapters=(True, Reason.ALL_ADAPTERS_SERVED)),
    Row("adapters loading", seen(adapters=lora(pod("p0", ready("a"), ready("b")), pod("p1", ready("a"), loading("b")))),
        (False, Reason.ADAPTERS_LOADING), True, adapters=(False, Reason.ADAPTERS_LOADING), message="b served on 1/2"),
    Row("adapter failed to load", seen(adapters=lora(pod("p0", ready("a"), load_failed("b")))),
        (True, Reason.DEGRADED), False, adapters=(False, Reason.ADAPTER_LOAD_FAILED),
        message="404 No adapter found", degraded=(True, Reason.ADAPTER_LOAD_FAILED)),
    Row("adapter failed to load during a rollout", seen(Workload(desired=2, ready=1, updated=1),
                                                        lora(pod("p0", ready("a"), load_failed("b")))),
        (True, Reason.DEGRADED), True, adapters=(False, Reason.ADAPTER_LOAD_FAILED),
        degraded=(True, Reason.ADAPTER_LOAD_FAILED)),
    Row("removed adapter could not be unloaded",
        seen(adapters=lora(pod("p0", ready("a"), ready("b"), unload_failed("old")))),
        (True, Reason.DEGRADED), False, adapters=(False, Reason.ADAPTER_UNLOAD_FAILED),
        message="old could not be unloaded", degraded=(True, Reason.ADAPTER_UNLOAD_FAILED)),
    Row("removed adapter still being unloaded", seen(adapters=lora(pod("p0", ready("a"), ready("b"), unloading("old")))),
        (False, Reason.ADAPTERS_LOADING), True, adapters=(False, Reason.ADAPTERS_LOADING), message="unloading old"),
    Row("adapter refused as incompatible; the others are served",
        seen(adapters=lora(pod("p0", ready("a")), want=("a",), refused={"b": "rank 64 above maxLoraRank 16"})),
        (True, Reason.DEGRADED), False, adapters=(False, Reason.INCOMPATIBLE_ADAPTER),
        message="adapter b: rank 64 above maxLoraRank 16", degraded=(True, Reason.INCOMPATIBLE_ADAPTER)),
    Row("refused adapter and a failed load: both named",
        seen(adapters=lora(pod("p0", load_failed("a")), want=("a",), refused={"b": "uses DoRA"})),
        (True, Reason.DEGRADED), False, adapters=(False, Reason.INCOMPATIBLE_ADAPTER),
        message="404 No adapter found", degraded=(True, Reason.INCOMPATIBLE_ADAPTER)),
    Row("adapter's FineTunedModel not Ready yet",
        seen(adapters=lora(pod("p0", ready("a")), want=("a",), pending={"b": "FineTunedModel ns/b is not Ready"})),
        (False, Reason.ADAPTERS_LOADING), True, adapters=(False, Reason.ADAPTERS_LOADING), message="ns/b"),
    Row("a failed load outranks an adapter still waiting for its source",
        seen(adapters=lora(pod("p0", load_failed("a")), want=("a",), pending={"b": "not Ready"})),
        (True, Reason.DEGRADED), False, adapters=(False, Reason.ADAPTER_LOAD_FAILED),
        degraded=(True, Reason.ADAPTER_LOAD_FAILED)),
    Row("available but no ready Pod listed yet", seen(adapters=lora()),
        (False, Reason.ADAPTERS_LOADING), True, adapters=(False, Reason.NO_READY_PODS)),
    Row("a ready Pod does not answer", seen(adapters=lora(pod("p0", ready("a"), ready("b")), pod("p1", reachable=False))),
        (False, Reason.ADAPTERS_LOADING), True, adapters=(False, Reason.POD_UNREACHABLE), message="p1"),
    Row("no Pod runs: the image cannot be pulled", seen(Workload(desired=2, updated=2, cause=PULL)),
        (False, Reason.IMAGE_PULL_BACK_OFF), True, (False, Reason.IMAGE_PULL_BACK_OFF),
        message='0/2 replicas ready: pod edge-1 container "server": image "vllm:nope"'),
    Row("no Pod runs: no node has a free GPU", seen(Workload(desired=1, updated=1, cause=NO_GPU)),
        (False, Reason.UNSCHEDULABLE), True, (False, Reason.UNSCHEDULABLE), message="Insufficient nvidia.com/gpu"),
    Row("no Pod ever ran within the progress deadline", seen(Workload(desired=1, updated=1, cause=DEADLINE)),
        (False, Reason.PROGRESS_DEADLINE_EXCEEDED), True, (False, Reason.PROGRESS_DEADLINE_EXCEEDED),
        message="timed out progressing"),
    Row("serving while other Pods wait for a node: still a rollout in progress",
        seen(Workload(desired=2, ready=2, updated=1, cause=NO_GPU)),
        (True, Reason.MINIMUM_REPLICAS_AVAILABLE), True, message='(2/2 replicas ready); not ready: pod edge-1 cannot be scheduled'),
    Row("serving while the rollout's Pods cannot pull their image: Degraded",
        seen(Workload(desired=2, ready=2, updated=1, cause=PULL)),
        (True, Reason.DEGRADED), True, message='Pods of the rollout fail: pod edge-1 container "server"',
        degraded=(True, Reason.IMAGE_PULL_BACK_OFF)),
    Row("serving, but the rollout is past its deadline: Degraded", seen(Workload(desired=2, ready=2, updated=1, cause=DEADLINE)),
        (True, Reason.DEGRADED), True, message="rollout stuck (2/2 replicas ready)",
        degraded=(True, Reason.PROGRESS_DEADLINE_EXCEEDED)),
    # A hand edit of the Deployment: the new revision's Pod crash-loops while the old one still serves. Ready
    # and updated replicas both read 1/1; only the Pods of the old revision still counted give it away.
    Row("hand-edited Deployment: the new Pod crash-loops while the old one serves",
        seen(Workload(desired=1, ready=1, updated=1, total=2, cause=CRASH)),
        (True, Reason.DEGRADED), True, message="model path /mnt/pvc/models/typo does not exist",
        degraded=(True, Reason.CRASH_LOOP_BACK_OFF)),
    Row("hand-edited Deployment: the new Pod still starts, the old one serves",
        seen(Workload(desired=1, ready=1, updated=1, total=2)),
        (True, Reason.MINIMUM_REPLICAS_AVAILABLE), True, message="rollout in progress"),
    Row("scaling down: every Pod of the latest revision", seen(Workload(desired=1, ready=3, updated=3, total=3)),
        (True, Reason.SUCCEEDED), False),
    Row("scaled to zero with adapters: nothing to load, nothing to wait for",
        seen(Workload(desired=0), lora()), (True, Reason.SUCCEEDED), False, (True, Reason.SCALED_TO_ZERO),
        adapters=(None, Reason.SCALED_TO_ZERO), message="scaled to zero"),
    Row("scaled to zero with a refused adapter: still refused",
        seen(Workload(desired=0), lora(want=("a",), refused={"b": "uses DoRA"})), (True, Reason.DEGRADED),
        False, (True, Reason.SCALED_TO_ZERO), adapters=(False, Reason.INCOMPATIBLE_ADAPTER),
        message="scaled to zero", degraded=(True, Reason.INCOMPATIBLE_ADAPTER)),
    Row("not available: Deploying, whatever the adapters say",
        seen(Workload(desired=1), lora(pod("p0", load_failed("a")), want=("a",))),
        (False, Reason.DEPLOYING), True, (False, Reason.MINIMUM_REPLICAS_UNAVAILABLE),
        adapters=(False, Reason.ADAPTER_LOAD_FAILED)),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.what for r in ROWS])
def test_conditions(row: Row) -> None:
    verdict = decide(row.seen)
    got = {c.type: c for c in verdict.conditions}
    assert [c.type for c in verdict.conditions][-1] == READY, "Ready is decided last, from the others"
    assert (got[READY].status, got[READY].reason) == row.ready
    assert row.message in got[READY].message
    assert verdict.requeue is row.requeue
    if isinstance(row.seen, Waiting | Invalid):
        assert set(got) == {READY}
        return
    assert (got[AVAILABLE].status, got[AVAILABLE].reason) == (
        row.available or (True, Reason.MINIMUM_REPLICAS_AVAILABLE)
    )
    if row.adapters is None:
        assert ADAPTERS_READY not in got
    else:
        assert (got[ADAPTERS_READY].status, got[ADAPTERS_READY].reason) == row.adapters
    for type_, want in row.others.items():
        assert (got[type_].status, got[type_].reason) == want
    serving = got[AVAILABLE].status
    default = (False, Reason.AS_EXPECTED if serving else Reason.NOT_SERVING)
    assert (got[DEGRADED].status, got[DEGRADED].reason) == (row.degraded or default)


def _wire(verdict_conditions: tuple[Cond, ...]) -> list[Condition]:
    words = {True: "True", False: "False", None: "Unknown"}
    return [Condition(type=c.type, status=words[c.status], reason=c.reason, message=c.message,
                      last_transition_time="2026-01-01T00:00:00Z") for c in verdict_conditions]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[r.what for r in ROWS])
def test_phase_of_a_serving_service_is_never_failed(row: Row) -> None:
    """The phase is derived from the conditions as written: a service with a replica that serves reads Ready
    (also when Degraded) or Running, never Failed or Pending."""
    conditions = _wire(decide(row.seen).conditions)
    phase = derive_phase(conditions)
    got = {c.type: c for c in conditions}
    if AVAILABLE in got and got[AVAILABLE].status == "True":
        assert phase in ("Ready", "Running"), (row.what, phase)
    if got[READY].reason == Reason.DEGRADED:
        assert phase == "Ready"


@pytest.mark.parametrize(
    ("what", "adapters", "want"),
    [
        ("served everywhere", SERVED, {"a": ("Ready", 2), "b": ("Ready", 2)}),
        ("loading on one Pod", lora(pod("p0", ready("a"), ready("b")), pod("p1", ready("a"), loading("b"))),
         {"a": ("Ready", 2), "b": ("Loading", 1)}),
        ("failed", lora(pod("p0", ready("a"), load_failed("b"))), {"a": ("Ready", 1), "b": ("Failed", 0)}),
        ("no ready Pod: not handed to any yet", lora(), {"a": ("Pending", 0), "b": ("Pending", 0)}),
        ("refused and waiting for a source",
         lora(pod("p0", ready("a")), want=("a",), refused={"b": "DoRA"}, pending={"c": "not Ready"}),
         {"a": ("Ready", 1), "b": ("Failed", 0), "c": ("Pending", 0)}),
    ],
)  # fmt: skip
def test_adapter_states(what: str, adapters: Adapters, want: dict[str, tuple[str, int]]) -> None:
    states = adapter_states(adapters)
    assert [s.name for s in states] == sorted(want), what
    assert {s.name: (s.state, s.ready_pods) for s in states} == want
    failed = next((s for s in states if s.state == "Failed"), None)
    assert failed is None or failed.message
