"""Informers without a server: pages, projection, the owner filter, copies, 410 Gone, ERROR events, backoff on
disconnects, a list again that changes nothing, and the lost wake-up of a write's answer."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client

from tuneops import backoff, labels
from tuneops.kube import client as k
from tuneops.kube import informer as inf
from tuneops.kube import types as kt
from tuneops.kube.cache import CachedKube

NS = "ns"
MANAGED = {labels.MANAGED_BY: labels.MANAGED_BY_VALUE}


def obj(kind: str, name: str, rv: str, uid: str | None = None, owner: dict[str, Any] | None = None,
        **extra: Any) -> dict[str, Any]:  # fmt: skip
    api = {"ConfigMap": "v1", "Pod": "v1", "Job": "batch/v1", "FineTunedModel": "tuneops.io/v1alpha1"}[kind]
    meta: dict[str, Any] = {"name": name, "namespace": NS, "resourceVersion": rv, "uid": uid or f"uid-{name}",
                            "labels": dict(MANAGED)}  # fmt: skip
    if "generation" in extra:
        meta["generation"] = extra.pop("generation")
    if owner is not None:
        meta["ownerReferences"] = [{"controller": True, **owner}]
    return {"apiVersion": api, "kind": kind, "metadata": meta, **extra}


class FakeApi(k.Kube):
    """Lists from `pages` (by continue token), watches from `streams` (each a list of events or an exception)."""

    def __init__(self) -> None:
        super().__init__(client.ApiClient())
        self.objects: list[dict[str, Any]] = []
        self.list_rv = "100"
        self.queries: list[list[tuple[str, str]]] = []
        self.streams: list[Any] = []
        self.gets: list[str] = []

    def _call(
        self, method: str, path: str, body: Any = None, query: Any = None, content_type: str = ""
    ) -> Any:
        if method == "GET" and query is not None:
            self.queries.append(list(query))
            q = dict(query)
            start, limit = int(q.get("continue") or 0), int(q["limit"])
            items = [inf.copy_of(o) for o in self.objects[start : start + limit]]
            more = start + limit < len(self.objects)
            return {"metadata": {"resourceVersion": self.list_rv, "continue": str(start + limit) if more else ""},
                    "items": items}  # fmt: skip
        if method == "GET":
            self.gets.append(path)
            name = path.rsplit("/", 1)[1]
            found = [o for o in self.objects if o["metadata"]["name"] == name]
            if not found:
                raise k.NotFound(method, path, "")
            return inf.copy_of(found[0])
        raise AssertionError(f"unexpected {method} {path}")

    def watch(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
        stream = self.streams.pop(0) if self.streams else []
        if isinstance(stream, Exception):
            raise stream
        yield from stream


def informer(
    api: FakeApi, rtype: k.ResourceType, **kw: Any
) -> tuple[inf.Informer, list[tuple[str, Any, Any]]]:
    seen: list[tuple[str, Any, Any]] = []
    i = inf.Informer(
        api, rtype, name="t", namespace=NS, on_event=lambda t, o, b: seen.append((t, o, b)), **kw
    )
    return i, seen


def test_lists_in_pages_with_limit_and_continue() -> None:
    api = FakeApi()
    api.objects = [obj("Job", f"j{n}", str(n)) for n in range(25)]
    i, seen = informer(api, k.JOB, page_size=10)
    assert i._list() == "100"
    assert len(i.store) == 25 and i.pages == 3
    assert [dict(q).get("continue") for q in api.queries] == [None, "10", "20"]
    assert all(dict(q)["limit"] == "10" for q in api.queries)
    assert [t for t, _, _ in seen] == ["SYNCED"]
    assert (
        inf.Informer(api, k.CONFIGMAP).page_size == inf.PAGE_SIZES["ConfigMap"]
    )  # large objects: small pages


def test_projection_keeps_what_the_reconcilers_read() -> None:
    pod = obj("Pod", "p", "1", spec={"containers": [{"name": "c", "image": "i"}], "initContainers": [],
                                     "volumes": [{"name": "v"}], "serviceAccountName": "sa",
                                     "tolerations": [{"key": "x" * 1000}], "affinity": {"big": "y" * 1000}},
              status={"phase": "Running"})  # fmt: skip
    pod["metadata"]["managedFields"] = [{"manager": "x"}]
    kept = inf.project(inf.copy_of(pod))
    assert set(kept["spec"]) == {"containers", "initContainers", "volumes", "serviceAccountName"}
    assert kept["status"] == {"phase": "Running"} and "managedFields" not in kept["metadata"]
    small = obj("ConfigMap", "small", "1", data={"template": "{{ x }}"})
    assert inf.project(inf.copy_of(small))["data"] == {"template": "{{ x }}"}
    big = obj("ConfigMap", "big", "1", data={"blob": "x" * (inf.MAX_DATA_BYTES + 1)})
    assert inf.project(big)["data"] == {"tuneops.io/dropped-bytes": str(inf.MAX_DATA_BYTES + 5)}
    job = obj("Job", "j", "1", spec={"template": {"spec": {"containers": [{"name": "c"}]}}})
    assert (
        inf.project(inf.copy_of(job))["spec"] == job["spec"]
    )  # a Job keeps its template (job_pod compares it)


def test_readers_get_copies() -> None:
    api = FakeApi()
    api.objects = [obj("Job", "j", "1", status={"active": 1})]
    i, _ = informer(api, k.JOB)
    i._list()
    got = i.get(NS, "j")
    assert got is not None
    got["status"]["active"] = 99
    got["metadata"]["labels"]["x"] = "y"
    i.store.list(NS)[0]["status"]["succeeded"] = 1
    assert i.get(NS, "j") == api.objects[0]


def cached(api: FakeApi) -> tuple[CachedKube, inf.Informer, dict[k.ResourceType, inf.Informer]]:
    cache = CachedKube(api)
    own = inf.Informer(api, k.FINETUNEDMODEL, name="own", namespace=NS)
    cache.add(own)
    kids = {rt: inf.Informer(api, rt, name=rt.plural, namespace=NS, selector=MANAGED) for rt in (k.JOB, k.POD, k.CONFIGMAP)}  # fmt: skip
    for child in kids.values():
        cache.add(child)
    own._synced.set()
    own.store.upsert(obj("FineTunedModel", "m", "1", uid="ftm-uid"))
    return cache, own, kids


def test_children_are_kept_only_when_a_live_tuneops_resource_controls_them() -> None:
    api = FakeApi()
    cache, _own, kids = cached(api)
    ours = {"kind": "FineTunedModel", "name": "m", "uid": "ftm-uid"}
    forged = {"kind": "FineTunedModel", "name": "m", "uid": "made-up"}
    not_controller = obj("ConfigMap", "tenant-not-controller", "4")
    not_controller["metadata"]["ownerReferences"] = [
        {"uid": "ftm-uid", "kind": "FineTunedModel", "name": "m"}
    ]
    api.objects = [
        obj("ConfigMap", "tenant-none", "2", data={"x": "y"}),  # labelled, no owner
        obj("ConfigMap", "tenant-forged", "3", owner=forged),  # an owner that is not a live resource
        not_controller,  # names a live resource, but not as its controller
        obj("ConfigMap", "ours", "5", owner=ours),
    ]
    cms = kids[k.CONFIGMAP]
    cms._list()
    assert cms.store.held_keys() == [(NS, "ours")]
    # Pods: controlled by a Job held (by uid), not by one a tenant names.
    job = obj("Job", "m-inspect", "6", uid="job-uid", owner=ours)
    api.objects = [job]
    kids[k.JOB]._list()
    api.objects = [
        obj("Pod", "real", "7", owner={"kind": "Job", "name": "m-inspect", "uid": "job-uid"}),
        obj("Pod", "forged", "8", owner={"kind": "Job", "name": "m-inspect", "uid": "other"}),
        obj("Pod", "bare", "9"),
    ]
    kids[k.POD]._list()
    assert kids[k.POD].store.held_keys() == [(NS, "real")]
    # A watch event of a tenant object is not kept either, and a write of ours is.
    kids[k.CONFIGMAP].handle("ADDED", obj("ConfigMap", "tenant-2", "10", data={"x": "y" * 100}))
    assert cms.store.peek(NS, "tenant-2") is None
    cache._written(obj("ConfigMap", "ours-2", "11", owner=ours))
    assert cms.store.peek(NS, "ours-2") is not None


def test_a_child_seen_before_its_owner_is_read_again_when_the_owner_arrives() -> None:
    api = FakeApi()
    _cache, own, kids = cached(api)
    early = obj("Job", "n-inspect", "20", owner={"kind": "FineTunedModel", "name": "n", "uid": "n-uid"})
    kids[k.JOB]._synced.set()
    kids[k.JOB].handle("ADDED", inf.copy_of(early))
    assert kids[k.JOB].store.peek(NS, "n-inspect") is None
    api.objects = [early]
    own.store.upsert(obj("FineTunedModel", "n", "21", uid="n-uid"))  # however it comes: kopf feeds this store
    assert kids[k.JOB].store.peek(NS, "n-inspect") is not None


def test_410_gone_lists_again_and_hands_over_only_what_changed() -> None:
    api = FakeApi()
    api.objects = [obj("Job", "a", "1"), obj("Job", "b", "2"), obj("Job", "c", "3")]
    i, seen = informer(api, k.JOB)
    version = i._list()
    assert version is not None
    api.streams = [[{"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}]]
    with pytest.raises(inf._Expired):
        i._watch_once(version)
    # Meanwhile: b changed, c went, d came. Versions are compared for equality only (a smaller number is news too).
    api.objects = [obj("Job", "a", "1"), obj("Job", "b", "0"), obj("Job", "d", "4")]
    seen.clear()
    i._list()
    assert sorted((t, o["metadata"]["name"]) for t, o, _ in seen) == [
        ("ADDED", "d"), ("DELETED", "c"), ("MODIFIED", "b")]  # fmt: skip


def test_a_list_again_that_changes_nothing_hands_over_nothing() -> None:
    api = FakeApi()
    api.objects = [obj("Job", f"j{n}", str(n)) for n in range(50)]
    i, seen = informer(api, k.JOB)
    i._list()
    seen.clear()
    api.list_rv = "200"
    assert i._list() == "200"
    assert seen == []  # no event: nothing is queued, no fleet re-run


def test_watch_events_are_handed_over_once_and_bookmarks_move_the_version() -> None:
    api = FakeApi()
    i, seen = informer(api, k.JOB)
    i._list()
    a1, a2 = obj("Job", "a", "5"), obj("Job", "a", "6", status={"active": 1})
    api.streams = [[{"type": "ADDED", "object": a1}, {"type": "MODIFIED", "object": inf.copy_of(a1)},
                    {"type": "MODIFIED", "object": a2}, {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "9"}}},
                    {"type": "DELETED", "object": obj("Job", "a", "10")}]]  # fmt: skip
    assert i._watch_once("100") == "10"
    assert [(t, o["metadata"]["resourceVersion"]) for t, o, _ in seen[1:]] == [
        ("ADDED", "5"), ("MODIFIED", "6"), ("DELETED", "10")]  # fmt: skip
    api.streams = [[{"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "12"}}}]]
    assert i._watch_once("10") == "12" and len(seen) == 4


def test_error_events_and_disconnects_back_off_with_jitter_and_list_again() -> None:
    api = FakeApi()
    i, seen = informer(api, k.JOB)
    api.objects = [obj("Job", "a", "1")]
    waits: list[float] = []
    i.backoff = backoff.Backoff(inf.WATCH_BACKOFF_BASE_S, inf.WATCH_BACKOFF_CAP_S, rng=lambda: 0.5)

    def pause(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 6:
            i.stop()

    i._pause = pause  # type: ignore[method-assign]
    error = {
        "type": "ERROR",
        "object": {"kind": "Status", "code": 500, "reason": "InternalError", "message": "x"},
    }
    api.streams = [[error], ConnectionResetError("reset"), k.ApiError(503, "WATCH", "/", "")] + [[error]] * 10
    i._run()
    assert waits == [0.5, 1.0, 2.0, 4.0, 8.0, 16.0]  # doubling (jitter mid-point here), not a fixed 1 s
    assert i.lists == 6
    assert [t for t, _, _ in seen] == ["SYNCED"]  # listed six times, nothing changed: nothing handed over
    spread = {round(backoff.delay(3, 0.5, 30.0, rng=r), 3) for r in (lambda: 0.0, lambda: 1.0)}
    assert spread == {3.0, 5.0}
    assert backoff.delay(40, 0.5, 30.0, rng=lambda: 0.5) == 30.0


def test_a_410_relists_at_once_but_a_watch_that_keeps_expiring_backs_off() -> None:
    api = FakeApi()
    i, _ = informer(api, k.JOB)
    waits: list[float] = []

    def pause(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            i.stop()

    i._pause = pause  # type: ignore[method-assign]
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410}}
    api.streams = [[gone]] * 5
    i._run()
    assert i.lists == 3 and len(waits) == 2  # the first 410 lists again at once


def test_a_change_that_lands_between_a_pass_read_and_its_write_is_not_lost() -> None:
    """The lost wake-up. A pass reads its resource at generation 1; a spec change (generation 2, version 11)
    lands; the pass's own status write answers with version 12, which carries generation 2, and goes into the
    store. The watch event of the spec change then compares against that copy: no generation change is seen and
    nothing wakes the resource until the 30 s poll. Every change must be handed over once, with the copy held
    before it: the write's answer itself is handed over (generation 1 -> 2)."""
    api = FakeApi()
    cache = CachedKube(api)
    own, seen = informer(api, k.FINETUNEDMODEL)
    cache.add(own)
    own._synced.set()
    own.served = True
    own.store.upsert(obj("FineTunedModel", "m", "10", uid="u", generation=1))
    spec_change = obj("FineTunedModel", "m", "11", uid="u", generation=2)
    answer = obj("FineTunedModel", "m", "12", uid="u", generation=2, status={"phase": "Pending"})
    cache._written(inf.copy_of(answer))  # the status write's answer, newest copy
    api.streams = [[{"type": "MODIFIED", "object": inf.copy_of(spec_change)},
                    {"type": "MODIFIED", "object": inf.copy_of(answer)}]]  # fmt: skip
    own._watch_once("10")
    generations = [
        ((b or {}).get("metadata", {}).get("generation"), o["metadata"]["generation"]) for _, o, b in seen
    ]
    assert (1, 2) in generations, generations  # someone saw the spec change
    assert len(seen) == 1  # and only once: the watch's copies of the same versions are no news
    held = own.store.peek(NS, "m")
    assert (
        held is not None and held["metadata"]["resourceVersion"] == "12"
    )  # the older event did not replace it


def test_upsert_of_the_version_held_counts_as_stored_and_an_event_before_our_write_does_not() -> None:
    store = inf.Store()
    store.written(obj("FineTunedModel", "m", "12", uid="u", generation=2))
    assert not store.upsert(obj("FineTunedModel", "m", "11", uid="u", generation=2))  # before our write
    assert store.upsert(obj("FineTunedModel", "m", "12", uid="u", generation=2))  # our write's own event
    assert store.upsert(obj("FineTunedModel", "m", "3", uid="u", generation=3))  # then anything: opaque
    assert store.upsert(obj("FineTunedModel", "m", "1", uid="new-uid"))  # recreated: another object


def test_a_write_answer_that_comes_after_the_watch_moved_on_does_not_replace_the_newer_version() -> None:
    """Our create's answer (rv 5) reaches the store after the watch already brought rv 5 and the controller's
    status write (rv 6): the answer is older than what is held, and keeping it would hide rv 6 for good (the
    object then changes no more). Found with the operator in a container: a Deployment ready at once stayed
    at 0/1 replicas in status."""
    store = inf.Store()
    assert store.upsert(obj("Job", "j", "5", uid="u"))  # ADDED, from the watch
    assert store.upsert(obj("Job", "j", "6", uid="u", status={"ready": 1}))  # MODIFIED by a controller
    stored, _ = store.written(obj("Job", "j", "5", uid="u"))  # the late answer to our own create
    assert not stored
    held = store.peek(NS, "j")
    assert held is not None and held["metadata"]["resourceVersion"] == "6" and held["status"] == {"ready": 1}
    # An answer the watch has not brought yet is still taken at once (the next read sees our write).
    stored, _ = store.written(obj("Job", "j", "7", uid="u"))
    assert stored


def test_children_wait_for_owners_that_list_past_an_owner_kind_with_nothing_to_list(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An owner kind with no object never begins listing; the children's informer passes it after
    DEPENDS_WAIT_S and goes on waiting for the owners whose listing has begun (a restart with thousands of
    owners otherwise lists the children first: a GET per child)."""
    monkeypatch.setattr(inf, "DEPENDS_WAIT_S", 0.1)
    monkeypatch.setattr(inf, "DEPENDS_LISTING_WAIT_S", 5.0)
    api = FakeApi()
    empty = inf.Informer(api, kt.LORAADAPTER, name="empty", namespace=NS)  # never lists
    slow = inf.Informer(api, k.FINETUNEDMODEL, name="slow", namespace=NS)
    slow.listing.set()  # its listing has begun, and ends 0.6 s later
    child = inf.Informer(api, k.JOB, name="child", namespace=NS)
    child.depends = lambda: [empty, slow]
    threading.Timer(0.6, slow._synced.set).start()
    t0 = time.monotonic()
    child._wait_for_depends()
    waited = time.monotonic() - t0
    assert slow.synced and 0.5 <= waited < 2.0, waited
    # and a listing that never ends is waited for DEPENDS_LISTING_WAIT_S at most
    monkeypatch.setattr(inf, "DEPENDS_LISTING_WAIT_S", 0.3)
    stuck = inf.Informer(api, kt.QUANTIZATIONJOB, name="stuck", namespace=NS)
    stuck.listing.set()
    child.depends = lambda: [empty, stuck]
    t0 = time.monotonic()
    child._wait_for_depends()
    assert time.monotonic() - t0 < 1.0
