"""Hostile resources against the real API server and operator: refused at admission, or reported on the resource.

Whatever is applied, the operator stays up (/healthz answers) and keeps serving a healthy resource next to it.
Reference cycles cannot be written: a kind only references kinds below it (InferenceService -> QuantizationJob ->
FineTunedModel -> URIs), so the closest things, references to oneself by name and to missing objects, are here.
"""

from __future__ import annotations

import itertools
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings

from tests.integration.helpers import ADAPTER_RESULT, complete, ftm, job_named, wait_ready
from tests.integration.operator_bed import Cluster, OperatorProcess
from tests.unit.hostile import API, mutated_specs
from tuneops.api import KINDS, SpecError, parse_spec

PLURAL = {kind: info.plural for kind, info in KINDS.items()}
_names = itertools.count()


def obj(kind: str, name: str, spec: Any) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": spec}


def healthy(op: OperatorProcess) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{op.liveness_port}/healthz", timeout=5) as r:
        return bool(r.status == 200)


def settle(cluster: Cluster, ns: str, kind: str, name: str, wait: Callable[..., Any]) -> dict[str, Any]:
    cond: dict[str, Any] = wait(
        lambda: cluster.ready(PLURAL[kind], ns, name), timeout=30, what=f"{kind} {name} status"
    )
    return cond


# (kind, spec, where it is refused: "admission" or the Ready reason, a phrase the message must contain)
CASES = [
    # The schema's pattern cannot see '..' segments (a CEL rule can, on 1.25+): the operator refuses them.
    ("FineTunedModel", {"baseModel": {"uri": "pvc://claim/../../etc"}, "adapter": {"uri": "pvc://a/b"}},
     "InvalidSpec", "spec.baseModel.uri"),
    ("FineTunedModel", {"baseModel": {"uri": "http://example.com/m"}, "adapter": {"uri": "pvc://a/b"}},
     "admission", "spec.baseModel.uri"),
    ("FineTunedModel", {"baseModel": {"uri": "pvc://m/x"}, "adapter": {"uri": "pvc://a/b"}, "merge": {"dtype": 7}},
     "admission", "spec.merge.dtype"),
    ("FineTunedModel", {"baseModel": {"uri": "pvc://m/" + "x" * 5000}, "adapter": {"uri": "pvc://a/b"}},
     "admission", "spec.baseModel.uri"),
    ("FineTunedModel", {"baseModel": {"uri": "pvc://m/x"}, "adapter": {"uri": "pvc://a/b"}, "surprise": True},
     "admission", "surprise"),
    # Passes the 1.20 server (no CEL there): the operator refuses it and names the field.
    ("QuantizationJob", {"source": {"uri": "pvc://m/x", "fineTunedModelRef": {"name": "m"}}, "method": "gguf"},
     "InvalidSpec", "spec.source"),
    ("InferenceService", {"model": {"uri": "pvc://m/x"}, "lora": {"adapters": [
        {"name": "a", "uri": "pvc://a/1"}, {"name": "a", "uri": "pvc://a/2"}]}}, "InvalidSpec", "unique"),
    ("InferenceService", {"model": {"uri": "pvc://m/x"}, "runtime": "llamacpp"}, "InvalidSpec", "GGUF"),
    ("QuantizationJob", {"source": {"fineTunedModelRef": {"name": "nowhere"}}, "method": "gguf"},
     "WaitingForSource", "does not exist yet"),
    ("QuantizationJob", {"source": {"fineTunedModelRef": {"name": "m", "namespace": "kube-system"}},
                         "method": "gguf"}, "InvalidSpec", "cross-namespace"),
    ("InferenceService", {"model": {"quantizationJobRef": {"name": "self-ref"}}}, "WaitingForSource", "self-ref"),
    # The key is read (to call the Pods' LoRA API) only when adapters are served.
    ("InferenceService", {"model": {"uri": "pvc://m/x"}, "apiKeySecretRef": {"name": "no-such-secret"},
                          "lora": {"adapters": [{"name": "a", "uri": "pvc://a/1"}]}},
     "SecretUnreadable", "no-such-secret does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("kind", "spec", "where", "phrase"), CASES)
def test_hostile_resource_is_refused_with_an_actionable_message(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any],
    kind: str, spec: dict[str, Any], where: str, phrase: str,
) -> None:  # fmt: skip
    name = "self-ref"
    proc = kubectl.apply(obj(kind, name, spec), namespace=namespace, check=False, server_side=True)
    if where == "admission":
        assert proc.returncode != 0, f"{kind} was admitted: {spec}"
    if proc.returncode != 0:
        # Refused at admission (always fine for an invalid spec, e.g. by CEL rules on newer servers).
        assert where != "WaitingForSource" and phrase in proc.stderr, proc.stderr
        return
    cond = settle(cluster, namespace, kind, name, wait_until)
    assert (cond["status"], cond["reason"]) == ("False", where), cond
    assert phrase in cond["message"], cond["message"]
    assert not cluster.jobs(namespace)
    assert operator.alive() and healthy(operator)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=mutated_specs())
def test_generated_hostile_resources_never_break_the_operator(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any],
    case: tuple[str, dict[str, Any]],
) -> None:  # fmt: skip
    kind, spec = case
    name = f"gen-{next(_names)}"
    proc = kubectl.apply(obj(kind, name, spec), namespace=namespace, check=False, server_side=True)
    if proc.returncode != 0:
        assert "spec" in proc.stderr or "metadata" in proc.stderr or "yaml" in proc.stderr.lower(), (
            proc.stderr
        )
        return
    stored = cluster.get(PLURAL[kind], namespace, name)
    assert stored is not None
    try:
        parse_spec(kind, stored)
        problems: list[str] = []
    except SpecError as err:
        problems = err.problems
    cond = settle(cluster, namespace, kind, name, wait_until)
    if problems:
        assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec"), cond
        assert problems[0].split(":")[0] in cond["message"], (problems, cond["message"])
    else:
        assert cond["reason"] != "", cond
    assert operator.alive() and healthy(operator), operator.log()


def test_a_healthy_resource_is_served_next_to_hostile_ones(
    operator: OperatorProcess, cluster: Cluster, kubectl: Any, namespace: str, wait_until: Callable[..., Any],
) -> None:  # fmt: skip
    bad = [
        obj(kind, f"bad-{i}", spec) for i, (kind, spec, where, _) in enumerate(CASES) if where != "admission"
    ]
    kubectl.apply([*bad, ftm("good", merge=False)], namespace=namespace, server_side=True)
    inspect = job_named(cluster, namespace, "inspect", wait_until, owner="good")
    complete(cluster, namespace, inspect.metadata.name, ADAPTER_RESULT, wait_until)
    wait_ready(cluster, "finetunedmodels", namespace, "good", wait_until, timeout=40,
               what="the healthy resource Ready")  # fmt: skip
    for b in bad:
        cond = settle(cluster, namespace, b["kind"], b["metadata"]["name"], wait_until)
        assert cond["status"] == "False", cond
        assert cond["reason"] in ("InvalidSpec", "WaitingForSource", "SecretUnreadable"), cond
    assert operator.alive() and healthy(operator)
