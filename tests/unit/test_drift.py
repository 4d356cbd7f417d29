"""The drift check: what the operator sets must be in the live object, whatever the server added."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tuneops.reconcile.drift import Applied, differences, drifted, pin_defaults, quantity


def desired() -> dict[str, Any]:
    return pin_defaults({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "s", "labels": {"app": "s"}, "annotations": {"tuneops.io/spec-hash": "h"}},
        "spec": {
            "replicas": 1,
            "template": {"spec": {
                "containers": [{"name": "server", "image": "vllm:1", "args": ["--port", "8000"],
                                "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
                                "resources": {"limits": {"memory": "1024Mi", "cpu": "0.5"}},
                                "securityContext": {"readOnlyRootFilesystem": True}}],
                "automountServiceAccountToken": False,
                "volumes": [],
            }},
        },
    })  # fmt: skip


def live() -> dict[str, Any]:
    """What the API server answers for it: defaults, canonical quantities, other managers' fields, status."""
    obj = copy.deepcopy(desired())
    obj["metadata"] |= {"uid": "u1", "resourceVersion": "7", "generation": 2}
    obj["metadata"]["labels"]["added-by-someone"] = "x"
    spec = obj["spec"]
    spec |= {"strategy": {"type": "RollingUpdate"}, "revisionHistoryLimit": 10}
    pod = spec["template"]["spec"]
    pod |= {"restartPolicy": "Always", "dnsPolicy": "ClusterFirst", "serviceAccount": "default"}
    del pod["volumes"], pod["hostNetwork"]  # empty and false values are dropped
    c = pod["containers"][0]
    c |= {"terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"}
    c["resources"]["limits"] = {"memory": "1Gi", "cpu": "500m"}
    c["env"] = [{"name": "B", "value": "2"}, {"name": "A", "value": "1"}]  # by name, in any order
    obj["status"] = {"replicas": 1}
    return obj


def test_an_untouched_child_with_server_defaults_has_not_drifted() -> None:
    assert differences(desired(), live()) == []


EDITS = [
    ("image", lambda o: o["spec"]["template"]["spec"]["containers"][0].update(image="evil"), "image"),
    ("env value", lambda o: o["spec"]["template"]["spec"]["containers"][0]["env"][1].update(value="9"), "env[A]"),
    ("env removed", lambda o: o["spec"]["template"]["spec"]["containers"][0]["env"].pop(), "env[A]"),
    ("args", lambda o: o["spec"]["template"]["spec"]["containers"][0]["args"].append("--x"), "args"),
    ("service account", lambda o: o["spec"]["template"]["spec"].update(serviceAccountName="admin"),
     "serviceAccountName"),
    ("host network", lambda o: o["spec"]["template"]["spec"].update(hostNetwork=True), "hostNetwork"),
    ("a quantity", lambda o: o["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
     .update(memory="2Gi"), "limits.memory"),
    ("a label", lambda o: o["metadata"]["labels"].update(app="other"), "metadata.labels.app"),
    ("a container removed", lambda o: o["spec"]["template"]["spec"]["containers"].clear(), "containers[server]"),
    ("a boolean", lambda o: o["spec"]["template"]["spec"]["containers"][0]["securityContext"]
     .update(readOnlyRootFilesystem=False), "readOnlyRootFilesystem"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "edit", "path"), EDITS, ids=[e[0] for e in EDITS])
def test_an_edit_to_what_the_operator_sets_is_drift(case: str, edit: Any, path: str) -> None:
    obj = live()
    edit(obj)
    found = differences(desired(), obj)
    assert found and any(path in p for p in found), found


def test_an_opened_network_policy_is_drift() -> None:
    want: dict[str, Any] = {"kind": "NetworkPolicy", "metadata": {"name": "n"},
            "spec": {"ingress": [{"from": [{"namespaceSelector": {}}], "ports": [{"port": "http"}]},
                                 {"from": [{"podSelector": {"matchLabels": {"a": "b"}}}]}],
                     "policyTypes": ["Ingress"]}}  # fmt: skip
    assert differences(want, copy.deepcopy(want)) == []
    opened: list[Any]
    for opened in (
        [{}],
        [*want["spec"]["ingress"], {}],
        [{"ports": [{"port": "http"}]}, want["spec"]["ingress"][1]],
    ):
        obj = copy.deepcopy(want)
        obj["spec"]["ingress"] = opened
        assert differences(want, obj), opened


def test_a_child_as_the_operators_own_apply_left_it_is_not_compared() -> None:
    applied = Applied(limit=2)
    edited = live()
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "normalised-by-some-webhook"
    assert drifted(desired(), edited, applied)
    applied.record(edited)  # what the apply answered
    assert drifted(desired(), edited, applied) == []
    edited["metadata"]["resourceVersion"] = "8"  # changed since
    assert drifted(desired(), edited, applied)
    applied.record({"metadata": {"uid": "u2", "resourceVersion": "1"}})
    applied.record({"metadata": {"uid": "u3", "resourceVersion": "1"}})
    assert len(applied._versions) == 2  # bounded


def test_pinned_defaults_do_not_override_what_the_renderer_set() -> None:
    m = pin_defaults({"spec": {"template": {"spec": {"containers": [], "serviceAccountName": "sa"}}}})
    pod = m["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "sa" and pod["hostPID"] is False
    assert pin_defaults({"data": {"containers": "x"}}) == {"data": {"containers": "x"}}


def test_quantities() -> None:
    assert quantity("1Gi") == quantity("1024Mi") == quantity(1 << 30)
    assert quantity("0.5") == quantity("500m")
    assert quantity("vllm:1") is None and quantity(True) is None
