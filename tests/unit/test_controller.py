"""The control loop without a server: what queues a resource, errors that stay with their object, reads
that come from memory and wake their reader when what they read changes."""

from __future__ import annotations

from typing import Any

from kubernetes import client

from tuneops import controller as c
from tuneops import labels, metrics
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile.base import Context, Outcome

NS = "ns"
OBJ = {"apiVersion": "tuneops.io/v1alpha1", "kind": "FineTunedModel",
       "metadata": {"name": "m", "namespace": NS, "generation": 1, "uid": "u1", "resourceVersion": "10"},
       "spec": {}}  # fmt: skip
KEY = ("FineTunedModel", NS, "m")


class NoServer(k.Kube):
    """Every request to the server is a test failure: reads must come from memory."""

    def __init__(self) -> None:
        super().__init__(client.ApiClient())
        self.requests: list[str] = []

    def _call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        self.requests.append(f"{method} {path}")
        raise AssertionError(f"unexpected request {method} {path}")


def make(reconcile: Any) -> c.Controller:
    ctl = c.Controller(NoServer(), OperatorConfig(), {"FineTunedModel": reconcile}, namespaces=[NS])
    for inf in ctl.own + ctl.children:
        inf._synced.set()  # as if listed: empty
        inf.served = True
    ctl.own[0].store.upsert(dict(OBJ))
    return ctl


def job(name: str, rv: str = "5", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "status": status,
            "metadata": {"name": name, "namespace": NS, "resourceVersion": rv,
                         "labels": {labels.MANAGED_BY: "tuneops", labels.OWNER: "u1"}}}  # fmt: skip


def test_error_backoff_doubles_to_a_cap_with_jitter() -> None:
    mid = [c.error_backoff(n, rng=lambda: 0.5) for n in range(1, 12)]
    assert mid[:5] == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert max(mid) == c.ERROR_BACKOFF_CAP_S
    assert c.error_backoff(3, rng=lambda: 0.0) == 3.0 and c.error_backoff(3, rng=lambda: 1.0) == 5.0


def test_an_exception_stays_with_its_object_and_is_retried_with_growing_backoff() -> None:
    calls = {"n": 0}

    def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
        calls["n"] += 1
        if calls["n"] <= 3:
            raise KeyError("a field the code did not expect")
        return Outcome(ready=True, reason="Succeeded")

    ctl = make(reconcile)
    errors = metrics.RECONCILE_ERRORS.labels(kind="FineTunedModel")
    before = errors._value.get()
    due = []
    for _ in range(3):
        assert ctl.process(KEY) is None
        due.append(ctl.queue._due[KEY])
        ctl.queue._due.clear()
        ctl.queue._heap.clear()
    assert errors._value.get() - before == 3
    assert ctl.tracker._failures[KEY] == 3
    outcome = ctl.process(KEY)
    assert outcome is not None and outcome.ready
    assert ctl.tracker._failures == {} and len(ctl.queue) == 0  # settled: nothing queued


def test_a_step_in_progress_is_looked_at_again_after_the_poll_interval() -> None:
    ctl = make(lambda ctx, obj: Outcome(requeue_after=ctx.poll_seconds, reason="JobPending"))
    ctl.process(KEY)
    assert len(ctl.queue) == 1 and ctl.queue.pending(now_only=True) == 0


def test_reads_come_from_memory_and_a_change_to_what_was_read_wakes_the_reader() -> None:
    seen: list[Any] = []

    def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
        seen.append(ctx.kube.get(k.JOB, NS, "m-inspect"))
        seen.append([p["metadata"]["name"] for p in ctx.kube.list(k.POD, NS, {"job-name": "m-inspect"})])
        return Outcome(requeue_after=30.0)

    ctl = make(reconcile)
    jobs = next(i for i in ctl.children if i.rtype == k.JOB)
    jobs.store.upsert(job("m-inspect"))
    ctl.process(KEY)
    assert seen[0]["metadata"]["name"] == "m-inspect" and seen[1] == []
    assert isinstance(ctl.cache.base, NoServer) and ctl.cache.base.requests == []
    ctl.queue = type(ctl.queue)()  # forget the fallback requeue
    # A Job nobody read changes: nothing is queued.
    ctl._child_event(k.JOB)("MODIFIED", job("other"), None)
    assert len(ctl.queue) == 0
    # The Job the reconcile read finishes: its reader is due now.
    ctl._child_event(k.JOB)("MODIFIED", job("m-inspect", "6", succeeded=1), job("m-inspect"))
    assert ctl.queue.pending(now_only=True) == 1
    ctl.queue = type(ctl.queue)()
    # A Pod of that Job appears (a list by selector was read): due now as well; another Job's Pod is not.
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p2", "namespace": NS, "labels": {"job-name": "x", labels.MANAGED_BY: "tuneops"}}}  # fmt: skip
    ctl._child_event(k.POD)("ADDED", pod, None)
    assert len(ctl.queue) == 0
    pod["metadata"]["labels"]["job-name"] = "m-inspect"
    ctl._child_event(k.POD)("ADDED", pod, None)
    assert ctl.queue.pending(now_only=True) == 1


def test_own_status_changes_do_not_queue_the_resource_but_spec_and_annotations_do() -> None:
    after = {**OBJ, "status": {"phase": "Ready"}}
    assert not c.asks_for_work(OBJ, after)
    assert c.asks_for_work(OBJ, {**OBJ, "metadata": {**OBJ["metadata"], "generation": 2}})  # type: ignore[dict-item]
    refresh = {**OBJ["metadata"], "annotations": {labels.REFRESH: "1"}}  # type: ignore[dict-item]
    assert c.asks_for_work(OBJ, {**OBJ, "metadata": refresh})
    assert c.asks_for_work(None, OBJ)


def test_a_deleted_resource_is_forgotten() -> None:
    ctl = make(lambda ctx, obj: Outcome(ready=True, reason="Succeeded"))
    ctl.process(KEY)
    ctl.tracker.record(KEY, "True", "Succeeded")
    ctl.own[0].store.delete(NS, "m")
    assert ctl.process(KEY) is None
    assert KEY not in ctl.tracker._states and len(ctl.cache.deps) == 0


def test_a_change_during_the_pass_to_what_it_already_read_wakes_it() -> None:
    ctl: c.Controller

    def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
        ctx.kube.get(k.JOB, NS, "m-inspect")
        # The Job finishes while this pass is still under way (before its reads are recorded at the end).
        ctl._child_event(k.JOB)("MODIFIED", job("m-inspect", "6", succeeded=1), job("m-inspect"))
        return Outcome()

    ctl = make(reconcile)
    next(i for i in ctl.children if i.rtype == k.JOB).store.upsert(job("m-inspect"))
    ctl.process(KEY)
    assert ctl.queue.pending(now_only=True) == 1
