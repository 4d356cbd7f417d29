"""What wakes a resource: each row of the declared watches (tuneops.watches.TABLE) through the controller's own
event handlers, from memory, and the table in docs/reliability.md against the module's."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from tuneops import controller as c
from tuneops import labels, watches
from tuneops.api import KINDS
from tuneops.config import Features, OperatorConfig
from tuneops.kube import client as k
from tuneops.kube import types as kt
from tuneops.reconcile.base import Context, Outcome
from tuneops.validation.references import references

ROOT = Path(__file__).resolve().parents[2]
NS, OTHER = "ns", "other"
KINDS3 = ("FineTunedModel", "QuantizationJob", "InferenceService", "LoRAAdapter")


class NoServer(k.Kube):
    """Every request to the server is a test failure: all of this happens in memory."""

    def __init__(self) -> None:
        super().__init__(client.ApiClient())

    def _call(self, method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"unexpected request {method} {path}")


def resource(kind: str, name: str, spec: dict[str, Any] | None = None, ns: str = NS, rv: str = "1",
             generation: int = 1, uid: str | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {"apiVersion": "tuneops.io/v1alpha1", "kind": kind, "spec": spec or {}, **extra,
            "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{kind}-{ns}-{name}",
                         "generation": generation, "resourceVersion": rv}}  # fmt: skip


def uid_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["uid"])


def child(rtype: k.ResourceType, name: str, owner: dict[str, Any] | None, *, controller: bool = True,
          uid: str | None = None, owner_uid: str | None = None, ns: str = NS, rv: str = "1",
          pod_labels: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """An object of `rtype` whose controller ownerReference names `owner` (by its uid, or `owner_uid`)."""
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": uid or f"uid-{rtype.kind}-{name}",
                            "resourceVersion": rv, "labels": {labels.MANAGED_BY: "tuneops", **(pod_labels or {})}}  # fmt: skip
    if owner is not None:
        meta["ownerReferences"] = [{"apiVersion": owner["apiVersion"], "kind": owner["kind"],
                                    "name": owner["metadata"]["name"], "uid": owner_uid or uid_of(owner),
                                    "controller": controller}]  # fmt: skip
    return {"apiVersion": rtype.api_version, "kind": rtype.kind, "metadata": meta}


def pod(name: str, kind: str, owner_name: str, owner_uid: str, **kw: Any) -> dict[str, Any]:
    """A Pod whose controller is the `kind` (Job, ReplicaSet, StatefulSet) `owner_name` of `owner_uid`."""
    ref = {"apiVersion": "v1", "kind": kind, "metadata": {"name": owner_name, "uid": owner_uid}}
    return child(k.POD, name, ref, **kw)


def qj_spec(source: str, ns: str | None = None) -> dict[str, Any]:
    ref = {"name": source} | ({"namespace": ns} if ns else {})
    return {"source": {"fineTunedModelRef": ref}, "method": "gguf"}


def isvc_spec(qjob: str, qns: str | None, adapter: str) -> dict[str, Any]:
    model = {"quantizationJobRef": {"name": qjob} | ({"namespace": qns} if qns else {})}
    return {"runtime": "vllm", "model": model,
            "lora": {"adapters": [{"name": "a", "fineTunedModelRef": {"name": adapter}}]}}  # fmt: skip


class Bed:
    """A controller of the three kinds in two namespaces, listed (kopf's first listing) with `objs`, every
    child informer synced and empty."""

    def __init__(self, *objs: dict[str, Any], cross_namespace: bool = True) -> None:
        ok = lambda ctx, obj: Outcome(ready=True, reason="Succeeded")  # noqa: E731
        config = OperatorConfig(allow_cross_namespace_refs=cross_namespace)
        self.ctl = c.Controller(NoServer(), config, dict.fromkeys(KINDS3, ok), namespaces=[NS, OTHER])
        for inf in self.ctl.children:
            inf._synced.set()
            inf.served = True
        for obj in objs:
            self.ctl.listed(obj["kind"], obj)
        first = objs[0] if objs else resource("FineTunedModel", "placeholder")
        self.ctl.event(first["kind"], None, first)
        self.ctl.queue = type(self.ctl.queue)()

    def hold(self, rtype: k.ResourceType, obj: dict[str, Any]) -> None:
        """A child in its informer's store, as listed (no callback)."""
        ns = obj["metadata"]["namespace"]
        inf = next(i for i in self.ctl.children if i.rtype == rtype and i.namespace == ns)
        assert inf.store.upsert(obj)

    def child_event(
        self, rtype: k.ResourceType, type_: str, obj: dict[str, Any], before: Any = None
    ) -> set[str]:
        return self._due(lambda: self.ctl._child_event(rtype)(type_, obj, before))

    def event(self, type_: str | None, obj: dict[str, Any]) -> set[str]:
        """kopf's event handler for a tuneops resource."""
        return self._due(lambda: self.ctl.event(obj["kind"], type_, obj))

    def _due(self, action: Any) -> set[str]:
        self.ctl.queue = type(self.ctl.queue)()
        action()
        return {f"{kind}/{ns}/{name}" for kind, ns, name in self.ctl.queue._due}


def name(obj: dict[str, Any]) -> str:
    return f"{obj['kind']}/{obj['metadata']['namespace']}/{obj['metadata']['name']}"


# ----- the table --------------------------------------------------------------------------------------------


def test_the_table_in_the_docs_is_the_modules() -> None:
    doc = (ROOT / "docs" / "reliability.md").read_text()
    section = doc.split("#### What wakes a resource\n", 1)[1]
    # The first table under the heading, line for line as the module writes it.
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    table = "\n".join(lines[start:end]) + "\n"
    assert table == watches.markdown(), (
        "docs/reliability.md: paste tuneops.watches.markdown() under the heading"
    )
    assert set(watches.TABLE) == set(KINDS3) == set(KINDS) and set(watches.TABLE) <= set(kt.CUSTOM)


@pytest.mark.parametrize("pdb_v1, hpa_v2", [(True, True), (False, False)])
def test_every_child_kind_the_operator_watches_is_owned_by_a_row_and_every_owned_kind_is_watched(
    pdb_v1: bool, hpa_v2: bool
) -> None:
    config = OperatorConfig(features=Features(pdb_v1=pdb_v1, hpa_v2=hpa_v2))
    watched = {t.kind for t in c.child_types(config)}
    owned = {o.kind for row in watches.TABLE.values() for o in row.owns}
    assert watched == owned
    vias = {o.via for row in watches.TABLE.values() for o in row.owns if o.via is not None}
    assert vias <= owned and all(o.kind == "Pod" for row in watches.TABLE.values() for o in row.owns if o.via)


def _fields(kind: str, spec: dict[str, Any]) -> dict[str, set[str]]:
    parsed = KINDS[kind].parse_spec(
        {"apiVersion": "tuneops.io/v1alpha1", "metadata": {"name": "x"}, "spec": spec}
    )
    out: dict[str, set[str]] = {}
    for ref in references(parsed):
        out.setdefault(ref.kind, set()).add(re.sub(r"\[\d+\]", "[]", ref.field))
    return out


def test_the_watches_column_names_every_reference_a_spec_can_hold() -> None:
    isvc_ftm = {"runtime": "vllm", "model": {"fineTunedModelRef": {"name": "f"}},
                "lora": {"adapters": [{"name": "a", "fineTunedModelRef": {"name": "g"}}]}}  # fmt: skip
    found = {
        "FineTunedModel": _fields(
            "FineTunedModel",
            {
                "baseModel": {"uri": "pvc://m/b"},
                "adapter": {"uri": "pvc://m/a"},
                "benchmark": {"enabled": True, "serviceRef": {"name": "s"}},
            },
        ),
        "QuantizationJob": _fields("QuantizationJob", qj_spec("m")),
        "InferenceService": _fields("InferenceService", isvc_ftm),
        "LoRAAdapter": _fields("LoRAAdapter", {"serviceRef": {"name": "s"}, "uri": "s3://b/a"}),
    }
    for kind, fields in _fields("InferenceService", isvc_spec("q", None, "f")).items():
        found["InferenceService"].setdefault(kind, set()).update(fields)
    for kind, row in watches.TABLE.items():
        assert {r.kind: set(r.fields) for r in row.watches} == found[kind], kind


# ----- Owns ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "owner_kind, rtype",
    [
        (row.kind, next(t for t in c.child_types(OperatorConfig()) if t.kind == o.kind))
        for row in watches.TABLE.values()
        for o in row.owns
        if o.via is None
    ],
)
def test_a_child_wakes_exactly_its_owner(owner_kind: str, rtype: k.ResourceType) -> None:
    owner = resource(owner_kind, "a")
    # Every kind with a resource of the same name in the same namespace, and one more of the owner's kind.
    others = [resource(kind, "a") for kind in KINDS3 if kind != owner_kind] + [resource(owner_kind, "b")]
    bed = Bed(owner, *others)
    obj = child(rtype, "a-child", owner)
    assert bed.child_event(rtype, "ADDED", obj) == {name(owner)}
    changed = child(rtype, "a-child", owner, rv="2")
    assert bed.child_event(rtype, "MODIFIED", changed, obj) == {name(owner)}
    assert bed.child_event(rtype, "DELETED", changed, changed) == {name(owner)}
    assert isinstance(bed.ctl.cache.base, NoServer)


def test_a_pod_wakes_the_owner_of_its_job_deployment_or_leaderworkerset() -> None:
    ftm, qjob, isvc = (
        resource("FineTunedModel", "m"),
        resource("QuantizationJob", "q"),
        resource("InferenceService", "s"),
    )
    bed = Bed(ftm, qjob, isvc, resource("InferenceService", "t"))
    job_m, job_q = child(k.JOB, "m-merge-1", ftm), child(k.JOB, "q-quantize-1", qjob)
    deployment, lws = child(k.DEPLOYMENT, "s", isvc), child(k.LWS, "s-tp", isvc)
    for rtype, obj in ((k.JOB, job_m), (k.JOB, job_q), (k.DEPLOYMENT, deployment), (k.LWS, lws)):
        bed.hold(rtype, obj)
    cases = {
        "FineTunedModel/ns/m": pod("p1", "Job", "m-merge-1", uid_of(job_m)),
        "QuantizationJob/ns/q": pod("p2", "Job", "q-quantize-1", uid_of(job_q)),
        "InferenceService/ns/s": pod(
            "p3", "ReplicaSet", "s-7d9f", "rs-uid", pod_labels={"pod-template-hash": "7d9f"}
        ),
    }
    for owner, p in cases.items():
        assert bed.child_event(k.POD, "ADDED", p) == {owner}, owner
        assert bed.ctl.cache.owned(k.POD, p)  # the same link the informer's owner filter keeps it by
    for sts in ("s-tp", "s-tp-1"):  # a LeaderWorkerSet's leaders and a group of workers
        p = pod(f"p-{sts}", "StatefulSet", sts, f"sts-{sts}")
        assert bed.child_event(k.POD, "MODIFIED", p, p) == {"InferenceService/ns/s"}
        assert bed.ctl.cache.owned(k.POD, p)


def test_a_forged_or_stale_owner_reference_wakes_nothing() -> None:
    ftm, isvc = resource("FineTunedModel", "m"), resource("InferenceService", "s")
    bed = Bed(ftm, isvc)
    job = child(k.JOB, "m-merge-1", ftm)
    bed.hold(k.JOB, job)
    bed.hold(k.DEPLOYMENT, child(k.DEPLOYMENT, "s", isvc))
    forged = [
        (k.JOB, child(k.JOB, "j", ftm, owner_uid="a-uid-nobody-holds")),  # the right name, a made-up uid
        (k.JOB, child(k.JOB, "j", resource("FineTunedModel", "gone"))),  # a resource not held
        (k.JOB, child(k.JOB, "j", ftm, controller=False)),  # an owner, but not the controller
        (k.JOB, child(k.JOB, "j", None)),  # no owner at all
        (k.SERVICE, child(k.SERVICE, "s", isvc, owner_uid=uid_of(ftm))),  # another resource's uid
        (k.POD, pod("p", "Job", "m-merge-1", "not-the-jobs-uid")),
        (k.POD, pod("p", "Job", "other-job", uid_of(job))),
        (k.POD, pod("p", "ReplicaSet", "t-7d9f", "rs", pod_labels={"pod-template-hash": "7d9f"})),
        (k.POD, pod("p", "ReplicaSet", "s-7d9f", "rs")),  # no pod-template-hash: no link to the Deployment
        (k.POD, pod("p", "StatefulSet", "s", "sts")),  # no LeaderWorkerSet held
        (k.POD, pod("p", "FineTunedModel", "m", uid_of(ftm))),  # a Pod made to look like the resource's own
    ]
    for rtype, obj in forged:
        assert bed.child_event(rtype, "ADDED", obj) == set(), obj["metadata"]


def test_a_child_of_a_kind_its_owner_does_not_own_wakes_nothing() -> None:
    ftm, isvc = resource("FineTunedModel", "m"), resource("InferenceService", "s")
    bed = Bed(ftm, isvc)
    assert bed.child_event(k.DEPLOYMENT, "ADDED", child(k.DEPLOYMENT, "d", ftm)) == set()
    assert bed.child_event(k.JOB, "ADDED", child(k.JOB, "j", isvc)) == set()
    job = child(k.JOB, "j", isvc)
    bed.hold(k.JOB, job)  # a Job of an InferenceService: its Pods do not wake it either
    assert bed.child_event(k.POD, "ADDED", pod("p", "Job", "j", uid_of(job))) == set()


def test_a_child_that_moves_to_another_owner_wakes_both() -> None:
    a, b = resource("InferenceService", "a"), resource("InferenceService", "b")
    bed = Bed(a, b)
    before, after = child(k.SERVICE, "x", a), child(k.SERVICE, "x", b, rv="2")
    assert bed.child_event(k.SERVICE, "MODIFIED", after, before) == {name(a), name(b)}


# ----- Watches ------------------------------------------------------------------------------------------------


def test_a_sources_change_wakes_its_users_across_namespaces() -> None:
    ftm, adapter = resource("FineTunedModel", "m"), resource("FineTunedModel", "f")
    qjob = resource("QuantizationJob", "q", qj_spec("m", NS), ns=OTHER)
    isvc = resource("InferenceService", "s", isvc_spec("q", OTHER, "f"))
    bystander = resource("QuantizationJob", "b", qj_spec("elsewhere"))
    bed = Bed(ftm, adapter, qjob, isvc, bystander)
    # The source's status alone (the operator's own write): its users, not the source itself.
    ready = resource("FineTunedModel", "m", rv="2", status={"phase": "Ready"})
    assert bed.event("MODIFIED", ready) == {"QuantizationJob/other/q"}
    assert bed.event("MODIFIED", resource("QuantizationJob", "q", qj_spec("m", NS), ns=OTHER, rv="2",
                                          status={"phase": "Ready"})) == {name(isvc)}  # fmt: skip
    # An adapter's FineTunedModel: the service that lists it.
    assert bed.event("MODIFIED", resource("FineTunedModel", "f", rv="2", generation=2)) == {
        "FineTunedModel/ns/f", name(isvc)}  # fmt: skip
    # Listed again unchanged (kopf's watch expired): nothing.
    assert bed.event(None, resource("FineTunedModel", "f", rv="2", generation=2)) == set()
    assert isinstance(bed.ctl.cache.base, NoServer)


def test_a_user_that_references_a_source_before_it_exists_is_woken_when_it_appears() -> None:
    qjob = resource("QuantizationJob", "q", qj_spec("later"))
    bed = Bed(qjob)
    source = resource("FineTunedModel", "later")
    assert bed.event("ADDED", source) == {name(source), name(qjob)}
    # It appeared after the listing too: a user made after the operator started.
    user = resource("InferenceService", "s", isvc_spec("not-yet", None, "later"), rv="3")
    assert bed.event("ADDED", user) == {name(user)}
    made = resource("QuantizationJob", "not-yet", qj_spec("later"), rv="4")
    assert bed.event("ADDED", made) == {name(made), name(user)}


def test_a_reference_the_operator_refuses_to_follow_is_not_watched() -> None:
    elsewhere = resource("QuantizationJob", "q", qj_spec("m", OTHER))
    itself = resource(
        "InferenceService", "s", {"runtime": "vllm", "model": {"quantizationJobRef": {"name": "s"}}}
    )
    invalid = resource(
        "QuantizationJob", "bad", {"source": {"fineTunedModelRef": {"name": "m"}}, "method": "nope"}
    )
    bed = Bed(elsewhere, itself, invalid, cross_namespace=False)
    assert bed.ctl.watches.references_of(("QuantizationJob", NS, "q")) == frozenset()
    assert bed.event("ADDED", resource("FineTunedModel", "m", ns=OTHER)) == {"FineTunedModel/other/m"}
    assert bed.event("ADDED", resource("FineTunedModel", "m")) == {
        "FineTunedModel/ns/m"
    }  # not the invalid one


def test_a_deleted_resource_or_a_dropped_reference_is_no_longer_watched() -> None:
    ftm, isvc = resource("FineTunedModel", "m"), resource("InferenceService", "s")
    user = resource("QuantizationJob", "q", qj_spec("m"))
    bed = Bed(ftm, isvc, user)
    assert bed.event("MODIFIED", resource("FineTunedModel", "m", rv="2")) == {name(user)}
    # The user's spec now names another source: the first no longer wakes it, the second does.
    moved = resource("QuantizationJob", "q", qj_spec("n"), rv="3", generation=2)
    assert bed.event("MODIFIED", moved) == {name(user)}
    assert bed.event("MODIFIED", resource("FineTunedModel", "m", rv="4")) == set()
    assert bed.event("ADDED", resource("FineTunedModel", "n", rv="5")) == {"FineTunedModel/ns/n", name(user)}
    # Being deleted, then deleted: the user is queued (to be forgotten) and watches nothing any more.
    going = resource("QuantizationJob", "q", qj_spec("n"), rv="6", generation=2)
    going["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert bed.event("MODIFIED", going) == {name(user)}
    assert bed.event("MODIFIED", resource("FineTunedModel", "n", rv="7")) == set()
    assert bed.event("DELETED", going) == {name(user)}
    assert bed.ctl.process(("QuantizationJob", NS, "q")) is None
    assert bed.ctl.watches.references_of(("QuantizationJob", NS, "q")) == frozenset()
    # An owner deleted: its children's changes wake nothing (the garbage collector takes them).
    svc = child(k.SERVICE, "s", isvc)
    assert bed.child_event(k.SERVICE, "ADDED", svc) == {name(isvc)}
    assert bed.event("DELETED", isvc) == {name(isvc)}
    assert bed.child_event(k.SERVICE, "DELETED", svc, svc) == set()
    assert len(bed.ctl.watches) == 2  # m and n: what is held, and nothing of what went


def test_a_changed_spec_is_read_again_only_when_its_generation_moves() -> None:
    user = resource("QuantizationJob", "q", qj_spec("m"))
    bed = Bed(user)
    calls: list[str] = []
    real = bed.ctl.watches._targets

    def counted(kind: str, obj: dict[str, Any]) -> frozenset[watches.Key]:
        calls.append(obj["metadata"]["resourceVersion"])
        return real(kind, obj)

    bed.ctl.watches._targets = counted  # type: ignore[method-assign]
    bed.event("MODIFIED", resource("QuantizationJob", "q", qj_spec("m"), rv="2", status={"phase": "Ready"}))
    assert calls == []
    bed.event("MODIFIED", resource("QuantizationJob", "q", qj_spec("n"), rv="3", generation=2))
    assert calls == ["3"]


def test_a_reconcile_that_reads_no_longer_decides_what_wakes_it() -> None:
    """The reads a pass makes are not recorded: a Job it read but does not own wakes nothing."""

    def reconcile(ctx: Context, obj: dict[str, Any]) -> Outcome:
        ctx.kube.get(k.JOB, NS, "someone-elses")
        return Outcome(ready=True, reason="Succeeded")

    ftm, other = resource("FineTunedModel", "m"), resource("FineTunedModel", "o")
    bed = Bed(ftm, other)
    bed.ctl.reconcilers["FineTunedModel"] = reconcile
    theirs = child(k.JOB, "someone-elses", other)
    bed.hold(k.JOB, theirs)
    bed.ctl.process(("FineTunedModel", NS, "m"))
    assert bed.child_event(k.JOB, "MODIFIED", child(k.JOB, "someone-elses", other, rv="2"), theirs) == {
        name(other)
    }
    assert not hasattr(bed.ctl.cache, "deps") and not hasattr(bed.ctl.cache, "tracking")
