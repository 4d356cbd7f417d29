"""Argo CD leaves an autoscaled InferenceService's spec.replicas out of its diff, and only that.

Argo CD runs each `jqPathExpressions` entry of `resource.customizations.ignoreDifferences.<group>_<kind>` as
`del(<expression>)` (gojq) on the live and on the desired object, requires exactly one result, and compares
what is left. The tests run the committed expressions the same way with jq (Debian's `jq`, which `make kube`
installs; gojq implements the same language), so a sample's verdict is Argo CD's: drift or in sync.
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tuneops import GROUP, argocd

ROOT = Path(__file__).resolve().parents[2]
ARGOCD_CM = ROOT / "charts" / "tuneops" / "argocd" / "argocd-cm.yaml"
CRD = ROOT / "crds" / "inferenceservices.tuneops.io.yaml"
KEY = f"resource.customizations.ignoreDifferences.{GROUP}_InferenceService"

# The fields Argo CD reads from an ignoreDifferences value (its OverrideIgnoreDiff).
OVERRIDE_FIELDS = {"jsonPointers", "jqPathExpressions", "managedFieldsManagers"}


def committed() -> dict[str, Any]:
    data: dict[str, str] = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    value: dict[str, Any] = yaml.safe_load(data[KEY])
    return value


def normalize(obj: dict[str, Any]) -> dict[str, Any]:
    """What Argo CD compares of `obj`: the object after every committed expression, run as `del(...)`."""
    jq = shutil.which("jq")
    if jq is None:
        pytest.skip("jq is not installed (Debian package jq; `make kube` installs it)")
    for expression in committed()["jqPathExpressions"]:
        ran = subprocess.run([jq, "-c", f"del({expression})"], input=json.dumps(obj), capture_output=True,
                             text=True, check=True, timeout=30)  # fmt: skip
        results = ran.stdout.splitlines()
        assert len(results) == 1, f"Argo CD refuses an expression with {len(results)} results: {expression}"
        obj = json.loads(results[0])
    return obj


def service(replicas: int | None, autoscaling: bool) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"uri": "pvc://models/chat"}, "runtime": "vllm"}
    if replicas is not None:
        spec["replicas"] = replicas
    if autoscaling:
        spec["autoscaling"] = {"engine": "hpa", "minReplicas": 1, "maxReplicas": 4, "targetValue": 4}
    return {"apiVersion": "tuneops.io/v1alpha1", "kind": "InferenceService",
            "metadata": {"name": "chat", "namespace": "team-a"}, "spec": spec}  # fmt: skip


def scaled(obj: dict[str, Any], replicas: int) -> dict[str, Any]:
    """The live object after an autoscaler (or `kubectl scale`) set replicas through the scale subresource."""
    live = copy.deepcopy(obj)
    live["spec"]["replicas"] = replicas
    return live


# (what, the manifest in Git, the live object, whether Argo CD sees drift)
CASES = [
    ("autoscaled: the autoscaler moved replicas away from Git's", service(1, True), scaled(service(1, True), 3), False),
    ("autoscaled: Git leaves replicas out", service(None, True), scaled(service(None, True), 3), False),
    ("autoscaled to zero", service(2, True), scaled(service(2, True), 0), False),
    ("not autoscaled: replicas is the user's, a change by hand is drift", service(2, False),
     scaled(service(2, False), 5), True),
    ("autoscaled: other fields are still compared", service(1, True),
     {**scaled(service(1, True), 3), "spec": {**scaled(service(1, True), 3)["spec"], "runtime": "llamacpp"}}, True),
    ("autoscaling turned off in Git while the live object still has it", service(2, False),
     scaled(service(2, True), 3), True),
]  # fmt: skip


@pytest.mark.parametrize(("what", "git", "live", "drift"), CASES, ids=[c[0] for c in CASES])
def test_argo_cd_sees_drift_exactly_where_the_user_owns_replicas(
    what: str, git: dict[str, Any], live: dict[str, Any], drift: bool
) -> None:
    assert (normalize(git) != normalize(live)) is drift, what


def test_only_replicas_is_dropped_and_only_with_autoscaling() -> None:
    autoscaled = service(3, True)
    expected = copy.deepcopy(autoscaled)
    del expected["spec"]["replicas"]
    assert normalize(autoscaled) == expected
    plain = service(3, False)
    assert normalize(plain) == plain


def test_the_committed_value_is_what_argo_cd_reads_and_what_the_generator_writes() -> None:
    value = committed()
    assert set(value) <= OVERRIDE_FIELDS
    assert value == {"jqPathExpressions": list(argocd.IGNORE_DIFFERENCES["InferenceService"])}
    assert argocd.ignore_key("InferenceService") == KEY


def test_the_expression_names_the_fields_of_the_crd() -> None:
    """The dropped field is the one the autoscalers write (the scale subresource's specReplicasPath), and the
    condition reads a field the CRD defines: a rename in the API breaks this test, not Argo CD."""
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.replicas"
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {"replicas", "autoscaling"} <= set(spec)
    (expression,) = argocd.IGNORE_DIFFERENCES["InferenceService"]
    assert expression == "select(.spec.autoscaling != null) | .spec.replicas"


def test_no_other_kind_has_fields_argo_cd_ignores() -> None:
    """FineTunedModel and QuantizationJob have no field written by anyone but the user."""
    data: dict[str, str] = yaml.safe_load(ARGOCD_CM.read_text())["data"]
    ignored = sorted(k for k in data if k.startswith("resource.customizations.ignoreDifferences."))
    assert ignored == [KEY]
