"""The control loop without a server: what queues a resource, errors that stay with their object, reads
that come from memory, and a child's change that wakes its owner (the table itself: test_watches.py)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import kopf
from kubernetes import client

from tuneops import controller as c
from tuneops import labels, metrics, runner
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
    for inf in ctl.children:
        inf._synced.set()  # as if listed: empty
        inf.served = True
    # kopf's first listing: the index handler stores the object, then the first event handler call.
    ctl.listed("FineTunedModel", dict(OBJ))
    ctl.event("FineTunedModel", None, dict(OBJ))
    ctl.queue = type(ctl.queue)()
    return ctl


def job(name: str, rv: str = "5", owner_uid: str = "u1", **status: Any) -> dict[str, Any]:
    """A Job of the FineTunedModel OBJ (its controller ownerReference names it, by uid)."""
    return {"apiVersion": "batch/v1", "kind": "Job", "status": status,
            "metadata": {"name": name, "namespace": NS, "resourceVersion": rv, "uid": f"job-{name}",
                         "labels": {labels.MANAGED_BY: "tuneops", labels.OWNER: owner_uid},
                         "ownerReferences": [{"apiVersion": "tuneops.io/v1alpha1", "kind": "FineTunedModel",
                                              "name": "m", "uid": owner_uid, "controller": True}]}}  # fmt: skip


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


def test_reads_come_from_memory_and_a_change_to_an_owned_child_wakes_its_owner() -> None:
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
    # A Job whose controller is a uid the operator does not hold changes: nothing is queued.
    ctl._child_event(k.JOB)("MODIFIED", job("other", owner_uid="not-held"), None)
    assert len(ctl.queue) == 0
    # The resource's own Job finishes: its owner is due now.
    ctl._child_event(k.JOB)("MODIFIED", job("m-inspect", "6", succeeded=1), job("m-inspect"))
    assert ctl.queue.pending(now_only=True) == 1
    ctl.queue = type(ctl.queue)()
    # A Pod of that Job appears: its owner is due as well; a Pod of a Job the operator does not hold wakes nothing.
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "p2", "namespace": NS, "labels": {"job-name": "m-inspect", labels.MANAGED_BY: "tuneops"},
                        "ownerReferences": [{"kind": "Job", "name": "x", "uid": "job-x", "controller": True}]}}  # fmt: skip
    ctl._child_event(k.POD)("ADDED", pod, None)
    assert len(ctl.queue) == 0
    pod["metadata"]["ownerReferences"] = [{"kind": "Job", "name": "m-inspect", "uid": "job-m-inspect", "controller": True}]  # fmt: skip
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
    ctl.event("FineTunedModel", "DELETED", dict(OBJ))
    assert ctl.queue.pending(now_only=True) == 1
    assert ctl.process(KEY) is None
    assert KEY not in ctl.tracker._states and len(ctl.watches) == 0


def test_a_change_during_the_pass_to_its_own_child_wakes_it() -> None:
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


# ----- kopf's handlers feed the stores and the queue ------------------------------------------------------------

KINDS = ("FineTunedModel", "QuantizationJob", "InferenceService")


def three_kinds(reconcile: Any = None) -> c.Controller:
    fn = reconcile or (lambda ctx, obj: Outcome(ready=True, reason="Succeeded"))
    ctl = c.Controller(NoServer(), OperatorConfig(), dict.fromkeys(KINDS, fn), namespaces=[NS])
    for inf in ctl.children:
        inf._synced.set()
        inf.served = True
    return ctl


def obj(kind: str, name: str, rv: str, generation: int = 1, **extra: Any) -> dict[str, Any]:
    return {"apiVersion": "tuneops.io/v1alpha1", "kind": kind, "spec": {}, **extra,
            "metadata": {"name": name, "namespace": NS, "generation": generation, "uid": f"u-{name}",
                         "resourceVersion": rv, "managedFields": [{"manager": "kubectl"}]}}  # fmt: skip


def test_kopf_registers_an_index_and_an_event_handler_for_exactly_the_three_kinds_and_nothing_that_writes() -> (
    None
):
    ctl = three_kinds()
    registry = runner.build_registry(ctl, NoServer(), None, threading.Event())
    for handlers in (registry._indexing.get_all_handlers(), registry._watching.get_all_handlers()):
        selectors = sorted((h.selector.group, h.selector.version, h.selector.plural) for h in handlers)
        assert selectors == [("tuneops.io", "v1alpha1", p)
                             for p in ("finetunedmodels", "inferenceservices", "quantizationjobs")]  # fmt: skip
    # No change, daemon, timer or webhook handler: kopf keeps no state (annotations, finalizers) on the objects.
    assert list(registry._changing.get_all_handlers()) == []
    assert list(registry._spawning.get_all_handlers()) == []
    assert list(registry._webhooks.get_all_handlers()) == []
    settings = runner.operator_settings()
    assert settings.posting.enabled is False and settings.scanning.disabled is True


def test_kopf_handlers_feed_the_store_and_the_queue() -> None:
    ctl = three_kinds()
    registry = runner.build_registry(ctl, NoServer(), None, threading.Event())
    index = {h.selector.plural: h.fn for h in registry._indexing.get_all_handlers()}
    on_event = {h.selector.plural: h.fn for h in registry._watching.get_all_handlers()}
    first = obj("FineTunedModel", "m", "10")
    source = obj("FineTunedModel", "s", "11")

    async def listing() -> None:
        # The first listing: index handlers for every object before any event handler (kopf's order).
        assert await index["finetunedmodels"](body=kopf.Body(first)) is None
        assert await index["finetunedmodels"](body=kopf.Body(source)) is None
        assert len(ctl.queue) == 0 and not ctl.own[0].synced
        assert await on_event["finetunedmodels"](event={"type": None, "object": first}) is None

    asyncio.run(listing())
    # Every store is complete and read from memory, every listed resource queued once.
    assert all(feed.synced for feed in ctl.own)
    assert sorted(key[2] for key in ctl.queue._due) == ["m", "s"]
    held = ctl.cache.get(k.FINETUNEDMODEL, NS, "m")
    assert held is not None and "managedFields" not in held["metadata"]
    assert "managedFields" in first["metadata"]  # kopf's own copy is left alone
    assert isinstance(ctl.cache.base, NoServer) and ctl.cache.base.requests == []


def test_what_an_event_of_a_tuneops_kind_queues() -> None:
    seen: list[Any] = []

    def reconcile(ctx: Context, current: dict[str, Any]) -> Outcome:
        if current["kind"] == "QuantizationJob":
            seen.append(ctx.kube.get(k.FINETUNEDMODEL, NS, "m"))  # its source
        return Outcome(ready=True, reason="Succeeded")

    ctl = three_kinds(reconcile)
    source = {"source": {"fineTunedModelRef": {"name": "m"}}, "method": "gguf"}
    model, quant = obj("FineTunedModel", "m", "10"), obj("QuantizationJob", "q", "12", spec=source)
    ctl.listed("FineTunedModel", model)
    ctl.listed("QuantizationJob", quant)
    ctl.event("QuantizationJob", None, quant)
    assert ctl.process(("QuantizationJob", NS, "q")) is not None and seen[0]["metadata"]["name"] == "m"

    def due(event: str | None, body: dict[str, Any]) -> list[str]:
        ctl.queue = type(ctl.queue)()
        ctl.event(body["kind"], event, body)
        return sorted(f"{kind}/{name}" for kind, _, name in ctl.queue._due)

    # Listed again (kopf's watch expired) and unchanged: nothing.
    assert due(None, model) == []
    # Its status alone (the operator's own write): the resource is not queued, its user (Watches) is.
    assert due("MODIFIED", obj("FineTunedModel", "m", "13", status={"phase": "Ready"})) == [
        "QuantizationJob/q"
    ]
    # Its spec: the resource and its reader.
    assert due("MODIFIED", obj("FineTunedModel", "m", "14", generation=2)) == [
        "FineTunedModel/m", "QuantizationJob/q"]  # fmt: skip
    # Deleted: gone from memory, queued (to be forgotten) with its user.
    assert due("DELETED", obj("FineTunedModel", "m", "15", generation=2)) == [
        "FineTunedModel/m", "QuantizationJob/q"]  # fmt: skip
    assert ctl.cache.get(k.FINETUNEDMODEL, NS, "m") is None
    # Another namespace than the one watched: not kept.
    other = {**obj("FineTunedModel", "x", "16"), "metadata": {"name": "x", "namespace": "elsewhere"}}
    assert due("ADDED", other) == []


def test_kopf_logs_in_with_the_operators_own_credentials() -> None:
    cfg = client.Configuration()
    cfg.host = "https://10.0.0.1:6443"
    cfg.ssl_ca_cert = "/var/run/ca.crt"
    cfg.api_key = {"BearerToken": "secret-token"}
    cfg.api_key_prefix = {"BearerToken": "Bearer"}
    info = runner.connection_info(k.Kube(client.ApiClient(cfg)))
    assert (info.server, info.ca_path, info.scheme, info.token) == (
        "https://10.0.0.1:6443", "/var/run/ca.crt", "Bearer", "secret-token")  # fmt: skip
    assert info.insecure is False and info.certificate_path is None
    cfg.api_key, cfg.cert_file, cfg.key_file = {}, "/tmp/c.crt", "/tmp/c.key"
    info = runner.connection_info(k.Kube(client.ApiClient(cfg)))
    assert (info.token, info.certificate_path, info.private_key_path) == (None, "/tmp/c.crt", "/tmp/c.key")
