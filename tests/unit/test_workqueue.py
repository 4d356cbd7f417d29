"""The work queue and the informers' store: each key once, never to two workers, earliest time wins."""

from __future__ import annotations

import threading

from tuneops.kube.informer import Store
from tuneops.workqueue import WorkQueue


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_queued_once_at_its_earliest_time() -> None:
    clock = Clock()
    q: WorkQueue[str] = WorkQueue(clock)
    q.add("a", 30.0)
    q.add("a", 5.0)
    q.add("a", 60.0)
    assert len(q) == 1 and q.get(timeout=0) is None
    clock.now += 5.0
    assert q.get(timeout=0) == "a"
    assert q.get(timeout=0) is None


def test_a_key_added_while_held_comes_back_after_done_and_never_twice_at_once() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.add("a")
    assert q.get(timeout=0) == "a"
    q.add("a")  # changed while a worker reconciles it
    assert q.get(timeout=0) is None  # not to a second worker
    q.done("a")
    assert q.get(timeout=0) == "a"
    q.done("a")
    assert len(q) == 0


def test_get_waits_for_a_key_and_close_releases_waiters() -> None:
    q: WorkQueue[str] = WorkQueue()
    got: list[str | None] = []
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    q.add("x")
    t.join(5)
    assert got == ["x"]
    t = threading.Thread(target=lambda: got.append(q.get()))
    t.start()
    q.close()
    t.join(5)
    assert got == ["x", None]


def obj(name: str, rv: str, **labels: str) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": rv, "labels": labels}}


def test_store_lists_by_indexed_and_plain_labels_and_keeps_the_newest_copy() -> None:
    s = Store(index_keys=("job-name",))
    s.replace([obj("p1", "1", **{"job-name": "j1", "role": "a"}), obj("p2", "2", **{"job-name": "j2"})])
    assert [o["metadata"]["name"] for o in s.list("ns", {"job-name": "j1"})] == ["p1"]  # type: ignore[index]
    assert [o["metadata"]["name"] for o in s.list("ns", {"role": "a"})] == ["p1"]  # type: ignore[index]
    assert s.list("other", {"job-name": "j1"}) == []
    # Versions are opaque: only a write of ours still awaited tells an older event (one before it) apart.
    ours, before = obj("p1", "7", **{"job-name": "j1"}), obj("p1", "0", **{"job-name": "j1"})
    ours["metadata"]["uid"] = before["metadata"]["uid"] = "u"  # type: ignore[index]
    s.written(ours)
    assert not s.upsert(before)  # an event from before our write's: the write's answer stays
    assert s.upsert(obj("p1", "3", **{"job-name": "j9"}))  # relabelled: the index follows
    assert s.list("ns", {"job-name": "j1"}) == [] and len(s.list("ns", {"job-name": "j9"})) == 1
    s.delete("ns", "p1")
    assert s.list("ns", {"job-name": "j9"}) == [] and len(s) == 1


def test_the_store_keeps_no_managed_fields() -> None:
    from tuneops.kube.informer import slim

    o = obj("p", "1")
    o["metadata"]["managedFields"] = [{"manager": "tuneops"}]  # type: ignore[index]
    assert "managedFields" not in slim(o)["metadata"]  # type: ignore[operator]
