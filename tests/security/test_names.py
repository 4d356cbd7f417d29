"""A crafted resource name never takes over another resource's children.

Two attacks from an audit, and what stops them:

- a resource named like another's sanitized-and-hashed child name (`llama.v2` next to the literal
  `llama-v2-<hash>`) rendered the same Deployment and Service, and the two reconciles took them from each other
  on every pass. Names are now literal or hashed, never both (a hashed one carries `--`, a literal one never),
  with a 64-bit hash;
- a crafted 63-character name equal to a long name's cut-and-hashed instance label shared the other's
  selectors. Label values follow the same scheme.

And where a name is taken anyway (a person made the object, or another resource holds it), the operator
neither writes nor deletes it: the resource reads `Ready=False, reason=NameConflict`, naming both.
"""

from __future__ import annotations

import copy
import itertools
import re
from typing import Any, cast

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.unit.render_support import owner, validate
from tuneops import labels
from tuneops.api import parse_spec
from tuneops.api.conditions import READY, Reason
from tuneops.api.finetunedmodel import FineTunedModelSpec
from tuneops.api.inferenceservice import InferenceServiceSpec
from tuneops.api.quantizationjob import QuantizationJobSpec
from tuneops.config import OperatorConfig
from tuneops.kube import client as k
from tuneops.reconcile import RECONCILERS
from tuneops.reconcile.base import Context, Waiting
from tuneops.reconcile.inferenceservice import apply_children
from tuneops.render import (
    Owner,
    ResolvedAdapter,
    ResolvedModel,
    render_finetunedmodel,
    render_inferenceservice,
    render_quantizationjob,
)
from tuneops.render.names import MARK, bounded_name, content_hash, label_value, step_name
from tuneops.render.serving.types import workload_name
from tuneops.render.volumes import pvc_volume_name

CFG = OperatorConfig()
MODEL = ResolvedModel(uri="pvc://models/m", digest="sha256:m1", format="hf", num_attention_heads=32)
ADAPTER = ResolvedAdapter("support", "pvc://adapters/support", "sha256:a1", 8)
DNS_1035 = re.compile(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?")
LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")

LONG = "m" * 70
LONG_PREFIX = "support-assistant-for-the-payments-team-in-emea-region-llama"  # 60 characters


def _spec(kind: str, body: dict[str, Any]) -> Any:
    return parse_spec(kind, {"kind": kind, "metadata": {"name": "x"}, "spec": body})


FTM = _spec("FineTunedModel", {"baseModel": {"uri": "hf://org/base", "revision": "main"},
                               "adapter": {"uri": "pvc://adapters/a"}, "output": {"uri": "pvc://models/out"}})  # fmt: skip
QJOB = _spec("QuantizationJob", {"source": {"uri": "pvc://models/m"}, "method": "awq",
                                 "qualityGate": {"maxPerplexityIncreasePct": 5}})  # fmt: skip
# Every child kind a service can have: ConfigMap (vLLM), Deployment, Service, PDB (2 replicas), NetworkPolicy
# (dynamic LoRA without a key).
ISVC = _spec("InferenceService", {"model": {"uri": MODEL.uri}, "replicas": 2,
                                  "lora": {"adapters": [{"name": "support", "uri": ADAPTER.uri}]}})  # fmt: skip
assert isinstance(FTM, FineTunedModelSpec)
assert isinstance(QJOB, QuantizationJobSpec)
assert isinstance(ISVC, InferenceServiceSpec)

KINDS = ("FineTunedModel", "QuantizationJob", "InferenceService")


def render(kind: str, name: str) -> list[dict[str, Any]]:
    o = owner(kind, name, uid=f"uid-{kind}-{name}")
    if kind == "FineTunedModel":
        return render_finetunedmodel(cast(FineTunedModelSpec, FTM), o, CFG, adapter_digest="sha256:abc")
    if kind == "QuantizationJob":
        return render_quantizationjob(cast(QuantizationJobSpec, QJOB), o, CFG, source=MODEL)
    r = render_inferenceservice(cast(InferenceServiceSpec, ISVC), o, CFG, model=MODEL, adapters=[ADAPTER])
    return list(r.manifests)


def children(kind: str, name: str) -> set[tuple[str, str]]:
    return {(m["kind"], m["metadata"]["name"]) for m in render(kind, name)}


def selectors(kind: str, name: str) -> set[tuple[tuple[str, str], ...]]:
    """Every label set that selects Pods of this owner (the Deployment's, the Service's, the Jobs' Pods')."""
    out = set()
    for m in render(kind, name):
        spec = m.get("spec") or {}
        if m["kind"] == "Service":
            out.add(tuple(sorted(spec["selector"].items())))
        elif m["kind"] == "Deployment":
            out.add(tuple(sorted(spec["selector"]["matchLabels"].items())))
        elif m["kind"] == "Job":
            pod = spec["template"]["metadata"]["labels"]
            out.add(
                tuple(sorted((key, pod[key]) for key in (labels.INSTANCE, labels.KIND, labels.COMPONENT)))
            )
    return out


# (first, second): the second is crafted against the first.
HOSTILE = [
    ("llama.v2", bounded_name("llama.v2")),  # the literal of the dotted name's hashed child name
    ("llama.v2", "llama-v2"),
    ("llama.v2", "llama-v2-" + content_hash("llama.v2")[:8]),  # the old scheme's child name, as a literal
    (LONG_PREFIX + "-a-long-tail", LONG_PREFIX + "-another-tail"),  # share a 60-character prefix
    (LONG, label_value(LONG)),  # a 63-character literal of a long name's cut label
    (LONG, bounded_name(LONG)),
    (LONG, LONG[:54] + "-0a1b2c3d"),  # 63 characters, the old cut-and-hash shape
    (LONG, "m" * 63),
    ("a--b", "a-b"),
    ("a--b", bounded_name("a--b")),
    ("a---b", "a--b"),
    ("7b-chat", "t7b-chat"),
    ("7b-chat", bounded_name("7b-chat")),
    ("x", "x-vllm"),  # a service's ConfigMap `<name>-vllm` vs a service named so
    ("m", "m-merge"),  # `<cr>-<step>-<hash>`: a FineTunedModel named like another's Job prefix
    ("m", step_name("m", "merge", "0" * 64)),
    ("m.merge", "m-merge"),
]


@pytest.mark.parametrize(("first", "second"), HOSTILE, ids=[f"{a[:20]}|{b[:24]}" for a, b in HOSTILE])
def test_hostile_pairs_share_no_child_name_and_no_selector(first: str, second: str) -> None:
    assert first != second
    assert label_value(first) != label_value(second)
    for ka, kb in itertools.product(KINDS, KINDS):
        a, b = children(ka, first), children(kb, second)
        assert not a & b, f"{ka} {first!r} and {kb} {second!r} share {a & b}"
        sa, sb = selectors(ka, first), selectors(kb, second)
        assert not sa & sb, f"{ka} {first!r} and {kb} {second!r} select the same Pods: {sa & sb}"


@pytest.mark.parametrize("name", sorted({n for pair in HOSTILE for n in pair}))
def test_every_hostile_name_renders_valid_children(name: str) -> None:
    for kind in KINDS:
        for m in render(kind, name):
            assert DNS_1035.fullmatch(m["metadata"]["name"]), m["metadata"]["name"]
            assert LABEL_VALUE.fullmatch(m["metadata"]["labels"][labels.INSTANCE])
            if m["kind"] in ("Service", "Deployment", "Job"):
                validate(m)


def test_one_name_of_three_kinds_renders_apart() -> None:
    """A FineTunedModel, a QuantizationJob and an InferenceService may all be called `m`."""
    seen = [children(kind, "m") for kind in KINDS]
    assert all(not a & b for a, b in itertools.combinations(seen, 2))
    sel = [selectors(kind, "m") for kind in KINDS]
    assert all(not a & b for a, b in itertools.combinations(sel, 2))


def test_plain_names_are_kept_as_written() -> None:
    assert workload_name(owner("InferenceService", "support-bot")) == "support-bot"
    names = children("InferenceService", "support-bot")
    assert ("Service", "support-bot") in names and ("Deployment", "support-bot") in names
    assert ("ConfigMap", "support-bot-vllm") in names
    assert re.fullmatch(r"support-bot-merge-[0-9a-f]{8}", step_name("support-bot", "merge", "ab" * 32))
    assert label_value("support-bot") == "support-bot"
    assert label_value("m" * 63) == "m" * 63 and bounded_name("m" * 63) == "m" * 63
    assert pvc_volume_name("models") == "pvc-models"


def test_hashed_names_carry_the_mark_and_64_bits() -> None:
    for hashed in (bounded_name("llama.v2"), bounded_name(LONG), label_value(LONG), bounded_name("7b")):
        readable, _, digest = hashed.rpartition(MARK)
        assert readable and re.fullmatch(r"[0-9a-f]{16}", digest) and len(hashed) <= 63
    assert bounded_name("llama.v2").startswith("llama-v2--")


# ------------------------------------------------------------------------- the scheme, over generated names

NAME_CHARS = "abcz0189-._"
names = st.text(NAME_CHARS, min_size=1, max_size=90)
# Names crafted from others: the literal of a name's hashed form, its label, cuts and dashes.
crafted = names.flatmap(
    lambda n: st.sampled_from(
        [n, bounded_name(n), label_value(n), n[:63], n.replace(".", "-"), n.replace("--", "-"), "t" + n]
    )
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(names, crafted), min_size=2, max_size=12, unique=True))
def test_names_and_labels_are_one_to_one(written: list[str]) -> None:
    made = [bounded_name(n) for n in written]
    assert len(set(made)) == len(written)
    values = [label_value(n) for n in written]
    assert len(set(values)) == len(written)
    for n, name, value in zip(written, made, values, strict=True):
        assert DNS_1035.fullmatch(name) and len(name) <= 63
        assert LABEL_VALUE.fullmatch(value) and len(value) <= 63
        # Literal exactly when already valid, short and unmarked; hashed ones always carry the mark.
        assert (name == n) == (MARK not in n and bool(DNS_1035.fullmatch(n)))
        assert (name != n) == (MARK in name)
        assert (value != n) == (MARK in value)


@settings(max_examples=300, deadline=None)
@given(names, names)
def test_a_name_and_the_literal_of_its_child_names_never_meet(first: str, suffix: str) -> None:
    for second in (bounded_name(first), label_value(first), bounded_name(first) + suffix):
        if second != first:
            assert bounded_name(second) != bounded_name(first)
            assert label_value(second) != label_value(first)


STEPS = ("inspect", "merge", "quantize", "evaluate")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(names, crafted),
            st.sampled_from(STEPS),
            st.text("0123456789abcdef", min_size=8, max_size=8),
        ),
        min_size=2,
        max_size=10,
        unique=True,
    )
)
def test_job_names_are_one_to_one_in_owner_step_and_spec(jobs: list[tuple[str, str, str]]) -> None:
    assert len({step_name(cr, step, h) for cr, step, h in jobs}) == len(jobs)


# ------------------------------------------------------------- a name that is taken: neither written nor read


class Memory:
    """The objects of one namespace; records every write."""

    def __init__(self, objs: list[dict[str, Any]]):
        self.objs = {(o["kind"], o["metadata"]["name"]): copy.deepcopy(o) for o in objs}
        self.writes: list[tuple[str, str, str]] = []
        self.status: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, rtype: k.ResourceType, namespace: str | None, name: str) -> dict[str, Any] | None:
        found = self.objs.get((rtype.kind, name))
        return copy.deepcopy(found) if found is not None else None

    def list(
        self, rtype: k.ResourceType, namespace: str | None, selector: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        return [
            copy.deepcopy(o)
            for (kind, _), o in self.objs.items()
            if kind == rtype.kind
            and all((o["metadata"].get("labels") or {}).get(a) == b for a, b in (selector or {}).items())
        ]

    def apply(self, obj: dict[str, Any], field_manager: str = "") -> dict[str, Any]:
        self.writes.append(("apply", obj["kind"], obj["metadata"]["name"]))
        self.objs[(obj["kind"], obj["metadata"]["name"])] = copy.deepcopy(obj)
        return obj

    def delete(self, rtype: k.ResourceType, namespace: str | None, name: str, **_: Any) -> None:
        self.writes.append(("delete", rtype.kind, name))
        self.objs.pop((rtype.kind, name), None)

    def patch_status(self, rtype: k.ResourceType, namespace: str, name: str, status: dict[str, Any]) -> Any:
        self.status[(rtype.kind, name)] = status
        return status

    def event(self, *_: Any, **__: Any) -> None:
        pass


def held_by(obj: dict[str, Any], holder: Owner | None) -> dict[str, Any]:
    """`obj` as another resource (or, with None, a person) made it."""
    out = copy.deepcopy(obj)
    out["metadata"]["uid"] = f"uid-of-{out['metadata']['name']}"
    out["metadata"]["ownerReferences"] = [holder.reference()] if holder is not None else []
    return out


VICTIM = owner("InferenceService", "llama", uid="uid-victim")
INTRUDER = owner("InferenceService", "intruder", uid="uid-intruder")


def service_manifests(o: Owner) -> list[dict[str, Any]]:
    r = render_inferenceservice(cast(InferenceServiceSpec, ISVC), o, CFG, model=MODEL, adapters=[ADAPTER])
    return [copy.deepcopy(m) for m in r.manifests]


@pytest.mark.parametrize("holder", [VICTIM, None], ids=["another-resource", "a-person"])
def test_a_taken_child_name_stops_the_pass_before_any_write(holder: Owner | None) -> None:
    # The intruder's Deployment would be named like the victim's (as `llama.v2` and `llama-v2-<hash>` were).
    deployment = next(m for m in service_manifests(VICTIM) if m["kind"] == "Deployment")
    kube = Memory([held_by(deployment, holder)])
    mine = service_manifests(INTRUDER)
    for m in mine:
        if m["kind"] == "Deployment":
            m["metadata"]["name"] = deployment["metadata"]["name"]
    with pytest.raises(Waiting) as err:
        apply_children(Context(kube=cast(k.Kube, kube), config=CFG), INTRUDER, mine)
    assert err.value.reason == Reason.NAME_CONFLICT
    assert f"Deployment/{deployment['metadata']['name']}" in err.value.message
    if holder is not None:
        assert "InferenceService/llama" in err.value.message and "rename" in err.value.message
    else:
        assert (
            "created outside tuneops" in err.value.message and "delete that Deployment" in err.value.message
        )
    assert kube.writes == []


def test_only_children_the_service_controls_are_deleted() -> None:
    # Objects that carry the service's labels but another controller (or none) are not its children.
    service = next(m for m in service_manifests(INTRUDER) if m["kind"] == "Service")
    strays = [copy.deepcopy(service), copy.deepcopy(service)]
    strays[0]["metadata"]["name"], strays[1]["metadata"]["name"] = "someone-elses", "unowned"
    kube = Memory([held_by(strays[0], VICTIM), held_by(strays[1], None)])
    ctx = Context(kube=cast(k.Kube, kube), config=CFG)
    apply_children(ctx, INTRUDER, service_manifests(INTRUDER))
    assert ("Service", "someone-elses") in kube.objs and ("Service", "unowned") in kube.objs
    assert not [w for w in kube.writes if w[0] == "delete"]
    # What it does control and no longer wants goes.
    kube.writes.clear()
    apply_children(ctx, INTRUDER, [m for m in service_manifests(INTRUDER) if m["kind"] != "ConfigMap"])
    assert kube.writes == [("delete", "ConfigMap", f"{workload_name(INTRUDER)}-vllm")]


def ftm_object(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": "tuneops.io/v1alpha1",
        "kind": "FineTunedModel",
        "metadata": {"name": name, "namespace": "team-a", "uid": uid, "generation": 1},
        "spec": {"baseModel": {"uri": "hf://org/base", "revision": "main"},
                 "adapter": {"uri": "pvc://adapters/a"}, "output": {"uri": "pvc://models/out"}},
    }  # fmt: skip


def inspect_job(obj: dict[str, Any]) -> dict[str, Any]:
    from tuneops.reconcile.base import owner_of

    spec = parse_spec("FineTunedModel", obj)
    return render_finetunedmodel(cast(FineTunedModelSpec, spec), owner_of(obj), CFG)[0]


def pod_of(job: dict[str, Any], controller_uid: str | None, result: str) -> dict[str, Any]:
    refs = [{"apiVersion": "batch/v1", "kind": "Job", "name": job["metadata"]["name"], "uid": controller_uid,
             "controller": True}] if controller_uid else []  # fmt: skip
    term = {"exitCode": 0, "message": result}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"pod-{controller_uid}", "namespace": "team-a", "ownerReferences": refs,
                     "labels": {"job-name": job["metadata"]["name"]}},
        "status": {"phase": "Succeeded", "containerStatuses": [{"state": {"terminated": term}}]},
    }  # fmt: skip


FORGED = '{"adapter": {"digest": "sha256:forged", "rank": 64, "alpha": 1}}'


def reconcile_ftm(kube: Memory, obj: dict[str, Any]) -> dict[str, Any]:
    RECONCILERS["FineTunedModel"](Context(kube=cast(k.Kube, kube), config=CFG), copy.deepcopy(obj))
    return kube.status[("FineTunedModel", obj["metadata"]["name"])]


def test_a_job_under_the_steps_name_held_by_another_is_not_the_steps_job() -> None:
    obj = ftm_object("llama", "uid-ftm")
    job = inspect_job(obj)
    other = owner("QuantizationJob", "squatter", uid="uid-squatter")
    taken = held_by(job, other)
    taken["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    kube = Memory([taken, pod_of(taken, taken["metadata"]["uid"], FORGED)])
    status = reconcile_ftm(kube, obj)
    ready = next(c for c in status["conditions"] if c["type"] == READY)
    assert ready["status"] == "False" and ready["reason"] == Reason.NAME_CONFLICT
    assert (
        f"Job/{job['metadata']['name']}" in ready["message"]
        and "QuantizationJob/squatter" in ready["message"]
    )
    assert "forged" not in str(status) and kube.writes == []


def test_only_the_jobs_own_pods_give_its_result() -> None:
    obj = ftm_object("llama", "uid-ftm")
    job = held_by(inspect_job(obj), owner("FineTunedModel", "llama", uid="uid-ftm"))
    job["status"] = {"conditions": [{"type": "Complete", "status": "True"}]}
    # A newer Pod labelled with the Job's name, made by someone else, with a forged result.
    kube = Memory([job, pod_of(job, None, FORGED)])
    status = reconcile_ftm(kube, obj)
    assert "forged" not in str(status)
